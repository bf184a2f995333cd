"""Cross-tenant input theft through dedup (issue 12 item 6), through real daemons.

Submitter A runs a job with a private input on provider P.  Submitter B knows
only that input's digest and size: B's job names them with a made-up chunk
root and copies the input to its outputs.  Before, P found the digest in its
store, skipped the fetch and mounted A's input into B's job.  Now a stored
blob is reused only for a party that delivered it to P (spec/transfer.md
section 1.1): P asks B to deliver it, B cannot, and B's job fails without
its container ever starting.  B cannot go round the rule with a FetchGrant
either (P lets B grant only blobs B delivered there), while A's next job
reuses the stored input without moving it again.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from support.podman import shared_env

from node.api.routes.jobs import submit_request
from node.config import config_from_dict
from node.daemon import Node, run_node
from node.execute.selftest_image import BUSYBOX, build_busybox_image
from node.jobs.jobfile import load_job
from node.transfer.service import TransferRefused
from protocol.envelope import seal
from protocol.transfer import FetchGrant, Present

pytestmark = [
    pytest.mark.adversarial,
    pytest.mark.podman,
    pytest.mark.skipif(not BUSYBOX.is_file(), reason=f"{BUSYBOX} missing: apt-get install busybox-static"),
]

LOOP = "/ip4/127.0.0.1/tcp/0"
BOUND = 120


@pytest.fixture(scope="module")
def podman_env() -> Any:
    return shared_env()


@asynccontextmanager
async def daemons(tmp: Path, podman: Any, **execution: bool) -> AsyncIterator[dict[str, Node]]:
    """One in-process daemon per name (execution on where asked), all on 127.0.0.1."""
    nodes: dict[str, Node] = {}
    async with trio.open_nursery() as nursery:
        for name, runs_jobs in execution.items():
            table: dict[str, Any] = {"node": {"data_dir": str(tmp / name), "listen": [LOOP]}}
            if runs_jobs:
                table["execution"] = {"enabled": True, "podman_root": str(podman.settings.root),
                                      "podman_runroot": str(podman.settings.runroot)}
            config = config_from_dict(table)
            nodes[name] = await nursery.start(lambda task_status, c=config: run_node(c, task_status=task_status))
        yield nodes
        nursery.cancel_scope.cancel()


def _job(d: Path, secret: bytes, *, transfer_s: int = 60) -> Path:
    build_busybox_image(d / "image")
    (d / "secret.bin").write_bytes(secret)
    (d / "job.toml").write_text(
        'name = "copy"\nimage = "image"\ncommand = ["/bin/sh", "-c"]\nargs = ["cat /data/in > /out/copy"]\n'
        'outputs = ["/out"]\nmax_price = 100000\n'
        "[resources]\ncpus = 0.5\nmemory_mib = 64\ndisk_mib = 16\n"
        f"[timeouts]\ntransfer_s = {transfer_s}\nqueue_s = 60\nrun_s = 60\n"
        '[[inputs]]\nfile = "secret.bin"\npath = "/data/in"\n'
    )
    return d / "job.toml"


async def _run(node: Node, spec: Any, paths: dict[str, str], results: Path, provider: Node) -> Any:
    peer = f"{provider.p2p.listen_addrs[0]}"
    if "/p2p/" not in peer:
        peer += f"/p2p/{provider.peer_id}"
    run = await node.runner.submit(submit_request({
        "job_hex": spec.encode().hex(), "blob_paths": paths, "results_dir": str(results),
        "peers": [peer], "retries": 0, "timeout": 3.0}))
    with trio.fail_after(BOUND):
        await node.runner.live[run.id].done.wait()
    return node.runner.runs[run.id]


async def test_a_digest_alone_never_opens_another_submitters_input(tmp_path: Path, podman_env: Any) -> None:
    secret = os.urandom(300_000)
    async with daemons(tmp_path, podman_env, p=True, a=False, b=False, c=False) as n:
        p, a, b, c = n["p"], n["a"], n["b"], n["c"]
        # A's job brings its private input to P
        loaded = load_job(_job(tmp_path / "ja", secret))
        paths = {d: str(f) for d, f in loaded.blob_paths.items()}
        first = await _run(a, loaded.spec, paths, tmp_path / "ra", p)
        assert first.state == "finished", first.detail
        secret_ref = loaded.spec.inputs[0].blob

        # B names A's input by digest and size, with a made-up chunk root
        fake = load_job(_job(tmp_path / "jb", os.urandom(len(secret)), transfer_s=2))
        stolen_ref = dataclasses.replace(secret_ref, chunk_root="sha256:" + "ab" * 32)
        spec = dataclasses.replace(fake.spec, inputs=(dataclasses.replace(fake.spec.inputs[0], blob=stolen_ref),))
        real_import = b.runner._import_blobs

        async def import_all_but_the_stolen(s: Any, blob_paths: dict[str, str]) -> None:
            await real_import(dataclasses.replace(s, inputs=()), blob_paths)  # B does not have it

        b.runner._import_blobs = import_all_but_the_stolen  # type: ignore[method-assign]
        image_paths = {d: f for d, f in fake.blob_paths.items() if d != fake.spec.inputs[0].blob.digest}
        theft = await _run(b, spec, {d: str(f) for d, f in image_paths.items()}, tmp_path / "rb", p)
        assert theft.state != "finished"
        assert not list((tmp_path / "rb").rglob("copy")), "B got A's input"
        assert "transfer of " + secret_ref.digest in theft.detail, theft.detail
        assert p.blobs.usable_by(secret_ref.digest, a.peer_id)
        assert not p.blobs.usable_by(secret_ref.digest, b.peer_id)
        assert p.transfer.stats["proofs"] >= 1  # P asked B to deliver what it claimed

        # ... nor through a FetchGrant naming an accomplice
        now = int(p.transfer.now())
        grant = seal(FetchGrant(digest=secret_ref.digest, grantee=c.peer_id, holder=p.peer_id,
                                expires_at=now + 60), b.key)
        c.transfer.addrs[p.peer_id] = list(p.p2p.listen_addrs)
        stream = await c.transfer.open_stream(p.peer_id)
        with pytest.raises(TransferRefused) as refused:
            await c.transfer.ask(stream, Present(grant=grant.raw), Present)
        assert refused.value.reason == "unauthorized"

        # A, who delivered it, reuses it: nothing moves again
        hits = p.transfer.stats["dedup_hits"]
        again = await _run(a, dataclasses.replace(loaded.spec, nonce=os.urandom(16)), paths, tmp_path / "ra2", p)
        assert again.state == "finished", again.detail
        assert p.transfer.stats["dedup_hits"] > hits
        assert (Path(again.output_dir) / "out" / "copy").read_bytes() == secret
