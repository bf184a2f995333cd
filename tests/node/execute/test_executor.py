"""node/execution.py without podman: the submitter's side of outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.podman import job_for
from vectors.execution import sample_result

from node.execute.executor import file_blob
from node.execute.selftest_image import build_busybox_image  # noqa: E402
from node.jobs.outputs import save_outputs
from protocol.envelope import public_key_proto_of
from protocol.identity import peer_id_from_proto_key
from protocol.result import Outcome

PROVIDER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SUBMITTER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def test_save_outputs_verifies_before_writing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    (store / "r").write_bytes(b"42\n")
    (store / "l").write_bytes(b"log\n")
    out, log = file_blob(store / "r", "out/result.txt"), file_blob(store / "l", "")
    paths = {out.digest: store / "r", log.digest: store / "l"}
    sid = peer_id_from_proto_key(public_key_proto_of(SUBMITTER))
    result = sample_result(PROVIDER, sid, outputs=(out,), log=log, outcome=Outcome.EXITED)
    assert save_outputs(result, paths.__getitem__, tmp_path / "results" / "job") == []
    assert (tmp_path / "results" / "job" / "out" / "result.txt").read_bytes() == b"42\n"
    assert (tmp_path / "results" / "job" / "log.txt").read_bytes() == b"log\n"
    (store / "r").write_bytes(b"43\n")  # a corrupted output is reported, not written
    problems = save_outputs(result, paths.__getitem__, tmp_path / "results" / "job2")
    assert problems == ["out/result.txt: bad_digest"]
    assert not (tmp_path / "results" / "job2" / "out").exists()


async def test_no_podman_means_no_runtime(tmp_path: Path) -> None:
    """Without podman the node says so and refuses jobs; it does not crash."""
    from node.execute.executor import NO_RUNTIME, Executor
    from node.execute.podman import PodmanSettings
    from node.execute.selftest_image import BUSYBOX

    if not BUSYBOX.is_file():
        pytest.skip("busybox-static is not installed")
    peer = peer_id_from_proto_key(public_key_proto_of(PROVIDER))
    ex = Executor(PodmanSettings(podman=str(tmp_path / "no-such-podman")), tmp_path / "runs", PROVIDER, peer)
    capability, settled = await ex.start(test_image_dir=tmp_path / "img")
    assert not capability.ok and capability.reason.startswith(NO_RUNTIME)
    assert settled == []
    # and a job is answered with a signed FAILED result naming the reason
    image = build_busybox_image(tmp_path / "bb")
    sid = peer_id_from_proto_key(public_key_proto_of(SUBMITTER))
    done = await ex.execute(job_for(image, ("/bin/true",)), agreement_id=bytes(16), job_digest=bytes(32),
                            submitter=sid, blob_path=lambda d: image.blob_path(d))
    r = done.result.message
    assert (r.outcome, r.detail.startswith(NO_RUNTIME)) == (Outcome.FAILED, True)
    assert done.result.signer == peer
