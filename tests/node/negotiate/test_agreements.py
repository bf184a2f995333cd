"""SQLite persistence: a restart neither loses nor duplicates an open agreement."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
from pathlib import Path

from node.negotiate.agreements import AgreementStore as Store
from protocol.negotiation import Phase
from protocol.negotiation_state import Negotiation, State

ROOT = Path(__file__).resolve().parents[3]
if "negotiation_vectors" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("negotiation_vectors", ROOT / "tools/vectors/negotiation.py")
    assert _spec and _spec.loader
    _mod = importlib.util.module_from_spec(_spec)
    sys.modules["negotiation_vectors"] = _mod
    _spec.loader.exec_module(_mod)
V = sys.modules["negotiation_vectors"]


def agreed_pair() -> tuple[Negotiation, Negotiation]:
    sub, prov = V.pair()
    t = V.T0
    V.deliver(sub.send_offer(V.job_envelope(V.key_of(V.SUBMITTER_SEED)), expires_at=t + 60, now=t), prov, t)
    V.deliver(prov.send_quote(price=5, estimated_start=t, queue_position=0, reservation_expires_at=t + 30,
                              gpu_models=("h100",), now=t), sub, t)
    V.deliver(sub.send_accept(now=t), prov, t)
    V.deliver(prov.send_agreement(now=t), sub, t)
    return sub, prov


def test_restart_with_an_open_agreement(tmp_path: Path) -> None:
    sub, prov = agreed_pair()
    jid = prov.negotiation_id.hex()  # type: ignore[union-attr]
    with Store.open(tmp_path) as store:
        store.save(jid, "provider", peer=prov.submitter, state="agreed", now=1.0, record=prov.to_record(),
                   extra={"gpu_uuids": ["GPU-a"]})
        store.save(jid, "submitter", peer=sub.provider, state="agreed", now=1.0, record=sub.to_record())
        store.add_event(jid, "provider", kind="note", at=1.0)
    # "restart": a new connection to the same file
    with Store.open(tmp_path) as store:
        open_jobs = store.open_jobs("provider")
        assert [r.id for r in open_jobs] == [jid]
        row = open_jobs[0]
        assert row.extra == {"gpu_uuids": ["GPU-a"]} and row.state == "agreed"
        assert row.record is not None
        prov2 = Negotiation.from_record(row.record, key=V.key_of(V.PROVIDER_SEED), replay_cache=store)
        assert prov2.state is State.AGREED and prov2.terms_digest == prov.terms_digest
        # saving it again (as a resumed service would) updates, never duplicates
        store.save(jid, "provider", peer=prov.submitter, state="running", now=2.0, record=prov2.to_record())
        assert len(store.get(jid)) == 2  # one per role
        assert [r.state for r in store.get(jid, "provider")] == ["running"]
        assert store.get(jid, "provider")[0].extra == {"gpu_uuids": ["GPU-a"]}  # kept
        assert store.get(jid[:8], "provider")[0].id == jid  # prefix lookup
        frame = prov2.send_status(Phase.RUNNING, at=V.T0, now=V.T0)
        assert store.add_event(jid, "provider", kind="status", at=2.0, data=frame) == 1
        assert [e.kind for e in store.events(jid, "provider")] == ["note", "status"]
        store.save(jid, "provider", peer=prov.submitter, state="finished", now=3.0)
        assert store.open_jobs("provider") == []
    db = sqlite3.connect(tmp_path / "jobs.sqlite")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 2


def test_replay_cache_survives_restart(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        assert store.remember(b"k" * 32, expires_at=100, now=10)
        assert not store.remember(b"k" * 32, expires_at=100, now=11)
    with Store.open(tmp_path) as store:
        assert not store.remember(b"k" * 32, expires_at=100, now=50)
        assert store.remember(b"k" * 32, expires_at=300, now=101)  # forgotten only after expiry


def test_list_orders_by_update(tmp_path: Path) -> None:
    with Store.open(tmp_path) as store:
        store.save("aa" * 16, "submitter", peer="p", state="refused", now=1.0, detail="busy")
        store.save("bb" * 16, "submitter", peer="p", state="agreed", now=2.0)
        assert [r.id for r in store.recent()] == ["bb" * 16, "aa" * 16]
        assert store.recent()[1].to_json()["detail"] == "busy"
