"""Messages of an agreed job between its two parties (spec/jobflow.md, tags 98-100).

After the co-signed agreement the submitter *pulls*: it opens a stream to the
provider and sends a signed :class:`JobWatch`; the provider answers with
signed :class:`JobUpdate` frames (phase changes, transfer progress, new log
lines, and a heartbeat at least every :data:`HEARTBEAT_S`) and ends the stream
with its signed :class:`protocol.result.Result` (tag 96) once the run is over.
The submitter countersigns with a :class:`protocol.result.Receipt` (tag 97),
sent on a fresh stream, and the provider answers with one final
``JobUpdate`` (phase ``settled``).  :class:`JobCancel` asks the provider to
stop the job.

Why pull, not push: the submitter is the party that must survive its own
restart and collect the result; after a restart it simply watches again
(``log_lines`` says what it already has), and a provider never has to find a
submitter that moved or went away.  Every frame is bound to the agreement ID;
the libp2p stream authenticates both peers, and the envelope signer must be
the party the agreement names, so a frame cannot be moved to another job.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from . import cbor
from .errors import ProtocolError, ValidationError
from .wire import Message, message

__all__ = [
    "AGREEMENT_ID_LEN",
    "HEARTBEAT_S",
    "MAX_LINES",
    "MAX_LINE",
    "JobPhase",
    "JobWatch",
    "JobUpdate",
    "JobCancel",
    "TERMINAL_PHASES",
    "MAX_FRAME",
    "FRAME_LIMITS",
    "MAX_LINES_BYTES",
    "UNKNOWN_AGREEMENT",
    "unknown_agreement",
    "batch_lines",
    "WatchView",
]

AGREEMENT_ID_LEN: Final = 16
HEARTBEAT_S: Final = 5  #: a provider sends a JobUpdate at least this often on a watch stream
MAX_LINES: Final = 256  #: log lines in one JobUpdate
MAX_LINE: Final = 4096  #: characters in one log line (longer lines are cut)
MAX_DETAIL: Final = 1024
#: Largest frame on /cpn/job/0.1.0 (a Result with up to 1024 outputs, and the
#: Receipt that embeds it, exceed the 1 MiB default of spec/encoding.md).
MAX_FRAME: Final = 4 << 20
#: Decode limits of every envelope on /cpn/job/0.1.0.
FRAME_LIMITS: Final = cbor.Limits(max_size=MAX_FRAME, max_depth=16, max_items=4096)
#: A provider sends at most this many UTF-8 bytes of log lines in one JobUpdate
#: (the first line of an update always goes, cut to MAX_LINE characters).
MAX_LINES_BYTES: Final = 256 << 10
#: How the detail of a provider's answer to an agreement it does not hold begins.
UNKNOWN_AGREEMENT: Final = "unknown agreement"


class JobPhase(enum.Enum):
    """Where an agreed job stands on the provider."""

    AGREED = "agreed"  #: agreement concluded, nothing started yet
    TRANSFERRING = "transferring"  #: fetching image and input blobs from the submitter
    RUNNING = "running"  #: the container runs
    FINISHED = "finished"  #: the run is over; the Result follows on this stream
    FAILED = "failed"  #: the job cannot run or is unknown here; the Result (if any) follows
    SETTLED = "settled"  #: the provider recorded the submitter's receipt


#: Phases after which nothing changes except settlement.
TERMINAL_PHASES: Final = frozenset({JobPhase.FINISHED, JobPhase.FAILED, JobPhase.SETTLED})


def _check_aid(value: bytes) -> None:
    if len(value) != AGREEMENT_ID_LEN:
        raise ValidationError("agreement_id", f"must be {AGREEMENT_ID_LEN} bytes")


@message(tag=98, domain="cpn/jobflow/watch")
class JobWatch(Message):
    """Submitter -> provider: "tell me how agreement ``agreement_id`` goes"."""

    agreement_id: bytes
    log_lines: int  #: log lines the submitter already holds (the provider sends the rest)

    def check(self) -> None:
        _check_aid(self.agreement_id)
        if self.log_lines < 0:
            raise ValidationError("log_lines", "must be >= 0")


@message(tag=99, domain="cpn/jobflow/update")
class JobUpdate(Message):
    """Provider -> submitter: the job's phase, transfer progress and new log lines.

    ``log_from`` is the index of ``lines[0]`` in the whole log, so a receiver
    that reconnects appends without gaps or repeats.  Transfer progress is in
    bytes of the job's blobs (image and inputs) held verified by the provider.
    """

    agreement_id: bytes
    phase: JobPhase
    at: int  #: unix seconds
    detail: str
    transfer_done: int
    transfer_total: int
    log_from: int
    lines: tuple[str, ...]

    def check(self) -> None:
        # in the order of the fields (spec/jobflow.md section 3); phase is checked when decoding
        _check_aid(self.agreement_id)
        if self.at < 0:
            raise ValidationError("at", "must be >= 0")
        if len(self.detail) > MAX_DETAIL:
            raise ValidationError("detail", f"at most {MAX_DETAIL} characters")
        if not 0 <= self.transfer_done <= self.transfer_total:
            raise ValidationError("transfer_done", "0 <= transfer_done <= transfer_total")
        if self.log_from < 0:
            raise ValidationError("log_from", "must be >= 0")
        if len(self.lines) > MAX_LINES:
            raise ValidationError("lines", f"at most {MAX_LINES} per update")
        if any(len(line) > MAX_LINE for line in self.lines):
            raise ValidationError("lines", f"each at most {MAX_LINE} characters")


@message(tag=100, domain="cpn/jobflow/cancel")
class JobCancel(Message):
    """Submitter -> provider: stop the agreed job (its container is removed)."""

    agreement_id: bytes
    detail: str

    def check(self) -> None:
        _check_aid(self.agreement_id)
        if len(self.detail) > MAX_DETAIL:
            raise ValidationError("detail", f"at most {MAX_DETAIL} characters")


def unknown_agreement(agreement_id: bytes, now: int) -> JobUpdate:
    """Provider: the one answer to a JobWatch or JobCancel for an agreement it
    does not hold with that submitter (then the stream ends)."""
    return JobUpdate(agreement_id=agreement_id, phase=JobPhase.FAILED, at=now,
                     detail=f"{UNKNOWN_AGREEMENT} (not agreed here, or with another submitter)",
                     transfer_done=0, transfer_total=0, log_from=0, lines=())


def batch_lines(lines: Sequence[str], start: int, *, max_bytes: int = MAX_LINES_BYTES) -> list[str]:
    """Provider: the log lines from index ``start`` for one JobUpdate: at most
    MAX_LINES lines, each cut to MAX_LINE characters, and (after the first)
    only while their UTF-8 bytes plus 4 per line stay within ``max_bytes``."""
    out: list[str] = []
    size = 0
    for line in lines[start : start + MAX_LINES]:
        line = line[:MAX_LINE]
        size += len(line.encode()) + 4
        if out and size > max_bytes:
            break
        out.append(line)
    return out


@dataclass
class WatchView:
    """Submitter: what one watch of an agreement has delivered so far.

    :meth:`receive` takes each JobUpdate of the watch stream (already opened:
    signed by the provider, type checked) and returns the log lines that are
    new, so a reconnecting submitter neither misses nor repeats lines.
    Raises ``binding_mismatch`` for an update about another agreement and
    ``unknown_agreement`` when the provider does not hold the agreement.
    """

    agreement_id: bytes
    lines: int = 0  #: log lines held (what the next JobWatch sends as log_lines)
    phase: JobPhase | None = None

    def receive(self, update: JobUpdate) -> tuple[str, ...]:
        if update.agreement_id != self.agreement_id:
            raise ProtocolError("binding_mismatch", "an update for another agreement")
        if update.phase is JobPhase.FAILED and update.detail.startswith(UNKNOWN_AGREEMENT):
            raise ProtocolError("unknown_agreement", update.detail)
        self.phase = update.phase
        if update.log_from > self.lines:  # a gap: never from a conforming provider; keep nothing
            return ()
        new = update.lines[self.lines - update.log_from :]
        self.lines += len(new)
        return new
