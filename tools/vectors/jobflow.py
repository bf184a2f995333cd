"""Vectors for spec/jobflow.md: the messages of an agreed job (tags 98-100).

Operation ``jobflow.open``: open ``envelope_hex`` as one of JobWatch, JobUpdate
or JobCancel, optionally bound to the expected ``signer`` (peer ID); expected:
the message type and its fields in JSON form, or the reject reason.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cbor
from protocol.envelope import public_key_proto_of, seal, signing_bytes
from protocol.identity import peer_id_from_proto_key
from protocol.jobflow import JobCancel, JobPhase, JobUpdate, JobWatch
from protocol.wire import Message

from . import NOW, accept, key_from_seed, reject, seed, vector, vector_file

AID = bytes(range(16))


def peer(key: Ed25519PrivateKey) -> str:
    return peer_id_from_proto_key(public_key_proto_of(key))


def fields(msg: Message) -> dict[str, Any]:
    """A message's fields as JSON (bytes as hex, enums as their value, tuples as lists)."""
    out: dict[str, Any] = {}
    for name, value in msg.to_wire().items():
        out[name + ("_hex" if isinstance(value, bytes) else "")] = value.hex() if isinstance(value, bytes) else value
    return out


def by_hand(key: Ed25519PrivateKey, cls: type[Message], wire: dict[str, Any]) -> bytes:
    """An envelope over an arbitrary payload (to break a rule seal would refuse)."""
    payload = cbor.encode(wire)
    return cbor.encode({"key": public_key_proto_of(key), "payload": payload,
                        "sig": key.sign(signing_bytes(cls.DOMAIN, cls.TYPE, payload)), "type": cls.TYPE})


def generate() -> dict[str, Any]:
    p_seed, s_seed, m_seed = seed("jobflow/provider"), seed("jobflow/submitter"), seed("jobflow/mallory")
    provider, submitter, mallory = key_from_seed(p_seed), key_from_seed(s_seed), key_from_seed(m_seed)
    pid, sid = peer(provider), peer(submitter)
    watch = JobWatch(agreement_id=AID, log_lines=3)
    update = JobUpdate(agreement_id=AID, phase=JobPhase.RUNNING, at=NOW, detail="", transfer_done=1048576,
                       transfer_total=1048576, log_from=3, lines=("hello from CPN", "step 2"))
    cancel = JobCancel(agreement_id=AID, detail="cancelled by the user")
    short_aid = dict(watch.to_wire(), agreement_id=bytes(8))
    overdone = dict(update.to_wire(), transfer_done=2 * 1048576)
    bad_phase = dict(update.to_wire(), phase="exploded")
    op = "jobflow.open"
    seeds = {"provider_seed_hex": p_seed.hex(), "submitter_seed_hex": s_seed.hex(), "mallory_seed_hex": m_seed.hex()}
    vectors = [
        vector("watch-valid", "The submitter asks to follow agreement 00..0f, holding 3 log lines.", op,
               {"envelope_hex": seal(watch, submitter).raw.hex(), "signer": sid, **seeds},
               accept(type="JobWatch", **fields(watch))),
        vector("update-valid", "The provider reports: running, all blobs here, two new log lines from index 3.", op,
               {"envelope_hex": seal(update, provider).raw.hex(), "signer": pid},
               accept(type="JobUpdate", **fields(update))),
        vector("cancel-valid", "The submitter cancels the agreed job.", op,
               {"envelope_hex": seal(cancel, submitter).raw.hex(), "signer": sid},
               accept(type="JobCancel", **fields(cancel))),
        vector("update-wrong-signer", "An update signed by mallory, not by the agreement's provider.", op,
               {"envelope_hex": seal(update, mallory).raw.hex(), "signer": pid}, reject("wrong_signer")),
        vector("watch-short-agreement-id", "The agreement ID is 8 bytes, not 16.", op,
               {"envelope_hex": by_hand(submitter, JobWatch, short_aid).hex()}, reject("invalid_field")),
        vector("update-transfer-done-above-total", "transfer_done exceeds transfer_total.", op,
               {"envelope_hex": by_hand(provider, JobUpdate, overdone).hex()}, reject("invalid_field")),
        vector("update-unknown-phase", "A phase outside the enumeration.", op,
               {"envelope_hex": by_hand(provider, JobUpdate, bad_phase).hex()}, reject("invalid_field")),
        vector("update-is-a-watch", "A JobWatch payload labelled as a JobUpdate (type confusion).", op,
               {"envelope_hex": by_hand(provider, JobUpdate, watch.to_wire()).hex()}, reject("unknown_field")),
    ]
    return vector_file("jobflow", "jobflow.md", 1, vectors)
