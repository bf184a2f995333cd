"""Persistent negotiations, agreements and jobs (SQLite, WAL) for both roles.

One row per (negotiation ID, role): a node that is both submitter and provider
of the same job (two daemons on one box share nothing, but tests may) keeps
two rows.  The row holds the state, the other peer, timestamps, the CBOR
snapshot of the negotiation machine (``Negotiation.to_record()``: the signed
offer, quote, accept and co-signed agreement) and a JSON ``extra`` map for
node-side facts (reserved GPU UUIDs, output paths...).  Events (status
messages, local notes) go to their own table in arrival order.

Why SQLite in WAL mode: a crash or restart must neither lose an agreement nor
run it twice.  Writes are single statements in autocommit transactions; the
primary key makes a repeated insert an update, never a duplicate.  The same
file keeps the offer replay cache, so a replayed offer is refused even after
a restart (it implements :class:`protocol.negotiation_state.ReplayCache`).

Extending: later phases add columns or tables by appending a statement to
:data:`MIGRATIONS` (applied in order, tracked by ``PRAGMA user_version``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol import cbor

__all__ = ["AgreementStore", "JobRow", "EventRow", "MIGRATIONS", "DB_FILE", "OPEN_STATES"]

DB_FILE = "jobs.sqlite"

#: States in which a job still holds (or may hold) capacity or expects messages.
OPEN_STATES = ("offered", "quoted", "accepted", "agreed", "transferring", "queued", "running")

#: Schema changes, applied in order once each.  Append only; never edit a shipped entry.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id TEXT NOT NULL,            -- negotiation ID, hex (also the agreement ID)
        role TEXT NOT NULL,          -- 'submitter' | 'provider'
        peer TEXT NOT NULL,          -- the other party's peer ID
        state TEXT NOT NULL,
        created_at REAL NOT NULL,    -- unix seconds
        updated_at REAL NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        record BLOB,                 -- CBOR snapshot of the negotiation machine
        extra TEXT NOT NULL DEFAULT '{}',  -- JSON: node-side facts
        PRIMARY KEY (id, role)
    );
    CREATE INDEX jobs_updated ON jobs (updated_at);
    CREATE TABLE events (
        job_id TEXT NOT NULL,
        role TEXT NOT NULL,
        n INTEGER NOT NULL,          -- order of arrival per job and role
        at REAL NOT NULL,
        kind TEXT NOT NULL,          -- 'status', 'refusal', 'note', ...
        data BLOB,                   -- raw signed envelope or CBOR
        PRIMARY KEY (job_id, role, n)
    );
    CREATE TABLE replay (
        key BLOB PRIMARY KEY,
        expires_at INTEGER NOT NULL
    );
    """,
)


@dataclass(frozen=True, slots=True)
class JobRow:
    id: str
    role: str
    peer: str
    state: str
    created_at: float
    updated_at: float
    detail: str
    record: dict[str, Any] | None
    extra: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON form for the API (the record's bytes are left out)."""
        return {
            "id": self.id,
            "role": self.role,
            "peer": self.peer,
            "state": self.state,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "detail": self.detail,
            "extra": self.extra,
        }


@dataclass(frozen=True, slots=True)
class EventRow:
    n: int
    at: float
    kind: str
    data: bytes | None


class AgreementStore:
    """The jobs database.  Cheap synchronous calls (one statement each)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._migrate()

    @classmethod
    def open(cls, data_dir: Path) -> AgreementStore:
        return cls(Path(data_dir) / DB_FILE)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> AgreementStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
            self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={i}; COMMIT;")

    # ---- jobs

    def save(
        self,
        job_id: str,
        role: str,
        *,
        peer: str,
        state: str,
        now: float,
        record: Mapping[str, Any] | None = None,
        detail: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Insert or update one job.  ``None`` arguments keep the stored value."""
        blob = cbor.encode(dict(record)) if record is not None else None
        extra_json = json.dumps(dict(extra), sort_keys=True) if extra is not None else None
        self._db.execute(
            """
            INSERT INTO jobs (id, role, peer, state, created_at, updated_at, detail, record, extra)
            VALUES (?, ?, ?, ?, ?, ?, COALESCE(?, ''), ?, COALESCE(?, '{}'))
            ON CONFLICT (id, role) DO UPDATE SET
                state = excluded.state,
                updated_at = excluded.updated_at,
                detail = COALESCE(?, jobs.detail),
                record = COALESCE(excluded.record, jobs.record),
                extra = COALESCE(?, jobs.extra)
            """,
            (job_id, role, peer, state, now, now, detail, blob, extra_json, detail, extra_json),
        )

    def get(self, job_id: str, role: str | None = None) -> list[JobRow]:
        """Rows whose ID is ``job_id`` or starts with it (hex; several IDs when ambiguous)."""
        prefix = job_id.lower()
        if not prefix or len(prefix) > 64 or any(c not in "0123456789abcdef" for c in prefix):
            return []
        sql = "SELECT * FROM jobs WHERE id >= ? AND id < ?" + (" AND role = ?" if role else "")
        upper = prefix + "g"  # every hex ID starting with the prefix sorts before this
        args: tuple[Any, ...] = (prefix, upper, role) if role else (prefix, upper)
        rows = [self._row(r) for r in self._db.execute(sql + " ORDER BY id, role", args)]
        exact = [r for r in rows if r.id == prefix]
        return exact or rows

    def recent(self, *, role: str | None = None, limit: int = 100) -> list[JobRow]:
        """Rows newest first (optionally of one role)."""
        sql = "SELECT * FROM jobs" + (" WHERE role = ?" if role else "") + " ORDER BY updated_at DESC LIMIT ?"
        args: tuple[Any, ...] = (role, limit) if role else (limit,)
        return [self._row(r) for r in self._db.execute(sql, args)]

    def open_jobs(self, role: str) -> list[JobRow]:
        """Jobs of ``role`` in a non-terminal state (to resume after a restart)."""
        marks = ",".join("?" for _ in OPEN_STATES)
        cur = self._db.execute(
            f"SELECT * FROM jobs WHERE role = ? AND state IN ({marks}) ORDER BY created_at", (role, *OPEN_STATES)
        )
        return [self._row(r) for r in cur]

    def _row(self, r: tuple[Any, ...]) -> JobRow:
        jid, role, peer, state, created, updated, detail, record, extra = r
        return JobRow(
            id=jid,
            role=role,
            peer=peer,
            state=state,
            created_at=created,
            updated_at=updated,
            detail=detail,
            record=cbor.decode(record, cbor.Limits(max_size=8 << 20)) if record is not None else None,
            extra=json.loads(extra),
        )

    # ---- events

    def add_event(self, job_id: str, role: str, *, kind: str, at: float, data: bytes | None = None) -> int:
        cur = self._db.execute(
            """
            INSERT INTO events (job_id, role, n, at, kind, data)
            VALUES (?, ?, (SELECT COALESCE(MAX(n), -1) + 1 FROM events WHERE job_id = ? AND role = ?), ?, ?, ?)
            RETURNING n
            """,
            (job_id, role, job_id, role, at, kind, data),
        )
        (n,) = cur.fetchone()
        return int(n)

    def events(self, job_id: str, role: str) -> Iterator[EventRow]:
        cur = self._db.execute(
            "SELECT n, at, kind, data FROM events WHERE job_id = ? AND role = ? ORDER BY n", (job_id, role)
        )
        for n, at, kind, data in cur:
            yield EventRow(n=n, at=at, kind=kind, data=data)

    # ---- replay cache (protocol.negotiation_state.ReplayCache)

    def remember(self, key: bytes, expires_at: int, now: int) -> bool:
        """True if ``key`` is new (now remembered until ``expires_at``), False if replayed."""
        self._db.execute("DELETE FROM replay WHERE expires_at < ?", (now,))
        cur = self._db.execute("INSERT OR IGNORE INTO replay (key, expires_at) VALUES (?, ?)", (key, expires_at))
        return cur.rowcount == 1
