"""Vectors for spec/execution.md: results (tag 96) and co-signed receipts (tag 97).

Operations:

* ``result.open``: open ``envelope_hex`` as a provider's Result, optionally
  bound to ``provider`` (peer ID); expected: the outcome, exit code and
  metering, or the reject reason.
* ``receipt.verify``: verify ``receipt_hex`` on its own (both signatures and
  the digest binding), optionally bound to ``submitter``; expected: the
  result digest, the countersigner and the provider, or the reject reason.
* ``ledger.entry_hash``: ``entry_hash`` of a ledger entry from its fields.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cbor
from protocol.envelope import public_key_proto_of, seal, signing_bytes
from protocol.identity import peer_id_from_proto_key
from protocol.result import GpuUsage, Metering, Outcome, OutputBlob, Receipt, Result

from . import NOW, accept, key_from_seed, reject, seed, vector, vector_file

EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()


def peer(key: Ed25519PrivateKey) -> str:
    return peer_id_from_proto_key(public_key_proto_of(key))


def _blob(path: str, data: bytes) -> OutputBlob:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    root = "sha256:" + hashlib.sha256(hashlib.sha256(data).digest()).hexdigest() if data else EMPTY
    return OutputBlob(path=path, digest=digest, size=len(data), chunk_size=1 << 20, chunk_root=root)


def sample_result(provider: Ed25519PrivateKey, submitter: str, **changes: Any) -> Result:
    """A plausible result: exit 0, one output, one GPU."""
    fields: dict[str, Any] = dict(
        agreement_id=bytes(range(16)),
        job_digest=hashlib.sha256(b"cpn vector job").digest(),
        submitter=submitter,
        provider=peer(provider),
        outcome=Outcome.EXITED,
        exit_code=0,
        oom=False,
        timed_out=False,
        detail="",
        outputs=(_blob("out/result.txt", b"42\n"),),
        log=_blob("", b"hello\n"),
        metering=Metering(
            wall_ms=1520, cpu_ms=730, peak_memory_bytes=3_145_728, bytes_in=1_048_576,
            bytes_out=9, gpus=(GpuUsage(uuid="GPU-00000000-0000-0000-0000-000000000001", gpu_ms=1520),),
        ),
        started_at=NOW,
        finished_at=NOW + 2,
    )
    fields.update(changes)
    return Result(**fields)


def _receipt_by_hand(key: Ed25519PrivateKey, result_raw: bytes, digest: bytes) -> bytes:
    """A receipt whose digest may be wrong on purpose (seal would not check it)."""
    receipt = Receipt(result=result_raw, result_digest=digest, accepted=True, detail="", received_at=NOW + 3)
    payload = receipt.encode()
    return cbor.encode({
        "key": public_key_proto_of(key),
        "payload": payload,
        "sig": key.sign(signing_bytes(Receipt.DOMAIN, Receipt.TYPE, payload)),
        "type": Receipt.TYPE,
    })


def generate() -> dict[str, Any]:
    p_seed, s_seed, m_seed = seed("execution/provider"), seed("execution/submitter"), seed("execution/mallory")
    provider, submitter, mallory = key_from_seed(p_seed), key_from_seed(s_seed), key_from_seed(m_seed)
    pid, sid = peer(provider), peer(submitter)
    result = seal(sample_result(provider, sid), provider)
    oom = seal(sample_result(provider, sid, outcome=Outcome.OOM, exit_code=137, oom=True, outputs=()), provider)
    digest = hashlib.sha256(result.raw).digest()

    def receipt(key: Ed25519PrivateKey, raw: bytes, d: bytes) -> bytes:
        return _receipt_by_hand(key, raw, d)

    # A result whose payload was edited after signing (exit code 0 -> 1).
    tampered_payload = sample_result(provider, sid, exit_code=1).encode()
    tampered = cbor.encode({
        "key": public_key_proto_of(provider), "payload": tampered_payload,
        "sig": provider.sign(signing_bytes(Result.DOMAIN, Result.TYPE, result.message.encode())),
        "type": Result.TYPE,
    })
    # Signed by mallory but naming the provider.
    impostor = seal(sample_result(provider, sid), mallory)
    # Breaks a rule: oom flag without an oom outcome.
    bad_rule = sample_result(provider, sid).to_wire()
    bad_rule["oom"] = True
    bad_rule_payload = cbor.encode(bad_rule)
    bad_rule_env = cbor.encode({
        "key": public_key_proto_of(provider), "payload": bad_rule_payload,
        "sig": provider.sign(signing_bytes(Result.DOMAIN, Result.TYPE, bad_rule_payload)),
        "type": Result.TYPE,
    })

    def opened(msg: Result) -> dict[str, Any]:
        m = msg.metering
        return accept(
            signer=pid, result_outcome=msg.outcome.value, exit_code=msg.exit_code,
            wall_ms=m.wall_ms, cpu_ms=m.cpu_ms, peak_memory_bytes=m.peak_memory_bytes,
            gpu_ms={g.uuid: g.gpu_ms for g in m.gpus},
        )

    def verified() -> dict[str, Any]:
        return accept(result_digest_hex=digest.hex(), countersigner=sid, provider=pid)

    seeds = {"provider_seed_hex": p_seed.hex(), "submitter_seed_hex": s_seed.hex(), "mallory_seed_hex": m_seed.hex()}
    R, V = "result.open", "receipt.verify"
    vectors = [
        vector("result-valid", "A provider's signed result, exit 0 with one output and one GPU.", R,
               {"envelope_hex": result.raw.hex(), "provider": pid, **seeds}, opened(result.message)),
        vector("result-oom", "OOM outcome: exit 137, oom flag set, no outputs.", R,
               {"envelope_hex": oom.raw.hex(), "provider": pid}, opened(oom.message)),
        vector("result-tampered", "The payload was edited after signing (exit code 0 -> 1).", R,
               {"envelope_hex": tampered.hex(), "provider": pid}, reject("bad_signature")),
        vector("result-wrong-provider", "Signed by another key than the expected provider's.", R,
               {"envelope_hex": impostor.raw.hex(), "provider": pid}, reject("wrong_signer")),
        vector("result-impostor-unbound", "Signed by mallory while naming the provider (no expected provider given).", R,
               {"envelope_hex": impostor.raw.hex()}, reject("wrong_signer")),
        vector("result-oom-flag-without-oom-outcome", "oom is true but the outcome is exited.", R,
               {"envelope_hex": bad_rule_env.hex()}, reject("invalid_field", field="oom")),
        vector("receipt-valid", "Submitter countersigns the exact result envelope.", V,
               {"receipt_hex": receipt(submitter, result.raw, digest).hex(), "submitter": sid},
               verified()),
        vector("receipt-valid-unbound", "The same receipt checked by a third party (no expected peers).", V,
               {"receipt_hex": receipt(submitter, result.raw, digest).hex()}, verified()),
        vector("receipt-wrong-countersigner", "Mallory countersigns a result whose submitter is someone else.", V,
               {"receipt_hex": receipt(mallory, result.raw, digest).hex()}, reject("wrong_countersigner")),
        vector("receipt-wrong-countersigner-bound", "As above, checked against the expected submitter.", V,
               {"receipt_hex": receipt(mallory, result.raw, digest).hex(), "submitter": sid},
               reject("wrong_signer")),
        vector("receipt-digest-mismatch", "result_digest is not sha256 of the embedded result.", V,
               {"receipt_hex": receipt(submitter, result.raw, hashlib.sha256(b"other").digest()).hex()},
               reject("digest_mismatch")),
        vector("receipt-tampered-result", "Embedded result edited after signing, digest recomputed.", V,
               {"receipt_hex": receipt(submitter, tampered, hashlib.sha256(tampered).digest()).hex()},
               reject("bad_signature")),
        vector("receipt-impostor-result", "Embedded result signed by mallory in the provider's name.", V,
               {"receipt_hex": receipt(submitter, impostor.raw, hashlib.sha256(impostor.raw).digest()).hex()},
               reject("wrong_signer")),
        vector("receipt-is-a-result", "A Result envelope offered where a receipt is expected.", V,
               {"receipt_hex": result.raw.hex()}, reject("unexpected_type")),
    ]
    vectors += _rule_vectors(provider, pid, sid, result)
    receipt_raw = receipt(submitter, result.raw, digest)
    h1 = _entry_hash(1, bytes(32), NOW + 4, receipt_raw)
    vectors.append(vector(
        "ledger-entry-hash-first", "Hash of the first ledger entry (prev = 32 zero bytes).", "ledger.entry_hash",
        {"seq": 1, "prev_hex": bytes(32).hex(), "recorded_at": NOW + 4, "receipt_hex": receipt_raw.hex()},
        accept(entry_hash_hex=h1.hex()),
    ))
    vectors.append(vector(
        "ledger-entry-hash-second", "The next entry chains the first one's hash.", "ledger.entry_hash",
        {"seq": 2, "prev_hex": h1.hex(), "recorded_at": NOW + 5, "receipt_hex": receipt_raw.hex()},
        accept(entry_hash_hex=_entry_hash(2, h1, NOW + 5, receipt_raw).hex()),
    ))
    return vector_file("execution", "execution.md", 3, vectors)


def _signed_wire(key: Ed25519PrivateKey, wire: dict[str, Any]) -> bytes:
    payload = cbor.encode(wire)
    return cbor.encode({
        "key": public_key_proto_of(key), "payload": payload,
        "sig": key.sign(signing_bytes(Result.DOMAIN, Result.TYPE, payload)), "type": Result.TYPE,
    })


def _rule_vectors(provider: Ed25519PrivateKey, pid: str, sid: str, result: Any) -> list[dict[str, Any]]:
    """Each outcome, each rule of execution.md 1.1 with its field, each binding of 1.3."""
    R = "result.open"
    base = sample_result(provider, sid).to_wire()
    good = result.message

    def opened(msg: Result) -> dict[str, Any]:
        m = msg.metering
        return accept(signer=pid, result_outcome=msg.outcome.value, exit_code=msg.exit_code, wall_ms=m.wall_ms,
                      cpu_ms=m.cpu_ms, peak_memory_bytes=m.peak_memory_bytes, gpu_ms={g.uuid: g.gpu_ms for g in m.gpus})

    out = []
    for outcome, flags, code, detail in (
        (Outcome.EXITED, {}, 137, ""),
        (Outcome.TIMEOUT, {"timed_out": True}, None, ""),
        (Outcome.CANCELLED, {}, None, "cancelled by the submitter"),
        (Outcome.FAILED, {}, None, "image refused: unsafe_layer"),
    ):
        msg = sample_result(provider, sid, outcome=outcome, exit_code=code, detail=detail, **flags)
        out.append(vector(f"result-{outcome.value}-{code}", f"A valid {outcome.value} result (exit_code {code}).", R,
                          {"envelope_hex": seal(msg, provider).raw.hex()}, opened(msg)))

    def bad(name: str, description: str, field: str, **changes: Any) -> dict[str, Any]:
        wire = {**base, **changes}
        return vector(name, description, R, {"envelope_hex": _signed_wire(provider, wire).hex()},
                      reject("invalid_field", field=field))

    blob = base["outputs"][0]
    out += [
        bad("result-oom-without-exit-code", "An OOM-killed run has exit code 137, not null.", "exit_code",
            outcome="oom", oom=True, exit_code=None),
        bad("result-oom-other-exit-code", "An OOM-killed run exits with 137.", "exit_code",
            outcome="oom", oom=True, exit_code=1),
        bad("result-timeout-with-exit-code", "A run the provider stopped has no exit code.", "exit_code",
            outcome="timeout", timed_out=True, exit_code=137),
        bad("result-failed-with-exit-code", "A run that never ran has no exit code.", "exit_code",
            outcome="failed", exit_code=0),
        bad("result-exited-without-exit-code", "A run that ended by itself has an exit code.", "exit_code",
            exit_code=None),
        bad("result-exit-code-256", "Exit codes are 0..255.", "exit_code", exit_code=256),
        bad("result-timeout-flag-missing", "A timeout outcome without the timed_out flag.", "timed_out",
            outcome="timeout", exit_code=None),
        bad("result-unknown-outcome", "An outcome outside the list.", "outcome", outcome="crashed"),
        bad("result-bad-submitter", "The submitter is not an Ed25519 peer ID.", "submitter", submitter="Qm"),
        bad("result-short-agreement-id", "The agreement ID is 16 bytes.", "agreement_id", agreement_id=bytes(8)),
        bad("result-output-absolute-path", "Output paths are relative.", "outputs[0].path",
            outputs=[{**blob, "path": "/etc/passwd"}]),
        bad("result-output-dot-dot", "Output paths stay inside the output directory.", "outputs[0].path",
            outputs=[{**blob, "path": "out/../../x"}]),
        bad("result-output-dot", "A '.' segment is not a file.", "outputs[0].path", outputs=[{**blob, "path": "."}]),
        bad("result-output-digest-newline", "A digest with a final newline.", "outputs[0].digest",
            outputs=[{**blob, "digest": blob["digest"] + "\n"}]),
        bad("result-output-chunk-size", "Chunk sizes are powers of two.", "outputs[0].chunk_size",
            outputs=[{**blob, "chunk_size": 5000}]),
        bad("result-outputs-unsorted", "Outputs are sorted by path.", "outputs",
            outputs=[{**blob, "path": "out/b"}, {**blob, "path": "out/a"}]),
        bad("result-output-empty-path", "Only the log has the path ''.", "outputs", outputs=[{**blob, "path": ""}]),
        bad("result-log-path", "The log's path is ''.", "log.path", log={**base["log"], "path": "log.txt"}),
        bad("result-gpus-unsorted", "Metering GPUs are sorted by uuid.", "metering.gpus",
            metering={**base["metering"], "gpus": [{"uuid": "b", "gpu_ms": 1}, {"uuid": "a", "gpu_ms": 1}]}),
        bad("result-finished-before-started", "finished_at is not before started_at.", "finished_at",
            finished_at=base["started_at"] - 1),
        bad("result-nested-before-outer", "A bad output path and a bad agreement ID: the output's own rule first.",
            "outputs[0].path", agreement_id=bytes(8), outputs=[{**blob, "path": "/x"}]),
    ]
    sealed = result.raw.hex()
    out += [
        vector("result-other-submitter", "A verifier expecting another submitter.", R,
               {"envelope_hex": sealed, "submitter": pid}, reject("binding_mismatch")),
        vector("result-other-agreement", "A verifier expecting another agreement.", R,
               {"envelope_hex": sealed, "agreement_id_hex": bytes(16).hex()}, reject("binding_mismatch")),
        vector("result-other-job", "A verifier expecting another job.", R,
               {"envelope_hex": sealed, "job_digest_hex": bytes(32).hex()}, reject("binding_mismatch")),
        vector("result-bound", "A verifier that knows the agreement: every binding matches.", R,
               {"envelope_hex": sealed, "provider": pid, "submitter": sid, "agreement_id_hex": good.agreement_id.hex(),
                "job_digest_hex": good.job_digest.hex()}, opened(good)),
    ]
    return out


def _entry_hash(seq: int, prev: bytes, recorded_at: int, receipt: bytes) -> bytes:
    return hashlib.sha256(
        cbor.encode({"seq": seq, "prev": prev, "recorded_at": recorded_at, "receipt": receipt})
    ).digest()
