"""Vectors for spec/jobflow.md: the messages of an agreed job (tags 98-100).

Operations:

* ``jobflow.open``: open ``envelope_hex`` as one of JobWatch, JobUpdate or
  JobCancel, optionally bound to the expected ``signer`` (peer ID); expected:
  the message type and its fields in JSON form, or the reject reason (and the
  ``field`` of an ``invalid_field``).
* ``jobflow.watch``: the submitter's side of one watch stream.  It watches
  ``agreement_id_hex`` holding ``log_lines`` lines and reads the provider's
  answers ``frames`` (envelopes, in order) from ``provider``; expected: the new
  ``lines``, the last ``phase``, the ``log_lines`` now held and the
  ``result_digest_hex`` of the Result that ended the stream (or null), or the
  reject reason and the index of the refused ``frame``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cbor
from protocol.envelope import public_key_proto_of, seal, signing_bytes
from protocol.identity import peer_id_from_proto_key
from protocol.jobflow import JobCancel, JobPhase, JobUpdate, JobWatch, unknown_agreement
from protocol.result import Metering, Outcome, OutputBlob, Result
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
    vectors: list[dict[str, Any]] = [
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
    long_detail = dict(cancel.to_wire(), detail="x" * 1025)
    vectors += [
        vector("watch-negative-log-lines", "log_lines -1.", op,
               {"envelope_hex": by_hand(submitter, JobWatch, dict(watch.to_wire(), log_lines=-1)).hex()},
               reject("invalid_field", field="log_lines")),
        vector("update-too-many-lines", "257 log lines in one update.", op,
               {"envelope_hex": by_hand(provider, JobUpdate, dict(update.to_wire(), lines=["x"] * 257)).hex()},
               reject("invalid_field", field="lines")),
        vector("update-long-line", "A log line of 4097 characters.", op,
               {"envelope_hex": by_hand(provider, JobUpdate, dict(update.to_wire(), lines=["x" * 4097])).hex()},
               reject("invalid_field", field="lines")),
        vector("cancel-long-detail", "A cancel detail of 1025 characters.", op,
               {"envelope_hex": by_hand(submitter, JobCancel, long_detail).hex()},
               reject("invalid_field", field="detail")),
        vector("unknown-agreement-answer", "The provider's answer to a watch of an agreement it does not hold.", op,
               {"envelope_hex": seal(unknown_agreement(AID, NOW), provider).raw.hex(), "signer": pid},
               accept(type="JobUpdate", **fields(unknown_agreement(AID, NOW)))),
    ]
    vectors += _watch_vectors(provider, submitter, mallory, pid, sid)
    return vector_file("jobflow", "jobflow.md", 3, vectors)


def _result(pid: str, sid: str, outcome: Outcome, detail: str = "") -> Result:
    log = OutputBlob(path="", digest="sha256:" + "ab" * 32, size=12, chunk_size=1 << 20,
                     chunk_root="sha256:" + "cd" * 32)
    return Result(agreement_id=AID, job_digest=bytes(range(32)), submitter=sid, provider=pid, outcome=outcome,
                  exit_code=0 if outcome is Outcome.EXITED else None, oom=False, timed_out=False, detail=detail,
                  outputs=(), log=log, metering=Metering(wall_ms=1000, cpu_ms=900, peak_memory_bytes=1 << 20,
                                                          bytes_in=1 << 20, bytes_out=12, gpus=()),
                  started_at=NOW + 10, finished_at=NOW + 11)


def _watch_vectors(provider: Ed25519PrivateKey, submitter: Ed25519PrivateKey, mallory: Ed25519PrivateKey,
                   pid: str, sid: str) -> list[dict[str, Any]]:
    def upd(phase: JobPhase, at: int, log_from: int = 0, lines: tuple[str, ...] = (), detail: str = "",
            aid: bytes = AID) -> JobUpdate:
        return JobUpdate(agreement_id=aid, phase=phase, at=at, detail=detail, transfer_done=1 << 20,
                         transfer_total=1 << 20, log_from=log_from, lines=lines)

    def env(msg: Message, key: Ed25519PrivateKey = provider) -> bytes:
        return seal(msg, key).raw

    def wv(name: str, desc: str, log_lines: int, frames: list[bytes], exp: dict[str, Any]) -> dict[str, Any]:
        return vector(f"watch-{name}", desc, "jobflow.watch",
                      {"agreement_id_hex": AID.hex(), "provider": pid, "log_lines": log_lines,
                       "frames": [f.hex() for f in frames]}, exp)

    ok = _result(pid, sid, Outcome.EXITED)
    failed = _result(pid, sid, Outcome.FAILED, "image refused: manifest digest mismatch")
    ok_env, failed_env = env(ok), env(failed)
    return [
        wv("follow", "transferring, running with two lines, one more line, a heartbeat, finished, then the Result",
           0, [env(upd(JobPhase.TRANSFERRING, NOW + 1)),
               env(upd(JobPhase.RUNNING, NOW + 10, 0, ("epoch 1", "epoch 2"))),
               env(upd(JobPhase.RUNNING, NOW + 11, 2, ("epoch 3",))),
               env(upd(JobPhase.RUNNING, NOW + 16, 3)),
               env(upd(JobPhase.FINISHED, NOW + 17, 3)), ok_env],
           accept(lines=["epoch 1", "epoch 2", "epoch 3"], phase="finished", log_lines=3,
                  result_digest_hex=hashlib.sha256(ok_env).hexdigest())),
        wv("reconnect", "a watch after a reconnect holding 2 lines; the provider resends from line 1", 2,
           [env(upd(JobPhase.RUNNING, NOW + 20, 1, ("epoch 2", "epoch 3", "epoch 4")))],
           accept(lines=["epoch 3", "epoch 4"], phase="running", log_lines=4, result_digest_hex=None)),
        wv("gap", "an update starting beyond the lines held: its lines are not kept", 1,
           [env(upd(JobPhase.RUNNING, NOW + 20, 3, ("epoch 4",)))],
           accept(lines=[], phase="running", log_lines=1, result_digest_hex=None)),
        wv("failed-run", "the run failed on the provider: a failed update, then the failed Result", 0,
           [env(upd(JobPhase.FAILED, NOW + 5, detail=failed.detail)), failed_env],
           accept(lines=[], phase="failed", log_lines=0, result_digest_hex=hashlib.sha256(failed_env).hexdigest())),
        wv("unknown-agreement", "the provider does not hold the agreement", 0,
           [env(unknown_agreement(AID, NOW))], reject("unknown_agreement", frame=0)),
        wv("other-agreement", "the second update names another agreement", 0,
           [env(upd(JobPhase.RUNNING, NOW + 1)), env(upd(JobPhase.RUNNING, NOW + 2, aid=bytes(16)))],
           reject("binding_mismatch", frame=1)),
        wv("wrong-signer", "an update signed by mallory", 0, [env(upd(JobPhase.RUNNING, NOW + 1), mallory)],
           reject("wrong_signer", frame=0)),
        wv("unexpected-type", "a JobCancel where an update or the Result is due", 0,
           [env(JobCancel(agreement_id=AID, detail=""))], reject("unexpected_type", frame=0)),
        wv("result-of-submitter", "a Result signed by the submitter, not the provider", 0,
           [env(upd(JobPhase.FINISHED, NOW + 17)), env(ok, submitter)], reject("wrong_signer", frame=1)),
    ]
