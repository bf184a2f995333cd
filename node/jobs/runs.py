"""A submitted job as the submitter keeps it: the run, its attempts, and their store.

A *run* is one job this node submitted, over all its *attempts*: each attempt
is one co-signed agreement with one provider.  Runs are persisted as JSON
rows in ``runs.sqlite`` (WAL) after every change, so a restarted submitter
resumes them (:class:`node.jobs.runner.JobRunner`).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from protocol.envelope import open_envelope
from protocol.jobspec import JobSpec
from protocol.result import Receipt, Result

__all__ = [
    "Run",
    "RunState",
    "Attempt",
    "AttemptState",
    "Phase",
    "PhaseSpan",
    "RunStore",
    "FINAL_STATES",
    "SubmitError",
    "SubmitRequest",
]


class SubmitError(Exception):
    """A submission was refused before it became a run; ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class SubmitRequest:
    """A job to run end to end, as the local API received it (already type-checked)."""

    job: JobSpec  #: unsigned: this node signs it
    blob_paths: dict[str, str]  #: digest -> local file, for blobs not yet in the store
    results_dir: str  #: where ``<run id>/`` goes
    providers: int = 3  #: quotes asked for in parallel
    peers: tuple[str, ...] = ()  #: ask these (peer IDs or /p2p/ multiaddrs) instead of finding
    timeout: float = 5.0  #: seconds to find providers
    retries: int = 1  #: further providers after a failed attempt
    grace_s: float = 20.0  #: silence after which a provider is given up


class RunState(StrEnum):
    """Where a run is (spec/jobflow.md)."""

    NEGOTIATING = "negotiating"  #: finding providers, getting quotes
    AGREED = "agreed"  #: a co-signed agreement; the provider starts fetching
    TRANSFERRING = "transferring"  #: the provider pulls the image and inputs
    RUNNING = "running"  #: the container runs
    COLLECTING = "collecting"  #: fetching and verifying the outputs
    FINISHED = "finished"  #: outputs verified, receipt accepted
    FAILED = "failed"  #: no provider, or every attempt failed
    CANCELLED = "cancelled"  #: cancelled by the user
    DISPUTED = "disputed"  #: the result did not verify; the receipt says why


#: Run states after which nothing happens any more.
FINAL_STATES = frozenset({RunState.FINISHED, RunState.FAILED, RunState.CANCELLED, RunState.DISPUTED})


class AttemptState(StrEnum):
    ACTIVE = "active"  #: the agreement stands and is being driven
    DONE = "done"  #: result verified, receipt accepted
    FAILED = "failed"  #: the provider failed, vanished or lied
    CANCELLED = "cancelled"


@dataclass
class Attempt:
    """One agreement with one provider, within a run."""

    agreement_id: str  #: hex
    provider: str
    addrs: list[str]
    price: int
    state: AttemptState = AttemptState.ACTIVE
    detail: str = ""
    agreed_at: int = 0  #: unix seconds of the agreement: the attempt's deadline counts from it


class Phase(StrEnum):
    """The stages of a run as the submitter sees them (its timeline)."""

    FIND = "find"  #: looking providers up and verifying their adverts
    NEGOTIATE = "negotiate"  #: quotes, then the co-signed agreement
    TRANSFER_IN = "transfer_in"  #: the provider pulls the image and inputs
    QUEUE = "queue"  #: inputs complete on the provider, the container not started yet
    RUN = "run"  #: the container runs
    TRANSFER_OUT = "transfer_out"  #: fetching and verifying the outputs
    RECEIPT = "receipt"  #: countersigning, recording and delivering the receipt


#: The timeline phase a run state starts.
_PHASE_OF = {
    RunState.NEGOTIATING: Phase.NEGOTIATE,
    RunState.AGREED: Phase.TRANSFER_IN,
    RunState.TRANSFERRING: Phase.TRANSFER_IN,
    RunState.RUNNING: Phase.RUN,
    RunState.COLLECTING: Phase.TRANSFER_OUT,
}
#: A phase that continues another one rather than starting anew.
_SAME = {Phase.TRANSFER_IN: Phase.QUEUE, Phase.NEGOTIATE: Phase.FIND}


@dataclass
class PhaseSpan:
    """When one phase of one attempt started and ended (unix seconds, ms precision)."""

    phase: Phase
    started_at: float
    ended_at: float | None = None  #: None while it goes on
    attempt: int = 0  #: which attempt (0: the first; find and negotiate precede theirs)


@dataclass
class Run:
    """One submitted job from the submitter's side, over all its attempts."""

    id: str
    state: RunState
    job_hex: str  #: the signed JobSpec envelope
    blobs: list[str]
    results_dir: str
    retries: int  #: further attempts allowed after a failed one
    grace_s: float
    providers: int
    peers: list[str]
    find_timeout: float
    created_at: int
    detail: str = ""
    attempts: list[Attempt] = field(default_factory=list)
    quotes: list[dict[str, Any]] = field(default_factory=list)  #: every provider asked, last negotiation
    refusals: list[dict[str, Any]] = field(default_factory=list)  #: those that did not quote
    result_hex: str = ""
    receipt_hex: str = ""
    output_dir: str = ""
    problems: list[str] = field(default_factory=list)
    find_summary: str = ""  #: what the last find said (why nobody matched)
    settled: bool = False  #: the provider confirmed it recorded our last receipt
    phases: list[PhaseSpan] = field(default_factory=list)  #: the timeline, oldest first

    def enter(self, phase: Phase, at: float) -> None:
        """``phase`` starts now; the phase before it (if still open) ends now."""
        self.close_phase(at)
        self.phases.append(PhaseSpan(phase, round(at, 3), attempt=len(self.attempts)))

    def close_phase(self, at: float) -> None:
        if self.phases and self.phases[-1].ended_at is None:
            self.phases[-1].ended_at = round(at, 3)

    def follow_state(self, at: float) -> None:
        """Keep the timeline in step with :attr:`state` (called on every state change)."""
        phase = _PHASE_OF.get(self.state)
        if self.state is RunState.NEGOTIATING and not self.peers:
            phase = Phase.FIND  # the negotiation proper starts once candidates are known
        last = self.phases[-1] if self.phases else None
        if phase is not None and not (
            last is not None and last.ended_at is None and last.phase in (phase, _SAME.get(phase))
        ):
            self.enter(phase, at)
        if self.state in FINAL_STATES:
            self.close_phase(at)

    @property
    def current(self) -> Attempt | None:
        """The attempt being driven now, if any."""
        a = self.attempts[-1] if self.attempts else None
        return a if a is not None and a.state is AttemptState.ACTIVE else None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in names}
        fields["state"] = RunState(fields["state"])
        fields["attempts"] = [
            Attempt(**{**a, "state": AttemptState(a["state"])}) for a in fields.get("attempts", [])
        ]
        fields["phases"] = [PhaseSpan(**{**s, "phase": Phase(s["phase"])}) for s in fields.get("phases", [])]
        return cls(**fields)

    def summary(self) -> dict[str, Any]:
        """The run as the API shows it (the signed blobs decoded)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("job_hex", "result_hex", "receipt_hex")}
        if self.result_hex:
            r = open_envelope(bytes.fromhex(self.result_hex), expected=Result).message
            out["result"] = {
                "outcome": r.outcome.value, "exit_code": r.exit_code, "detail": r.detail,
                "provider": r.provider, "wall_ms": r.metering.wall_ms, "cpu_ms": r.metering.cpu_ms,
                "peak_memory_bytes": r.metering.peak_memory_bytes,
                "outputs": [{"path": o.path, "digest": o.digest, "size": o.size} for o in r.outputs],
            }
        if self.receipt_hex:
            rc = open_envelope(bytes.fromhex(self.receipt_hex), expected=Receipt)
            out["receipt"] = {"digest": rc.digest.hex(), "accepted": rc.message.accepted,
                              "detail": rc.message.detail, "result_digest": rc.message.result_digest.hex(),
                              "countersigned_by": rc.signer}
        return out


class RunStore:
    """``runs.sqlite`` in the data dir: one row per run, the run as JSON (WAL)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, state TEXT NOT NULL,"
            " created_at INTEGER NOT NULL, data TEXT NOT NULL)"
        )

    def close(self) -> None:
        self._db.close()

    def save(self, run: Run) -> None:
        self._db.execute(
            "INSERT INTO runs (id, state, created_at, data) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
            " SET state = excluded.state, data = excluded.data",
            (run.id, run.state.value, run.created_at, json.dumps(asdict(run))),
        )

    def all(self) -> list[Run]:
        """Every run, newest first."""
        rows = self._db.execute("SELECT data FROM runs ORDER BY created_at DESC, id")
        return [Run.from_json(json.loads(d)) for (d,) in rows]
