"""End to end through real daemons: find -> quotes -> co-signed agreement -> blobs
pulled by the provider -> container run (real podman) -> logs and Result back ->
outputs fetched, verified, written -> receipt countersigned, in both ledgers.

Nodes run in-process (``node.daemon.run_node``, each with real libp2p hosts on
127.0.0.1, its own data dir and SQLite files); providers run containers in the
tests' private podman storage (tests/support/podman.py).  "Killing" a node
cancels its whole service tree, which resets its streams like a dead process.
Every wait is on an event or on polled state under ``trio.fail_after``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
import trio
from support.podman import shared_env  # noqa: E402

from node.api.routes.jobs import submit_request
from node.api.server import ApiError
from node.config import config_from_dict
from node.daemon import Node, run_node
from node.execute.selftest_image import BUSYBOX, build_busybox_image
from node.jobs.jobfile import load_job
from node.jobs.runner import SubmitError
from node.ledger import Ledger
from protocol.result import verify_receipt

pytestmark = [
    pytest.mark.podman,
    pytest.mark.skipif(not BUSYBOX.is_file(), reason=f"{BUSYBOX} missing: apt-get install busybox-static"),
]

LOOP = "/ip4/127.0.0.1/tcp/0"


@dataclass
class Net:
    tmp: Path
    nursery: trio.Nursery
    nodes: dict[str, Node] = field(default_factory=dict)
    scopes: dict[str, trio.CancelScope] = field(default_factory=dict)
    configs: dict[str, Any] = field(default_factory=dict)
    bound: dict[str, str] = field(default_factory=dict)  #: the address each node listened on
    gone: dict[str, trio.Event] = field(default_factory=dict)  #: set once a node's tree has exited
    podman: Any = None  #: the shared private podman storage (support.podman.PodmanEnv)

    async def start(self, name: str, *, execution: bool, fake_gpus: str = "", **discovery: Any) -> Node:
        if name not in self.configs:
            boot = [f"{a}/p2p/{n.peer_id}" for n in list(self.nodes.values())[:1] for a in n.p2p.listen_addrs[:1]]
            table: dict[str, Any] = {
                "node": {"data_dir": str(self.tmp / name), "listen": [LOOP], "bootstrap": boot},
                "discovery": {"fake_gpus": fake_gpus, **discovery},
            }
            if execution:
                env = self.podman
                table["execution"] = {"enabled": True, "podman_root": str(env.settings.root),
                                      "podman_runroot": str(env.settings.runroot)}
            self.configs[name] = config_from_dict(table)
        elif name in self.bound:  # a restart listens where the node listened before
            cfg = self.configs[name]
            self.configs[name] = replace(cfg, node=replace(cfg.node, listen=[self.bound[name]]))
        scope = trio.CancelScope()
        self.scopes[name] = scope
        gone = self.gone[name] = trio.Event()

        async def runner(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with scope:
                    await run_node(self.configs[name], task_status=task_status)
            finally:
                gone.set()

        node: Node = await self.nursery.start(runner)
        self.nodes[name] = node
        self.bound[name] = node.p2p.listen_addrs[0].split("/p2p/")[0]
        return node

    async def kill(self, name: str) -> None:
        self.nodes.pop(name)
        self.scopes[name].cancel()
        with trio.fail_after(30):
            await self.gone[name].wait()


@pytest.fixture(scope="module")
def podman_env() -> Any:
    return shared_env()  # synchronous: it runs trio itself once per test process


@asynccontextmanager
async def network(tmp: Path, podman: Any) -> AsyncIterator[Net]:
    async with trio.open_nursery() as nursery:
        net = Net(tmp, nursery, podman=podman)
        try:
            yield net
        finally:
            nursery.cancel_scope.cancel()


@pytest.fixture(scope="module")
def hello_job(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hello")
    build_busybox_image(d / "image")
    (d / "input.txt").write_text("some input\n")
    job = d / "job.toml"
    job.write_text(
        'name = "hello"\nimage = "image"\ncommand = ["/bin/sh", "-c"]\n'
        'args = ["echo start; cat /data/input.txt; echo hello > /out/greeting.txt; sleep $NAP; echo done"]\n'
        'env = { NAP = "0" }\noutputs = ["/out"]\nmax_price = 100000\n'
        "[resources]\ncpus = 0.5\nmemory_mib = 64\ndisk_mib = 16\n"
        "[timeouts]\ntransfer_s = 60\nqueue_s = 60\nrun_s = 60\n"
        '[[inputs]]\nfile = "input.txt"\npath = "/data/input.txt"\n'
    )
    return job


async def submit(node: Node, body: dict[str, Any]) -> Any:
    """``POST /v1/jobs`` without the socket: the same checks, then the runner."""
    return await node.runner.submit(submit_request(body))


def body_for(job: Path, results: Path, **extra: Any) -> dict[str, Any]:
    loaded = load_job(job)
    return {"job_hex": loaded.spec.encode().hex(), "blob_paths": {d: str(p) for d, p in loaded.blob_paths.items()},
            "results_dir": str(results), "timeout": 3.0, **extra}


async def until(holder: Any, pred: Callable[[], bool]) -> None:
    """Wait until ``pred`` holds, re-checking whenever ``holder.changed`` (a run's live
    events on the submitter, a ProviderJob on the provider) fires."""
    while True:
        changed = holder.changed
        if pred():
            return
        await changed.wait()


async def run_to_end(node: Node, rid: str) -> Any:
    runner = node.runner
    with trio.fail_after(120):
        await runner.live[rid].done.wait()
    return runner.runs[rid]


async def settled_on(provider: Node, run: Any) -> list[bytes]:
    """The provider's ledger once it recorded the receipt of ``run``'s last attempt."""
    pj = provider.provider_jobs.jobs[run.attempts[-1].agreement_id]
    with trio.fail_after(30):
        await until(pj, lambda: pj.phase.value == "settled")
    return ledger_receipts(provider)


def ledger_receipts(node: Node) -> list[bytes]:
    with Ledger.in_data_dir(node.data_dir) as ledger:
        return [e.receipt for e in ledger.entries()]


async def test_hello_end_to_end_through_three_daemons(tmp_path: Path, hello_job: Path, podman_env: Any) -> None:
    async with network(tmp_path, podman_env) as net:
        gpu = await net.start("gpu", execution=True, fake_gpus="h100:2")
        cpu = await net.start("cpu", execution=True)
        sub = await net.start("sub", execution=False)
        runner = sub.runner
        # bad submissions are refused up front, with the reason
        with pytest.raises(SubmitError) as missing:
            await submit(sub, {**body_for(hello_job, tmp_path / "results"), "blob_paths": {}})
        assert missing.value.reason == "missing_blob"
        with pytest.raises(ApiError) as bad:
            await submit(sub, {"job_hex": "00ff", "results_dir": str(tmp_path)})
        assert bad.value.status == 400 and not runner.runs
        run = await submit(sub, body_for(hello_job, tmp_path / "results", peers=[
            f"{n.p2p.listen_addrs[0]}/p2p/{n.peer_id}" for n in (gpu, cpu)]))
        run = await run_to_end(sub, run.id)
        assert run.state == "finished", run.detail
        out = Path(run.output_dir)
        assert out == tmp_path / "results" / run.id
        assert (out / "out" / "greeting.txt").read_text() == "hello\n"
        log = (out / "log.txt").read_text()
        assert "start" in log and "some input" in log and "done" in log
        # live log lines came through the watch stream too
        assert "some input" in runner.live[run.id].lines
        provider = next(n for n in (gpu, cpu) if n.peer_id == run.attempts[0].provider)
        receipt = bytes.fromhex(run.receipt_hex)
        verified = verify_receipt(receipt, submitter=sub.peer_id, provider=provider.peer_id)
        assert verified.receipt.message.accepted
        assert ledger_receipts(sub) == [receipt]
        assert await settled_on(provider, run) == [receipt]
        assert run.settled
        # the timeline: every phase in order, each ended before the next began, none left open
        phases = [s.phase.value for s in run.phases]
        assert phases[0] == "negotiate" and phases[-1] == "receipt", phases
        assert [p for p in phases if p != "queue"] == ["negotiate", "transfer_in", "run", "transfer_out",
                                                        "receipt"], phases
        ends = [(s.started_at, s.ended_at) for s in run.phases]
        assert all(e is not None and s <= e for s, e in ends)
        assert all(ends[i][1] == ends[i + 1][0] for i in range(len(ends) - 1))  # type: ignore[index]
        assert run.summary()["phases"][0]["phase"] == "negotiate"


def big_input_job(d: Path, size: int) -> tuple[Path, Any]:
    """A job dir whose busybox job counts the bytes of one random input of
    ``size`` bytes; returns the dir and the input's BlobRef."""
    import os

    build_busybox_image(d / "image")
    (d / "big.bin").write_bytes(os.urandom(size))
    (d / "job.toml").write_text(
        'name = "big"\nimage = "image"\ncommand = ["/bin/sh", "-c"]\nargs = ["wc -c < /data/big.bin > /out/n"]\n'
        'outputs = ["/out"]\nmax_price = 100000\n'
        "[resources]\ncpus = 0.5\nmemory_mib = 64\ndisk_mib = 16\n"
        "[timeouts]\ntransfer_s = 120\nqueue_s = 60\nrun_s = 60\n"
        '[[inputs]]\nfile = "big.bin"\npath = "/data/big.bin"\n'
    )
    return d, next(i.blob for i in load_job(d / "job.toml").spec.inputs)


def peers_of(*nodes: Node) -> list[str]:
    return [f"{n.p2p.listen_addrs[0]}/p2p/{n.peer_id}" for n in nodes]


def with_env(job: Path, tmp: Path, **env: str) -> Path:
    """A copy of ``job`` with other environment values (a different job spec)."""
    text = job.read_text().replace('env = { NAP = "0" }', "env = { " + ", ".join(f'{k} = "{v}"' for k, v in env.items()) + " }")
    out = job.parent / f"job-{tmp.name}.toml"
    out.write_text(text)
    return out


async def test_gpu_job_is_refused_with_reasons(tmp_path: Path, podman_env: Any) -> None:
    """Fake GPUs cannot run GPU containers (no CDI): every provider refuses, and says why
    (the fake-GPU node: no CDI device; the CPU-only node: no matching GPU)."""
    d = tmp_path / "gpujob"
    build_busybox_image(d / "image")
    (d / "job.toml").write_text(
        'name = "gpu"\nimage = "image"\ncommand = ["/bin/true"]\nmax_price = 2000000\n'
        "[resources]\ncpus = 1\nmemory_mib = 64\ndisk_mib = 16\n"
        '[resources.gpu]\ncount = 1\nvendor = "nvidia"\nmin_memory_mib = 16384\n'
        "[timeouts]\ntransfer_s = 60\nqueue_s = 60\nrun_s = 60\n"
    )
    async with network(tmp_path, podman_env) as net:
        gpu = await net.start("gpu", execution=True, fake_gpus="h100:2")
        cpu = await net.start("cpu", execution=True)
        sub = await net.start("sub", execution=False)
        run = await submit(sub, body_for(d / "job.toml", tmp_path / "r", peers=peers_of(gpu, cpu)))
        run = await run_to_end(sub, run.id)
        assert run.state == "failed" and not run.attempts
        reasons = {r["provider"]: (r["reason"], r["detail"]) for r in run.refusals}
        assert set(reasons) == {gpu.peer_id, cpu.peer_id}
        # fake GPUs: there, but not passable into a container
        assert reasons[gpu.peer_id][0] == "no_container_runtime" and "CDI" in reasons[gpu.peer_id][1]
        assert reasons[cpu.peer_id][0] == "no_matching_gpu"  # no GPU at all
        assert "no provider agreed" in run.detail


async def test_provider_killed_mid_run_is_retried_elsewhere(tmp_path: Path, hello_job: Path, podman_env: Any) -> None:
    job = with_env(hello_job, tmp_path, NAP="3")
    async with network(tmp_path, podman_env) as net:
        a = await net.start("a", execution=True)
        b = await net.start("b", execution=True)
        sub = await net.start("sub", execution=False)
        runner = sub.runner
        run = await submit(sub, body_for(job, tmp_path / "r", peers=peers_of(a, b), retries=1, grace_s=1.0))
        with trio.fail_after(60):  # the container runs
            await until(runner.live[run.id], lambda: "start" in runner.live[run.id].lines)
        first = run.attempts[0]
        dead = next(name for name, n in net.nodes.items() if n.peer_id == first.provider)
        await net.kill(dead)
        run = await run_to_end(sub, run.id)
        assert run.state == "finished", run.detail
        assert [x.state for x in run.attempts] == ["failed", "done"]
        assert "unreachable" in run.attempts[0].detail
        assert run.attempts[1].provider != first.provider
        # the dead provider's agreement is recorded as failed on the submitter
        (row,) = runner.agreements.get(first.agreement_id, role="submitter")
        assert row.state == "failed"
        # one receipt, accepted, for the second provider's result
        (receipt,) = ledger_receipts(sub)
        v = verify_receipt(receipt)
        assert v.receipt.message.accepted and v.result.message.provider == run.attempts[1].provider


async def test_submitter_restarted_mid_job_collects_the_result(
    tmp_path: Path, hello_job: Path, podman_env: Any
) -> None:
    job = with_env(hello_job, tmp_path, NAP="2")
    async with network(tmp_path, podman_env) as net:
        prov = await net.start("prov", execution=True)
        sub = await net.start("sub", execution=False)
        run = await submit(sub, body_for(job, tmp_path / "r", peers=peers_of(prov)))
        rid = run.id
        with trio.fail_after(60):
            await until(sub.runner.live[rid], lambda: run.state == "running")
        await net.kill("sub")
        sub = await net.start("sub", execution=False)
        assert sub.runner.runs[rid].state == "running"
        run = await run_to_end(sub, rid)
        assert run.state == "finished", run.detail
        assert len(run.attempts) == 1
        assert (Path(run.output_dir) / "out" / "greeting.txt").read_text() == "hello\n"
        (receipt,) = ledger_receipts(sub)
        assert await settled_on(prov, run) == [receipt]


async def test_wrong_output_digest_is_detected_reported_and_retried(
    tmp_path: Path, hello_job: Path, podman_env: Any
) -> None:
    import dataclasses

    from protocol.envelope import seal

    async with network(tmp_path, podman_env) as net:
        a = await net.start("a", execution=True)
        b = await net.start("b", execution=True)
        sub = await net.start("sub", execution=False)
        lied: list[str] = []

        def liar(node: Node) -> Any:
            def tamper(pj: Any, signed: Any) -> Any:
                if lied:  # only the first provider to finish lies
                    return signed
                lied.append(node.peer_id)
                r = signed.message
                bad = dataclasses.replace(r.outputs[0], digest="sha256:" + "ab" * 32)
                return seal(dataclasses.replace(r, outputs=(bad, *r.outputs[1:])), node.key)
            return tamper

        for n in (a, b):
            n.provider_jobs.result_filter = liar(n)
        run = await submit(sub, body_for(hello_job, tmp_path / "r", peers=peers_of(a, b), retries=1))
        run = await run_to_end(sub, run.id)
        assert run.state == "finished", run.detail
        assert [x.provider for x in run.attempts][0] == lied[0]
        assert run.attempts[0].state == "failed" and "not delivered" in run.attempts[0].detail
        first, second = (verify_receipt(r) for r in ledger_receipts(sub))
        assert not first.receipt.message.accepted and "greeting" in first.receipt.message.detail
        assert second.receipt.message.accepted and second.result.message.provider != lied[0]


async def test_cancel_stops_the_container_on_the_provider(tmp_path: Path, hello_job: Path, podman_env: Any) -> None:
    job = with_env(hello_job, tmp_path, NAP="60")
    async with network(tmp_path, podman_env) as net:
        prov = await net.start("prov", execution=True)
        sub = await net.start("sub", execution=False)
        runner = sub.runner
        run = await submit(sub, body_for(job, tmp_path / "r", peers=peers_of(prov)))
        with trio.fail_after(60):
            await until(runner.live[run.id], lambda: "start" in runner.live[run.id].lines)
        await runner.cancel(run)
        assert run.state == "cancelled" and run.attempts[0].state == "cancelled"
        pj = prov.provider_jobs.jobs[run.attempts[0].agreement_id]
        with trio.fail_after(30):
            await until(pj, lambda: pj.result is not None)
        assert pj.result.message.outcome.value == "cancelled"
        label = f"cpn-{run.attempts[0].agreement_id}"
        assert not [c for c in await trio.to_thread.run_sync(podman_env.containers) if label in c]
        assert ledger_receipts(sub) == []  # nothing was acknowledged


async def test_provider_killed_mid_transfer_resumes_without_resending_verified_chunks(
    tmp_path: Path, podman_env: Any
) -> None:
    """The provider dies while pulling a 48 MiB input; it comes back within the
    submitter's grace period, resumes the same agreement, and only the chunks it
    had not verified move again.  (48 chunks: three 16-chunk requests, so the
    kill lands before the last one whatever the batch in which 8 MiB is reported.)"""
    d, big = big_input_job(tmp_path / "bigjob", 48 << 20)
    async with network(tmp_path, podman_env) as net:
        prov = await net.start("prov", execution=True)
        sub = await net.start("sub", execution=False)
        cut_at = 8 << 20

        def kill_mid_blob(progress: Any) -> None:
            if progress.digest == big.digest and progress.done_bytes >= cut_at:
                net.scopes["prov"].cancel()  # synchronously: no further chunk is processed

        prov.transfer.on_progress = kill_mid_blob
        run = await submit(sub, body_for(d / "job.toml", tmp_path / "r", peers=peers_of(prov),
                                                  grace_s=60.0))
        with trio.fail_after(60):
            await net.gone["prov"].wait()
        net.nodes.pop("prov")
        prov = await net.start("prov", execution=True)  # same data dir and key
        run = await run_to_end(sub, run.id)
        assert run.state == "finished", run.detail
        assert len(run.attempts) == 1  # the same agreement, resumed
        assert (Path(run.output_dir) / "out" / "n").read_text().strip() == str(48 << 20)
        moved = prov.transfer.progress[big.digest].moved_bytes
        assert 0 < moved <= big.size - cut_at


@pytest.mark.parametrize("behaviour", ["garbage", "silent"])
async def test_bad_provider_is_detected_and_replaced(
    tmp_path: Path, hello_job: Path, podman_env: Any, behaviour: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider that agrees (it is the cheapest) but then answers watches with
    garbage, or never answers: the submitter reports it, records the agreement as
    failed and moves on to the other provider."""
    from node.jobs import runner as jobrunner
    from protocol import jobflow
    from protocol.streams import JOB_PROTOCOL as PROTOCOL_ID

    # Shorter heartbeats (honest providers) and silence timeout, so "never answers" shows fast.
    monkeypatch.setattr(jobflow, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(jobrunner, "WATCH_READ_TIMEOUT", 1.5)
    async with network(tmp_path, podman_env) as net:
        bad = await net.start("bad", execution=True, price_cpu_core_hour=1)
        good = await net.start("good", execution=True)
        sub = await net.start("sub", execution=False)

        async def misbehave(stream: Any) -> None:
            await stream.receive_frame(1 << 20)
            if behaviour == "garbage":
                await stream.send_frame(b"\xff garbage, not an envelope")
            else:
                await trio.sleep_forever()

        bad.p2p.set_stream_handler(PROTOCOL_ID, misbehave)
        run = await submit(sub, body_for(hello_job, tmp_path / "r", peers=peers_of(bad, good),
                                                  grace_s=1.0))
        run = await run_to_end(sub, run.id)
        assert run.state == "finished", run.detail
        assert [a.provider for a in run.attempts] == [bad.peer_id, good.peer_id]
        assert run.attempts[0].state == "failed"
        assert ("invalid frames" if behaviour == "garbage" else "unreachable") in run.attempts[0].detail
        (receipt,) = ledger_receipts(sub)
        assert verify_receipt(receipt).result.message.provider == good.peer_id


async def test_fake_gpus_never_claim_cdi_even_where_a_cdi_spec_exists(tmp_path: Path) -> None:
    """A node with fake GPUs on a host whose self-test found CDI devices (a GPU host
    running a testnet) must not advertise or accept GPU containers."""
    from protocol.advert import ContainerCapability

    def cdi_host(node: Node) -> None:
        """Stands in for an execution self-test that found CDI GPU devices."""
        node.execution.proven = ContainerCapability(runtime="podman/runc", limits=(), gpu_cdi=True)

    cfg = config_from_dict({"node": {"data_dir": str(tmp_path / "n"), "listen": [LOOP]},
                            "discovery": {"fake_gpus": "h100:2"}})
    async with trio.open_nursery() as nursery:
        node: Node = await nursery.start(lambda task_status: run_node(
            cfg, prepare=cdi_host, task_status=task_status))
        assert node.execution.capability.gpu_cdi is False
        report = node.discovery.report
        assert report is not None and report.container.gpu_cdi is False
        assert report.container.runtime == "podman/runc"
        nursery.cancel_scope.cancel()


async def test_second_provider_is_told_of_the_first_and_may_fetch_from_it(tmp_path: Path, podman_env: Any) -> None:
    """The submitter's second job with the same image and input goes to another
    provider: asked WhoHas, the submitter names the provider of the first job with
    a FetchGrant, the second provider presents it, the first accepts (it ran a job
    of this submitter with these blobs) and becomes a source; the job finishes."""
    d, big = big_input_job(tmp_path / "shared", 8 << 20)
    async with network(tmp_path, podman_env) as net:
        first = await net.start("p1", execution=True)
        second = await net.start("p2", execution=True)
        sub = await net.start("sub", execution=False)
        run1 = await run_to_end(sub, (await submit(sub, body_for(d / "job.toml", tmp_path / "r1",
                                                                     peers=peers_of(first)))).id)
        assert run1.state == "finished", run1.detail
        assert first.transfer.store.has(big.digest)
        run2 = await run_to_end(sub, (await submit(sub, body_for(d / "job.toml", tmp_path / "r2",
                                                                     peers=peers_of(second)))).id)
        assert run2.state == "finished", run2.detail
        assert run2.attempts[-1].provider == second.peer_id
        # the first provider honoured the submitter's grant for the second one
        delegated = first.transfer._delegated
        assert (second.peer_id, big.digest) in delegated
        assert (Path(run2.output_dir) / "out" / "n").read_text().strip() == str(8 << 20)
