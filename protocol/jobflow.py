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
from typing import Final

from .errors import ValidationError
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
]

AGREEMENT_ID_LEN: Final = 16
HEARTBEAT_S: Final = 5  #: a provider sends a JobUpdate at least this often on a watch stream
MAX_LINES: Final = 256  #: log lines in one JobUpdate
MAX_LINE: Final = 4096  #: characters in one log line (longer lines are cut)
MAX_DETAIL: Final = 1024


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
        _check_aid(self.agreement_id)
        if len(self.detail) > MAX_DETAIL:
            raise ValidationError("detail", f"at most {MAX_DETAIL} characters")
        if self.at < 0 or self.log_from < 0:
            raise ValidationError("at", "times and indexes are >= 0")
        if not 0 <= self.transfer_done <= self.transfer_total:
            raise ValidationError("transfer_done", "0 <= transfer_done <= transfer_total")
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
