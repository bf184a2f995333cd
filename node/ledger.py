"""Hash-chained ledger of co-signed receipts, in SQLite (spec/execution.md, "Ledger").

Both parties of a job keep the same co-signed receipt.  Each entry carries the
hash of the previous one::

    entry_hash = sha256(cbor({"seq": n, "prev": prev_hash, "recorded_at": t,
                              "receipt": receipt_envelope_bytes}))

with ``prev`` of the first entry 32 zero bytes.  Editing any entry changes its
hash and breaks the link from the next one; removing an entry leaves a gap in
``seq`` and a broken link.  Removing *the last* entries cannot be seen from the
chain alone, so the head hash and count are kept in a ``meta`` row updated in
the same transaction, and an exported ledger states them too: a settlement
party that remembers an earlier head can check that the new export extends it.

The receipts themselves are verified on append and again on verify (both
signatures and their binding), so an entry cannot be forged by someone who
recomputes the chain.  An export's per-entry ``summary`` (plain JSON for
settlement scripts) is outside the chain; verifying an export recomputes each
summary from its receipt and reports any difference.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import cbor
from protocol.errors import ProtocolError
from protocol.result import VerifiedReceipt, verify_receipt

__all__ = ["Ledger", "LedgerEntry", "LedgerReport", "LedgerError", "verify_export", "entry_hash", "GENESIS"]

GENESIS = bytes(32)
EXPORT_FORMAT = "cpn-ledger"
EXPORT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY,
    prev_hash BLOB NOT NULL,
    entry_hash BLOB NOT NULL UNIQUE,
    recorded_at INTEGER NOT NULL,
    receipt_digest BLOB NOT NULL UNIQUE,
    receipt BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


class LedgerError(Exception):
    """A receipt was refused for the ledger (``reason`` from the receipt check)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def entry_hash(seq: int, prev: bytes, recorded_at: int, receipt: bytes) -> bytes:
    return hashlib.sha256(
        cbor.encode({"seq": seq, "prev": prev, "recorded_at": recorded_at, "receipt": receipt})
    ).digest()


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    seq: int
    prev_hash: bytes
    entry_hash: bytes
    recorded_at: int
    receipt: bytes

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "seq": self.seq,
            "prev_hash_hex": self.prev_hash.hex(),
            "entry_hash_hex": self.entry_hash.hex(),
            "recorded_at": self.recorded_at,
            "receipt_hex": self.receipt.hex(),
        }
        try:
            doc["summary"] = _summary(verify_receipt(self.receipt))
        except ProtocolError as exc:
            doc["summary"] = {"invalid": exc.reason}
        return doc


@dataclass
class LedgerReport:
    """Outcome of a verification: ``ok`` and, if not, every problem found."""

    count: int = 0
    head: bytes = GENESIS
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "count": self.count, "head_hex": self.head.hex(), "problems": list(self.problems)}


def _summary(v: VerifiedReceipt) -> dict[str, Any]:
    """Settlement-relevant fields in plain JSON (the receipt bytes remain the truth)."""
    r = v.result.message
    m = r.metering
    return {
        "agreement_id_hex": r.agreement_id.hex(),
        "job_digest_hex": r.job_digest.hex(),
        "provider": r.provider,
        "submitter": r.submitter,
        "accepted": v.receipt.message.accepted,
        "outcome": r.outcome.value,
        "exit_code": r.exit_code,
        "wall_ms": m.wall_ms,
        "cpu_ms": m.cpu_ms,
        "peak_memory_bytes": m.peak_memory_bytes,
        "bytes_in": m.bytes_in,
        "bytes_out": m.bytes_out,
        "gpu_ms": {g.uuid: g.gpu_ms for g in m.gpus},
    }


def _verify_chain(entries: Iterable[LedgerEntry]) -> LedgerReport:
    report = LedgerReport()
    prev = GENESIS
    expected_seq = 1
    for e in entries:
        if e.seq != expected_seq:
            report.problems.append(f"entry {e.seq}: expected seq {expected_seq} (entry removed or reordered)")
        if e.prev_hash != prev:
            report.problems.append(f"entry {e.seq}: prev_hash does not match the previous entry")
        if entry_hash(e.seq, e.prev_hash, e.recorded_at, e.receipt) != e.entry_hash:
            report.problems.append(f"entry {e.seq}: contents do not match its hash (edited)")
        try:
            verify_receipt(e.receipt)
        except ProtocolError as exc:
            report.problems.append(f"entry {e.seq}: receipt invalid ({exc.reason})")
        prev = e.entry_hash
        expected_seq = e.seq + 1
        report.count += 1
    report.head = prev
    return report


class Ledger:
    """The node's receipt ledger (one SQLite file, WAL mode)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)

    @classmethod
    def in_data_dir(cls, data_dir: Path) -> Ledger:
        return cls(data_dir / "ledger.sqlite")

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def entries(self) -> Iterator[LedgerEntry]:
        rows = self._db.execute(
            "SELECT seq, prev_hash, entry_hash, recorded_at, receipt FROM entries ORDER BY seq"
        )
        for seq, prev, h, at, receipt in rows:
            yield LedgerEntry(seq, bytes(prev), bytes(h), at, bytes(receipt))

    def _meta(self, key: str) -> bytes | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def head(self) -> tuple[int, bytes]:
        count = self._meta("count")
        head = self._meta("head")
        return (int.from_bytes(count, "big") if count else 0, head or GENESIS)

    def append(self, receipt: bytes, *, now: int) -> LedgerEntry:
        """Verify ``receipt`` and chain it.  Appending the same receipt twice
        returns the existing entry (both sides may record it on retries)."""
        try:
            verify_receipt(receipt)
        except ProtocolError as exc:
            raise LedgerError(exc.reason, exc.detail) from None
        digest = hashlib.sha256(receipt).digest()
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute(
                "SELECT seq, prev_hash, entry_hash, recorded_at, receipt FROM entries WHERE receipt_digest = ?",
                (digest,),
            ).fetchone()
            if row is not None:
                self._db.execute("COMMIT")
                return LedgerEntry(row[0], bytes(row[1]), bytes(row[2]), row[3], bytes(row[4]))
            count, prev = self.head()
            seq = count + 1
            h = entry_hash(seq, prev, now, receipt)
            self._db.execute(
                "INSERT INTO entries (seq, prev_hash, entry_hash, recorded_at, receipt_digest, receipt)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (seq, prev, h, now, digest, receipt),
            )
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('head', ?)", (h,))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('count', ?)", (seq.to_bytes(8, "big"),))
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return LedgerEntry(seq, prev, h, now, receipt)

    def verify(self) -> LedgerReport:
        """Recompute the chain, re-verify every receipt, compare with the stored head."""
        report = _verify_chain(self.entries())
        count, head = self.head()
        if (count, head) != (report.count, report.head):
            report.problems.append(
                f"chain ends at entry {report.count} but the ledger head records {count} entries"
                " (entries removed from the end, or the head was edited)"
            )
        return report

    def export(self) -> dict[str, Any]:
        """JSON for settlement: every entry with its receipt bytes and a summary."""
        count, head = self.head()
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "count": count,
            "head_hex": head.hex(),
            "entries": [e.to_json() for e in self.entries()],
        }


def verify_export(doc: Any) -> LedgerReport:
    """Verify an exported ledger (as produced by :meth:`Ledger.export`)."""
    report = LedgerReport()
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT or doc.get("version") != EXPORT_VERSION:
        report.problems.append("not a cpn-ledger export of version 1")
        return report
    try:
        entries = [
            LedgerEntry(
                int(e["seq"]),
                bytes.fromhex(e["prev_hash_hex"]),
                bytes.fromhex(e["entry_hash_hex"]),
                int(e["recorded_at"]),
                bytes.fromhex(e["receipt_hex"]),
            )
            for e in doc["entries"]
        ]
        count, head = int(doc["count"]), bytes.fromhex(doc["head_hex"])
    except (KeyError, TypeError, ValueError) as exc:
        report.problems.append(f"malformed export: {exc}")
        return report
    report = _verify_chain(entries)
    if (count, head) != (report.count, report.head):
        report.problems.append("export's count/head do not match its last entry (entries removed)")
    for raw, entry in zip(doc["entries"], entries, strict=True):
        problem = _summary_problem(raw, entry)
        if problem:
            report.problems.append(f"entry {entry.seq}: {problem}")
    return report


def _summary_problem(raw: dict[str, Any], entry: LedgerEntry) -> str | None:
    """Whether an exported entry's ``summary`` says what its receipt says.

    The summary is a convenience copy for settlement scripts, outside the
    hash chain; a reader may well trust it, so it is checked field by field
    against the receipt it was made from (an edited price or outcome there is
    as much a forgery as an edited receipt)."""
    if "summary" not in raw:
        return None  # an export may leave summaries out; the receipts are the truth
    expected = entry.to_json()["summary"]
    got = raw["summary"]
    if got == expected:
        return None
    if not isinstance(got, dict):
        return "summary is not an object (edited)"
    changed = sorted(k for k in set(got) | set(expected) if got.get(k) != expected.get(k))
    return f"summary does not match its receipt ({', '.join(changed)} edited)"
