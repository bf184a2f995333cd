"""Negotiation between real libp2p hosts on 127.0.0.1: agreement, the last-GPU race,
malicious peers (the node keeps serving), replays, restart with an open agreement."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.keys import peer_id_of
from node.negotiate.agreements import AgreementStore as Store
from node.negotiate.client import negotiate_best, request_quote
from node.negotiate.policy import Policy
from node.negotiate.provider import Provider
from node.negotiate.scheduler import Scheduler
from node.p2p import P2PHost, StreamClosed, open_host
from protocol import cbor
from protocol.envelope import open_envelope, seal
from protocol.negotiation import Offer, Refusal, RefusalReason, verify_agreement
from protocol.resources import GpuInfo, ResourceSet
from protocol.streams import NEGOTIATE_PROTOCOL as PROTOCOL_ID

ROOT = Path(__file__).resolve().parents[3]
if "negotiation_vectors" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("negotiation_vectors", ROOT / "tools/vectors/negotiation.py")
    assert _spec and _spec.loader
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["negotiation_vectors"] = _mod
    _spec.loader.exec_module(_mod)
V = sys.modules["negotiation_vectors"]

LOOP = "/ip4/127.0.0.1/tcp/0"
T0 = V.T0
ONE_GPU = ResourceSet(cpu_cores=8, cpu_model="x", memory_mib=65536, disk_mib=100_000, gpus=(
    GpuInfo(vendor="nvidia", model="h100", name="NVIDIA H100", uuid="GPU-1", memory_mib=81920,
            compute_capability="9.0", mig=False),))


def write_job_file(tmp: Path) -> Path:
    from node.execute.selftest_image import build_busybox_image

    build_busybox_image(tmp / "image")
    job = tmp / "job.toml"
    job.write_text(
        'name = "hello"\nimage = "image"\ncommand = ["/bin/sh", "-c"]\nargs = ["echo hi"]\n'
        'outputs = ["/out"]\nmax_price = 100000\n'
        "[resources]\ncpus = 0.5\nmemory_mib = 64\ndisk_mib = 16\n"
        "[timeouts]\ntransfer_s = 120\nqueue_s = 120\nrun_s = 30\n"
    )
    return job


def clock() -> int:
    return T0


@asynccontextmanager
async def network(n: int) -> AsyncIterator[list[tuple[P2PHost, Ed25519PrivateKey]]]:
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            key = Ed25519PrivateKey.generate()
            out.append((await stack.enter_async_context(open_host(key, [LOOP])), key))
        yield out


def provider_on(host: P2PHost, key: Ed25519PrivateKey, store: Store, **policy: object) -> Provider:
    prov = Provider(key=key, peer_id=host.peer_id, store=store,
                    scheduler=Scheduler(ONE_GPU, clock=trio.current_time),
                    policy=Policy(**policy), clock=clock)  # type: ignore[arg-type]
    host.set_stream_handler(PROTOCOL_ID, prov.handle)
    return prov


def job(key: Ed25519PrivateKey, **kw: object):  # type: ignore[no-untyped-def]
    return seal(V.job_spec(**kw), key)


async def test_agreement_between_two_hosts(tmp_path: Path) -> None:
    async with network(2) as [(ph, pk), (sh, sk)]:
        pstore, sstore = Store(tmp_path / "p.sqlite"), Store(tmp_path / "s.sqlite")
        prov = provider_on(ph, pk, pstore)
        hooked: list[str] = []
        prov.on_agreement.append(lambda conn, alloc: hooked.append(alloc.key))
        with trio.fail_after(20):
            out = await negotiate_best(sh, sk, job(sk), [(ph.peer_id, ph.listen_addrs, 50)], clock=clock,
                                       store=sstore)
        assert out.agreement is not None
        assert hooked == [out.agreement.terms.negotiation_id.hex()]
        assert verify_agreement(out.agreement) and out.agreement.terms.provider == ph.peer_id
        nid = out.agreement.terms.negotiation_id.hex()
        assert [r.state for r in pstore.get(nid)] == ["agreed"]
        assert [r.state for r in sstore.get(nid)] == ["agreed"]
        assert pstore.get(nid)[0].extra["allocation"]["gpu_uuids"] == ["GPU-1"]
        alloc = prov.scheduler.get(nid)
        assert alloc is not None and alloc.committed


async def test_race_for_the_last_gpu(tmp_path: Path) -> None:
    async with network(3) as [(ph, pk), (ah, ak), (bh, bk)]:
        prov = provider_on(ph, pk, Store(tmp_path / "p.sqlite"))
        results = {}

        async def submit(name: str, host: P2PHost, key: Ed25519PrivateKey) -> None:
            results[name] = await negotiate_best(host, key, job(key), [(ph.peer_id, ph.listen_addrs, 0)],
                                                 clock=clock)

        with trio.fail_after(30):
            async with trio.open_nursery() as n:
                n.start_soon(submit, "a", ah, ak)
                n.start_soon(submit, "b", bh, bk)
        agreed = [o for o in results.values() if o.agreement is not None]
        lost = [o for o in results.values() if o.agreement is None]
        assert len(agreed) == 1 and len(lost) == 1
        refusal = lost[0].sessions[0].refusal
        assert refusal is not None and refusal.reason is RefusalReason.BUSY and refusal.queue_depth == 1
        assert prov.agreements == 1


async def test_malicious_peer_gets_errors_and_node_keeps_serving(tmp_path: Path) -> None:
    async with network(3) as [(ph, pk), (mh, mk), (sh, sk)]:
        pstore = Store(tmp_path / "p.sqlite")
        prov = provider_on(ph, pk, pstore)
        other = Ed25519PrivateKey.generate()
        honest_sub, _ = V.pair()
        good_offer = Offer(negotiation_id=bytes(16), submitter=mh.peer_id, provider=ph.peer_id, seq=0,
                           job=job(mk).raw, expires_at=T0 + 60)
        attacks = {
            "garbage": b"\xff\xfe garbage",
            "bad signature": cbor.encode({**cbor.decode(seal(good_offer, mk).raw), "sig": bytes(64)}),
            "signer is not the connected peer": seal(good_offer.replace(submitter=V.peer_of(other)), other).raw,
        }
        for name, frame in attacks.items():
            s = await mh.open_stream(ph.peer_id, PROTOCOL_ID, ph.listen_addrs)
            await s.send_frame(frame)
            with trio.fail_after(10), pytest.raises(StreamClosed):
                await s.receive_frame(1 << 20)
            assert name  # each attack ends in a reset, never an answer
        # oversize: the length prefix alone is refused
        s = await mh.open_stream(ph.peer_id, PROTOCOL_ID, ph.listen_addrs)
        await s._stream.write(b"\xff\xff\xff\x7f")  # uvarint ~256 MiB
        with trio.fail_after(10), pytest.raises(StreamClosed):
            await s.receive_frame(1 << 20)
        # a well-signed offer whose job spec is signed by someone else: a bound refusal
        s = await mh.open_stream(ph.peer_id, PROTOCOL_ID, ph.listen_addrs)
        await s.send_frame(seal(good_offer.replace(job=job(other).raw), mk).raw)
        with trio.fail_after(10):
            reply = open_envelope(await s.receive_frame(1 << 20), expected=Refusal, signer=ph.peer_id)
        assert reply.message.reason is RefusalReason.MALFORMED
        # meanwhile an honest submitter still gets its agreement
        with trio.fail_after(20):
            out = await negotiate_best(sh, sk, job(sk), [(ph.peer_id, ph.listen_addrs, 0)], clock=clock)
        assert out.agreement is not None
        assert prov.agreements == 1 and prov.served == 6
        del honest_sub


async def test_replayed_offer_is_refused_on_a_new_stream(tmp_path: Path) -> None:
    async with network(2) as [(ph, pk), (sh, sk)]:
        prov = provider_on(ph, pk, Store(tmp_path / "p.sqlite"))
        first = await request_quote(sh, sk, ph.peer_id, job(sk), clock=clock, addrs=ph.listen_addrs)
        assert first.quote is not None
        offer_frame = first.conn.offer.raw  # type: ignore[union-attr]
        s = await sh.open_stream(ph.peer_id, PROTOCOL_ID, ph.listen_addrs)
        await s.send_frame(offer_frame)
        with trio.fail_after(10):
            reply = open_envelope(await s.receive_frame(1 << 20), expected=Refusal, signer=ph.peer_id)
        assert reply.message.reason is RefusalReason.REPLAYED
        assert prov.scheduler.queue_depth == 1  # still only the first reservation


async def test_restart_with_an_open_agreement(tmp_path: Path) -> None:
    async with network(3) as [(ph, pk), (sh, sk), (bh, bk)]:
        prov = provider_on(ph, pk, Store(tmp_path / "p.sqlite"))
        with trio.fail_after(20):
            out = await negotiate_best(sh, sk, job(sk), [(ph.peer_id, ph.listen_addrs, 0)], clock=clock)
        assert out.agreement is not None
        prov.store.close()
        # "restart": a fresh store, scheduler and provider over the same database file
        prov2 = provider_on(ph, pk, Store(tmp_path / "p.sqlite"))
        assert prov2.resume() == [out.agreement.terms.negotiation_id.hex()]
        assert prov2.scheduler.free().gpu_uuids == ()
        with trio.fail_after(20):
            again = await negotiate_best(bh, bk, job(bk), [(ph.peer_id, ph.listen_addrs, 0)], clock=clock)
        assert again.agreement is None
        assert again.sessions[0].refusal is not None
        assert again.sessions[0].refusal.reason is RefusalReason.BUSY
        assert len(prov2.store.recent(role="provider")) == 2  # the agreement once, plus the refusal


async def test_daemons_submit_then_jobs_and_job_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two real daemons: `cpn submit` (POST /v1/jobs?wait=agreement), then `cpn jobs` / `cpn job show`."""
    import json
    from functools import partial
    from typing import Any

    from node.api.client import ApiClient
    from node.cli import main as cli
    from node.config import load_config
    from node.daemon import Node, run_node
    from protocol.advert import ContainerCapability

    def cfg(d: str) -> Any:
        return load_config(None, {"node.data_dir": str(tmp_path / d), "node.listen": [LOOP]})

    def runs_containers(node: Node) -> None:
        """Stands in for a podman self-test this test does not run (execution is off)."""
        node.execution.proven = ContainerCapability(runtime="podman/runc", limits=("memory",), gpu_cdi=False)

    async with trio.open_nursery() as nursery:
        prov = await nursery.start(partial(run_node, cfg("p"), prepare=runs_containers))
        await nursery.start(partial(run_node, cfg("s")))
        job_file = await trio.to_thread.run_sync(write_job_file, tmp_path)
        argv = ["submit", str(job_file), "--peer", prov.p2p.listen_addrs[0], "--json", "--data-dir", str(tmp_path / "s")]
        code = await trio.to_thread.run_sync(lambda: cli(argv))
        submitted = json.loads(capsys.readouterr().out)
        assert code == 0 and submitted["attempts"][0]["provider"] == prov.peer_id
        jid = submitted["attempts"][0]["agreement_id"]
        client = ApiClient(tmp_path / "s", timeout=30)
        rows = await trio.to_thread.run_sync(client.get, f"/v1/agreements/{jid}")
        assert rows["agreements"][0]["role"] == "submitter" and rows["agreements"][0]["agreement"]["cosigned"]
        bad = await trio.to_thread.run_sync(
            lambda: cli(["job", "show", "nope", "--data-dir", str(tmp_path / "s")]))
        assert bad == 1
        code = await trio.to_thread.run_sync(lambda: cli(["jobs", "--json", "--data-dir", str(tmp_path / "p")]))
        listed = json.loads(capsys.readouterr().out)
        assert code == 0 and [(j["id"], j["role"]) for j in listed["agreements"]] == [(jid, "provider")]
        code = await trio.to_thread.run_sync(lambda: cli(["job", "show", jid[:8], "--data-dir", str(tmp_path / "s")]))
        shown = capsys.readouterr().out
        assert code == 0 and f"job {jid} (submitter)" in shown and "co-signed" in shown
        nursery.cancel_scope.cancel()


def test_policy_from_config() -> None:
    from node.config import load_config

    peer = peer_id_of(Ed25519PrivateKey.generate())
    cfg = load_config(None, {"negotiation.max_job_s": 60, "negotiation.allowed_peers": [peer]})
    policy = Policy.from_config(cfg)
    assert policy.max_job_s == 60 and policy.price.gpu_hour == cfg.discovery.price_gpu_hour
    spec = V.job_spec(run_s=600)
    assert policy.admit("b", spec) == (RefusalReason.POLICY_DENIED, "peer not in allowed_peers")
    reason, _ = Policy(max_job_s=60).admit("b", spec)  # type: ignore[misc]
    assert reason is RefusalReason.POLICY_DENIED
    reason, _ = Policy(max_image_mib=0).admit("b", spec)  # type: ignore[misc]
    assert reason is RefusalReason.IMAGE_TOO_LARGE
    assert Policy.from_config(cfg).admit(peer, V.job_spec(run_s=30)) is None


async def test_policy_refusals_over_the_wire(tmp_path: Path) -> None:
    async with network(2) as [(ph, pk), (sh, sk)]:
        provider_on(ph, pk, Store(tmp_path / "p.sqlite"), max_job_s=60)
        s = await request_quote(sh, sk, ph.peer_id, job(sk), clock=clock, addrs=ph.listen_addrs)
        assert s.refusal is not None and s.refusal.reason is RefusalReason.POLICY_DENIED
        cheap = await request_quote(sh, sk, ph.peer_id, job(sk, max_price=0, run_s=30), clock=clock,
                                    addrs=ph.listen_addrs)
        assert cheap.refusal is not None and cheap.refusal.reason is RefusalReason.PRICE_TOO_LOW
        assert s.to_json()["status"] == "refused"


def test_runtime_check_follows_the_execution_self_test() -> None:
    from node.negotiate.service import runtime_check as _runtime_check
    from protocol.advert import ContainerCapability

    ok = ContainerCapability(runtime="podman/runc", limits=("memory",), gpu_cdi=False)
    assert _runtime_check(ok, V.job_spec(gpus=0), ONE_GPU) is None
    assert "CDI" in (_runtime_check(ok, V.job_spec(gpus=1), ONE_GPU) or "")
    none = ContainerCapability(runtime="none", limits=(), gpu_cdi=False)
    assert _runtime_check(none, V.job_spec(gpus=0), ONE_GPU) is not None


async def test_status_events_reach_the_submitter_once(tmp_path: Path) -> None:
    from node.negotiate.status import push_status, status_handler
    from protocol.negotiation import Phase
    from protocol.streams import STATUS_PROTOCOL as STATUS_PROTOCOL_ID

    async with network(2) as [(ph, pk), (sh, sk)]:
        pstore, sstore = Store(tmp_path / "p.sqlite"), Store(tmp_path / "s.sqlite")
        provider_on(ph, pk, pstore)
        sh.set_stream_handler(STATUS_PROTOCOL_ID, status_handler(sk, sstore, clock))
        with trio.fail_after(20):
            out = await negotiate_best(sh, sk, job(sk), [(ph.peer_id, ph.listen_addrs, 0)], clock=clock,
                                       store=sstore)
        assert out.agreement is not None
        nid = out.agreement.terms.negotiation_id.hex()
        with trio.fail_after(20):
            await push_status(ph, pk, pstore, nid, Phase.RUNNING, at=T0 + 1, clock=clock, addrs=sh.listen_addrs)
            await push_status(ph, pk, pstore, nid, Phase.FINISHED, at=T0 + 2, exit_code=0, clock=clock)
        assert sstore.get(nid, "submitter")[0].state == "finished"
        assert pstore.get(nid, "provider")[0].state == "finished"
        assert [e.kind for e in sstore.events(nid, "submitter")] == ["running", "finished"]
        # the last status again, byte for byte (its ack was lost): acknowledged, applied once
        last = list(sstore.events(nid, "submitter"))[-1].data
        assert last is not None
        s = await ph.open_stream(sh.peer_id, STATUS_PROTOCOL_ID, sh.listen_addrs)
        await s.send_frame(last)
        with trio.fail_after(10):
            assert await s.receive_frame(64) == b"ok"
        assert len(list(sstore.events(nid, "submitter"))) == 2
        # an earlier status replayed is refused (stream reset), nothing changes
        first = list(sstore.events(nid, "submitter"))[0].data
        assert first is not None
        s = await ph.open_stream(sh.peer_id, STATUS_PROTOCOL_ID, sh.listen_addrs)
        await s.send_frame(first)
        with trio.fail_after(10), pytest.raises(StreamClosed):
            await s.receive_frame(64)
        assert len(list(sstore.events(nid, "submitter"))) == 2
