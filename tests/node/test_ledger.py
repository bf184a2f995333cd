"""node/ledger.py: hash-chained receipts in SQLite; edits and removals are detected."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from vectors.execution import sample_result

from node.cli import main as cli_main
from node.ledger import Ledger, LedgerError, verify_export
from protocol.envelope import public_key_proto_of, seal
from protocol.identity import peer_id_from_proto_key
from protocol.result import countersign

PROVIDER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SUBMITTER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


def receipt(n: int) -> bytes:
    sid = peer_id_from_proto_key(public_key_proto_of(SUBMITTER))
    r = seal(sample_result(PROVIDER, sid, agreement_id=n.to_bytes(16, "big")), PROVIDER)
    return countersign(r, SUBMITTER, now=1000 + n).raw


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    with Ledger.in_data_dir(tmp_path) as led:
        for n in range(1, 5):
            led.append(receipt(n), now=2000 + n)
        yield led


def test_receipts_chain_and_verify(ledger: Ledger) -> None:
    report = ledger.verify()
    assert report.ok, report.problems
    assert report.count == 4
    entries = list(ledger.entries())
    assert entries[0].prev_hash == bytes(32)
    assert [e.prev_hash for e in entries[1:]] == [e.entry_hash for e in entries[:-1]]
    # appending the same receipt again is idempotent
    again = ledger.append(receipt(2), now=9999)
    assert again.seq == 2 and ledger.verify().count == 4


def test_invalid_receipt_refused(ledger: Ledger) -> None:
    raw = bytearray(receipt(9))
    raw[-1] ^= 1
    with pytest.raises(LedgerError):
        ledger.append(bytes(raw), now=1)
    assert ledger.verify().count == 4


def _sql(path: Path, statement: str, *args: object) -> None:
    db = sqlite3.connect(path)
    db.execute(statement, args)
    db.commit()
    db.close()


def test_edited_entry_detected(ledger: Ledger) -> None:
    _sql(ledger.path, "UPDATE entries SET recorded_at = recorded_at + 1 WHERE seq = 2")
    report = ledger.verify()
    assert not report.ok
    assert any("entry 2" in p and "edited" in p for p in report.problems)


def test_swapped_receipt_detected(ledger: Ledger) -> None:
    # a valid receipt of another job put in place of entry 3
    _sql(ledger.path, "UPDATE entries SET receipt = ? WHERE seq = 3", receipt(7))
    assert not ledger.verify().ok


def test_removed_middle_entry_detected(ledger: Ledger) -> None:
    _sql(ledger.path, "DELETE FROM entries WHERE seq = 2")
    problems = ledger.verify().problems
    assert any("removed" in p for p in problems)


def test_removed_last_entry_detected(ledger: Ledger) -> None:
    _sql(ledger.path, "DELETE FROM entries WHERE seq = 4")
    assert not ledger.verify().ok


def test_export_verifies_and_detects_tampering(ledger: Ledger) -> None:
    doc = ledger.export()
    assert verify_export(json.loads(json.dumps(doc))).ok
    assert doc["entries"][0]["summary"]["outcome"] == "exited"
    cut = dict(doc, entries=doc["entries"][:-1])
    assert not verify_export(cut).ok
    edited = json.loads(json.dumps(doc))
    edited["entries"][1]["recorded_at"] += 1
    assert not verify_export(edited).ok


def test_cli_export_and_verify(ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export.json"
    assert cli_main(["ledger", "export", "--data-dir", str(tmp_path), "-o", str(out)]) == 0
    assert json.loads(out.read_text())["count"] == 4
    assert cli_main(["ledger", "verify", "--data-dir", str(tmp_path)]) == 0
    assert cli_main(["ledger", "verify", str(out)]) == 0
    _sql(ledger.path, "UPDATE entries SET recorded_at = 0 WHERE seq = 1")
    assert cli_main(["ledger", "verify", "--data-dir", str(tmp_path)]) == 1
    assert "does NOT verify" in capsys.readouterr().err



def test_edited_export_summary_detected(ledger: Ledger) -> None:
    """The summary is outside the hash chain; an edit there used to verify as ok."""
    doc = json.loads(json.dumps(ledger.export()))
    doc["entries"][2]["summary"]["exit_code"] = 0 if doc["entries"][2]["summary"]["exit_code"] else 3
    doc["entries"][2]["summary"]["wall_ms"] += 1000
    report = verify_export(doc)
    assert report.problems == ["entry 3: summary does not match its receipt (exit_code, wall_ms edited)"]
    doc["entries"][2]["summary"] = "paid"
    assert verify_export(doc).problems == ["entry 3: summary is not an object (edited)"]
    del doc["entries"][2]["summary"]  # left out: the receipts are the truth, nothing to check
    assert verify_export(doc).ok


def test_cli_verify_json(ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "export.json"
    assert cli_main(["ledger", "export", "--data-dir", str(tmp_path), "-o", str(out)]) == 0
    assert cli_main(["--json", "ledger", "verify", "--data-dir", str(tmp_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["count"] == 4 and report["problems"] == []
    assert report["source"] == str(tmp_path / "ledger.sqlite") and len(report["head_hex"]) == 64
    doc = json.loads(out.read_text())
    doc["entries"][0]["summary"]["accepted"] = False
    out.write_text(json.dumps(doc))
    assert cli_main(["ledger", "verify", str(out), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["problems"] == ["entry 1: summary does not match its receipt (accepted edited)"]
