"""Results and receipts of executed jobs (spec/execution.md, message tags 96-127).

The provider signs a :class:`Result`: how the job ended (exit code, OOM and
timeout flags), the content digests of the outputs and of the log, and the
metering (wall and CPU milliseconds, peak memory, bytes in and out, GPU
milliseconds per GPU).  The submitter checks the outputs against those digests
and *countersigns* the result by sealing a :class:`Receipt` that embeds the
provider's signed envelope verbatim and its sha256.  A receipt therefore
stands on its own: anyone can check both signatures and the binding between
them (:func:`verify_receipt`) without the transcript, which is what the
settlement ledger stores.

Pure validation: nothing here reads a clock; ``now`` is a parameter.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from hashlib import sha256
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .chunks import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from .envelope import Signed, open_envelope, public_key_proto_of, seal
from .errors import LocalProtocolError, ProtocolError, ValidationError
from .identity import check_peer_id_field, peer_id_from_proto_key
from .jobspec import DIGEST_TEXT_RE
from .wire import Message, Struct, message, struct

__all__ = [
    "AGREEMENT_ID_LEN",
    "DIGEST_LEN",
    "MAX_OUTPUTS",
    "MAX_DETAIL",
    "Outcome",
    "OutputBlob",
    "GpuUsage",
    "Metering",
    "Result",
    "Receipt",
    "VerifiedReceipt",
    "verify_result",
    "countersign",
    "verify_receipt",
]

AGREEMENT_ID_LEN: Final = 16  #: the negotiation ID doubles as the agreement ID
DIGEST_LEN: Final = 32
MAX_OUTPUTS: Final = 1024
MAX_DETAIL: Final = 512
MAX_PATH: Final = 1024
MAX_GPUS: Final = 64
#: Exit status of a process killed by SIGKILL (128 + 9), what the OOM killer sends.
OOM_EXIT_CODE: Final = 137


class Outcome(enum.Enum):
    """How a run ended.  Exactly one applies."""

    EXITED = "exited"  #: the command exited by itself (any exit code)
    OOM = "oom"  #: killed for exceeding the memory limit
    TIMEOUT = "timeout"  #: killed at the agreed run timeout
    CANCELLED = "cancelled"  #: cancelled by either party before it finished
    FAILED = "failed"  #: never ran or was lost: image refused, runtime error, node restart


@struct
class OutputBlob(Struct):
    """One output file (or the log) as a content-addressed blob.

    The fields after ``path`` are those of the job spec's ``BlobRef`` so the
    transfer protocol can fetch and verify the blob chunk by chunk.
    """

    path: str  #: relative POSIX path under the job's output directory ("" for the log)
    digest: str  #: "sha256:<hex>" of the whole file
    size: int  #: bytes
    chunk_size: int  #: bytes per chunk
    chunk_root: str  #: "sha256:<hex>" chunk root (protocol.chunks)

    def check(self) -> None:
        for name in ("digest", "chunk_root"):
            if not DIGEST_TEXT_RE.match(getattr(self, name)):
                raise ValidationError(name, "must be sha256:<64 lowercase hex>")
        if self.size < 0:
            raise ValidationError("size", "must be >= 0")
        if not MIN_CHUNK_SIZE <= self.chunk_size <= MAX_CHUNK_SIZE:
            raise ValidationError("chunk_size", f"must be in {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        if self.chunk_size & (self.chunk_size - 1):
            raise ValidationError("chunk_size", "must be a power of two")
        if len(self.path) > MAX_PATH:
            raise ValidationError("path", f"at most {MAX_PATH} characters")
        if self.path:
            if self.path.startswith("/") or "\0" in self.path:
                raise ValidationError("path", "must be relative, without NUL")
            if any(part in ("", ".", "..") for part in self.path.split("/")):
                raise ValidationError("path", "must be normalised (no empty, '.' or '..' segment)")


@struct
class GpuUsage(Struct):
    """GPU time charged for one reserved GPU."""

    uuid: str  #: NVML UUID ("GPU-...")
    gpu_ms: int  #: milliseconds the GPU was reserved to the running container

    def check(self) -> None:
        if not 0 < len(self.uuid) <= 128:
            raise ValidationError("uuid", "1..128 characters")
        if self.gpu_ms < 0:
            raise ValidationError("gpu_ms", "must be >= 0")


@struct
class Metering(Struct):
    """Resources a run consumed.  Integers with units in the name (no floats)."""

    wall_ms: int  #: container start to exit
    cpu_ms: int  #: user + system CPU time of the container's cgroup
    peak_memory_bytes: int  #: high-water mark of the container's memory cgroup
    bytes_in: int  #: image + input blob bytes delivered to the run
    bytes_out: int  #: output + log blob bytes produced
    gpus: tuple[GpuUsage, ...]  #: one entry per reserved GPU, sorted by uuid

    def check(self) -> None:
        for name in ("wall_ms", "cpu_ms", "peak_memory_bytes", "bytes_in", "bytes_out"):
            if getattr(self, name) < 0:
                raise ValidationError(name, "must be >= 0")
        if len(self.gpus) > MAX_GPUS:
            raise ValidationError("gpus", f"at most {MAX_GPUS}")
        uuids = [g.uuid for g in self.gpus]
        if uuids != sorted(set(uuids)):
            raise ValidationError("gpus", "sorted by uuid, no duplicates")


@message(tag=96, domain="cpn/execution/result")
class Result(Message):
    """Provider -> submitter: how the agreed job ended, what it produced, what it used."""

    agreement_id: bytes  #: negotiation ID of the agreement (16 bytes)
    job_digest: bytes  #: sha256 of the submitter's signed job spec envelope
    submitter: str  #: peer ID that must countersign
    provider: str  #: peer ID of the signer
    outcome: Outcome
    exit_code: int | None  #: exit status for exited (0..255) and oom (137); null otherwise
    oom: bool
    timed_out: bool
    detail: str  #: human explanation for FAILED/CANCELLED ("" otherwise)
    outputs: tuple[OutputBlob, ...]  #: sorted by path
    log: OutputBlob  #: the combined stdout/stderr log (path "")
    metering: Metering
    started_at: int  #: unix seconds
    finished_at: int  #: unix seconds

    def check(self) -> None:
        if len(self.agreement_id) != AGREEMENT_ID_LEN:
            raise ValidationError("agreement_id", f"must be {AGREEMENT_ID_LEN} bytes")
        if len(self.job_digest) != DIGEST_LEN:
            raise ValidationError("job_digest", f"must be {DIGEST_LEN} bytes")
        check_peer_id_field(self.submitter, "submitter")
        check_peer_id_field(self.provider, "provider")
        if self.oom != (self.outcome is Outcome.OOM):
            raise ValidationError("oom", "set exactly when the outcome is oom")
        if self.timed_out != (self.outcome is Outcome.TIMEOUT):
            raise ValidationError("timed_out", "set exactly when the outcome is timeout")
        # The container's exit status when its process ended without the
        # provider stopping it: by itself (exited) or by the kernel's OOM
        # killer (oom, SIGKILL: 137).  Null when the provider stopped it or it
        # never ran (spec/execution.md 1.1).
        if self.outcome in (Outcome.EXITED, Outcome.OOM):
            if self.exit_code is None:
                raise ValidationError("exit_code", f"an {self.outcome.value} run has an exit code")
            if not 0 <= self.exit_code <= 255:
                raise ValidationError("exit_code", "must be 0..255")
            if self.outcome is Outcome.OOM and self.exit_code != OOM_EXIT_CODE:
                raise ValidationError("exit_code", f"an OOM-killed run exits with {OOM_EXIT_CODE}")
        elif self.exit_code is not None:
            raise ValidationError("exit_code", f"must be null for outcome {self.outcome.value}")
        if len(self.detail) > MAX_DETAIL:
            raise ValidationError("detail", f"at most {MAX_DETAIL} characters")
        if len(self.outputs) > MAX_OUTPUTS:
            raise ValidationError("outputs", f"at most {MAX_OUTPUTS}")
        paths = [o.path for o in self.outputs]
        if "" in paths:
            raise ValidationError("outputs", "every output has a path")
        if paths != sorted(set(paths)):
            raise ValidationError("outputs", "sorted by path, no duplicates")
        if self.log.path != "":
            raise ValidationError("log.path", "the log has an empty path")
        if not 0 <= self.started_at <= self.finished_at:
            raise ValidationError("finished_at", "0 <= started_at <= finished_at")


@message(tag=97, domain="cpn/execution/receipt")
class Receipt(Message):
    """Submitter -> provider (and the ledger): the submitter's countersignature.

    ``accepted`` is false when the submitter disputes the result (for example
    an output failed verification); the receipt still records what was
    claimed, so settlement can see the dispute.
    """

    result: bytes  #: the provider's signed Result envelope, verbatim
    result_digest: bytes  #: sha256(result)
    accepted: bool
    detail: str
    received_at: int  #: unix seconds

    def check(self) -> None:
        if len(self.result_digest) != DIGEST_LEN:
            raise ValidationError("result_digest", f"must be {DIGEST_LEN} bytes")
        if len(self.detail) > MAX_DETAIL:
            raise ValidationError("detail", f"at most {MAX_DETAIL} characters")
        if self.received_at < 0:
            raise ValidationError("received_at", "must be >= 0")


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """A receipt whose two signatures and binding were checked."""

    receipt: Signed[Receipt]
    result: Signed[Result]

    @property
    def digest(self) -> bytes:
        return self.receipt.digest


def verify_result(
    raw: bytes,
    *,
    provider: str | None = None,
    submitter: str | None = None,
    agreement_id: bytes | None = None,
    job_digest: bytes | None = None,
) -> Signed[Result]:
    """Open a provider's signed Result and check who it binds.

    Reasons: those of :func:`open_envelope`, ``wrong_signer`` (signed by a peer
    other than the result's ``provider``) and ``binding_mismatch`` (another
    submitter, agreement or job than expected).
    """
    signed: Signed[Result] = open_envelope(raw, expected=Result, signer=provider)
    msg = signed.message
    if signed.signer != msg.provider:
        raise ProtocolError("wrong_signer", f"result names provider {msg.provider} but is signed by {signed.signer}")
    if submitter is not None and msg.submitter != submitter:
        raise ProtocolError("binding_mismatch", "result names another submitter")
    if agreement_id is not None and msg.agreement_id != agreement_id:
        raise ProtocolError("binding_mismatch", "result is for another agreement")
    if job_digest is not None and msg.job_digest != job_digest:
        raise ProtocolError("binding_mismatch", "result is for another job")
    return signed


def countersign(
    result: Signed[Result],
    key: Ed25519PrivateKey,
    *,
    now: int,
    accepted: bool = True,
    detail: str = "",
) -> Signed[Receipt]:
    """Seal the submitter's receipt for ``result`` (already verified by the caller)."""
    me = peer_id_from_proto_key(public_key_proto_of(key))
    if me != result.message.submitter:
        raise LocalProtocolError(f"this key ({me}) is not the result's submitter")
    receipt = Receipt(
        result=result.raw,
        result_digest=sha256(result.raw).digest(),
        accepted=accepted,
        detail=detail,
        received_at=now,
    )
    return seal(receipt, key)


def verify_receipt(
    raw: bytes, *, submitter: str | None = None, provider: str | None = None
) -> VerifiedReceipt:
    """Check a co-signed receipt on its own.

    Reasons: those of :func:`open_envelope` (for either envelope),
    ``digest_mismatch`` (the embedded result is not the one whose digest was
    countersigned), ``wrong_countersigner`` (the receipt is not signed by the
    result's submitter) and ``wrong_signer`` (the result is not signed by its
    provider).
    """
    receipt: Signed[Receipt] = open_envelope(raw, expected=Receipt, signer=submitter)
    r = receipt.message
    if sha256(r.result).digest() != r.result_digest:
        raise ProtocolError("digest_mismatch", "embedded result does not match result_digest")
    result = verify_result(r.result, provider=provider)
    if receipt.signer != result.message.submitter:
        raise ProtocolError(
            "wrong_countersigner",
            f"receipt signed by {receipt.signer}, result names submitter {result.message.submitter}",
        )
    return VerifiedReceipt(receipt=receipt, result=result)
