"""A provider whose Result claims outputs larger than the job's ``disk_mib``
(issue 12): the submitter refuses before fetching a byte
(node.jobs.outputs.fetch_outputs, which the job runner calls), against a real
provider-side transfer service on 127.0.0.1 that would serve them; an honest
result from the same provider is fetched as usual.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.transfer import transfer_services

from node.jobs.outputs import MAX_LOG_BYTES, fetch_outputs
from node.transfer.blobstore import BlobMeta
from node.transfer.service import TransferService
from protocol.envelope import public_key_proto_of
from protocol.identity import peer_id_from_proto_key
from protocol.result import Metering, Outcome, OutputBlob, Result
from protocol.transfer import Direction

pytestmark = pytest.mark.adversarial

CS = 64 << 10


async def _output(provider: TransferService, submitter: TransferService, data: bytes, path: str) -> OutputBlob:
    meta: BlobMeta = await trio.to_thread.run_sync(
        functools.partial(provider.store.import_bytes, data, chunk_size=CS))
    provider.grant(submitter.peer_id, meta.digest, Direction.FETCH)
    return OutputBlob(path=path, digest=meta.digest, size=meta.size, chunk_size=meta.chunk_size,
                      chunk_root=meta.chunk_root)


def _result(provider: TransferService, submitter: TransferService, outputs: tuple[OutputBlob, ...],
            log: OutputBlob) -> Result:
    return Result(
        agreement_id=bytes(16), job_digest=bytes(32), submitter=submitter.peer_id, provider=provider.peer_id,
        outcome=Outcome.EXITED, exit_code=0, oom=False, timed_out=False, detail="", outputs=outputs, log=log,
        metering=Metering(wall_ms=1, cpu_ms=1, peak_memory_bytes=1, bytes_in=0, bytes_out=0, gpus=()),
        started_at=1, finished_at=2,
    )


async def test_outputs_over_disk_mib_are_refused_before_fetching(tmp_path: Path) -> None:
    async with transfer_services(tmp_path, 2) as (provider, submitter):
        log = await _output(provider, submitter, b"log line\n", "")
        huge = await _output(provider, submitter, os.urandom(4 << 20), "out/huge")  # disk_mib = 1
        r = _result(provider, submitter, (huge,), log)
        with trio.fail_after(60):
            problems = await fetch_outputs(submitter, r, provider=provider.peer_id, disk_mib=1, timeout_s=30)
        assert problems and "more than the job's disk_mib" in problems[0]
        assert provider.dataplane.stats["chunks_sent"] == 0  # not one byte moved
        assert not submitter.store.has(huge.digest) and not submitter.store.has(log.digest)

        fine = await _output(provider, submitter, os.urandom(300_000), "out/fine")
        with trio.fail_after(60):
            assert await fetch_outputs(submitter, _result(provider, submitter, (fine,), log),
                                       provider=provider.peer_id, disk_mib=1, timeout_s=30) == []
        assert submitter.store.has(fine.digest) and submitter.store.has(log.digest)


async def test_a_log_larger_than_any_provider_keeps_is_refused(tmp_path: Path) -> None:
    """The log is bounded by the provider's LogStream (16 MiB and a marker): a
    bigger claimed log is refused unfetched too."""
    async with transfer_services(tmp_path, 1) as (submitter,):
        fake_peer = peer_id_from_proto_key(public_key_proto_of(Ed25519PrivateKey.generate()))
        big_log = OutputBlob(path="", digest="sha256:" + "0" * 64, size=MAX_LOG_BYTES + 1, chunk_size=CS,
                             chunk_root="sha256:" + "1" * 64)
        r = Result(
            agreement_id=bytes(16), job_digest=bytes(32), submitter=submitter.peer_id, provider=fake_peer,
            outcome=Outcome.EXITED, exit_code=0, oom=False, timed_out=False, detail="", outputs=(), log=big_log,
            metering=Metering(wall_ms=1, cpu_ms=1, peak_memory_bytes=1, bytes_in=0, bytes_out=0, gpus=()),
            started_at=1, finished_at=2,
        )
        problems = await fetch_outputs(submitter, r, provider=fake_peer, disk_mib=1024, timeout_s=30)
        assert len(problems) == 1 and problems[0].startswith("log:")
