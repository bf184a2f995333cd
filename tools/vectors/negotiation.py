"""Negotiation test vectors (spec/negotiation.md) and the fixtures that build them.

``generate()`` returns the vector file's content (format: spec/README.md).
Keys come from fixed 32-byte seeds and every time is an explicit integer, so
the output is byte-for-byte reproducible: Ed25519 signatures are
deterministic.  The same builders serve the tests (``job_envelope``,
``keys``, ``happy_transcript``), so tests and vectors describe one protocol.

Each vector is a *transcript* run by one side (``role``): steps in order, each
a frame exactly as on the stream (``uvarint(len) || envelope``) with the
``now`` it is handled at, or the local ``expire`` event.  A frame signed by the
running side is *sent* (and must come out byte-identical); any other is
*received*.  A rejected frame changes nothing and the transcript goes on.
Expected: the final ``state``; ``reject`` when a received frame was rejected,
with the reason (and ``field``) of the first one and its index.

This module is loaded on its own by tests (no package-relative imports).
"""

from __future__ import annotations

from hashlib import sha256
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cbor
from protocol.envelope import Signed, open_envelope, public_key_proto_of, seal, signing_bytes
from protocol.errors import ProtocolError
from protocol.framing import decode_frame, encode_frame
from protocol.identity import peer_id_from_proto_key
from protocol.jobspec import BlobRef, GpuRequirement, ImageRef, JobSpec, Resources, Timeouts
from protocol.negotiation import (
    Cancel,
    CancelReason,
    JobStatus,
    Offer,
    Phase,
    Refusal,
    RefusalReason,
    sign_terms,
    terms_digest,
)
from protocol.negotiation_state import (
    MAX_FRAME,
    NEED_DATA,
    MemoryReplayCache,
    Negotiation,
    Role,
    replay_key,
)
from protocol.wire import Message, uvarint

SUBMITTER_SEED = bytes(range(1, 33))
PROVIDER_SEED = bytes(range(101, 133))
OTHER_SEED = bytes(range(201, 233))
NEGOTIATION_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
T0 = 1_800_000_000  #: "now" of the first frame in every transcript


def key_of(seed: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(seed)


def peer_of(key: Ed25519PrivateKey) -> str:
    return peer_id_from_proto_key(public_key_proto_of(key))


def _blob(n: int, media_type: str, size: int = 4096) -> BlobRef:
    hexd = f"{n:02x}" * 32
    return BlobRef(digest=f"sha256:{hexd}", size=size, chunk_size=4096, chunk_root=f"sha256:{hexd}", media_type=media_type)


def job_spec(*, gpus: int = 1, max_price: int = 5_000_000, run_s: int = 600, created_at: int = T0) -> JobSpec:
    """A small valid job: one GPU with 16 GiB, 2 cores, 4 GiB memory."""
    gpu = GpuRequirement(count=gpus, min_memory_mib=16384, vendor="nvidia", models=(), min_compute_capability=None) if gpus else None
    return JobSpec(
        name="vector-job",
        image=ImageRef(
            manifest=_blob(1, "application/vnd.oci.image.manifest.v1+json"),
            config=_blob(2, "application/vnd.oci.image.config.v1+json"),
            layers=(_blob(3, "application/vnd.oci.image.layer.v1.tar+gzip"),),
        ),
        command=("/bin/sh", "-c"),
        args=("echo hello",),
        env={},
        workdir="/",
        resources=Resources(gpu=gpu, cpu_millis=2000, memory_mib=4096, disk_mib=1024),
        inputs=(),
        outputs=("/out",),
        timeouts=Timeouts(transfer_s=300, queue_s=300, run_s=run_s),
        network="none",
        max_price=max_price,
        created_at=created_at,
        nonce=bytes(16),
    )


def job_envelope(key: Ed25519PrivateKey, **kwargs: Any) -> bytes:
    return seal(job_spec(**kwargs), key).raw


def pair(
    nid: bytes = NEGOTIATION_ID,
    *,
    submitter_seed: bytes = SUBMITTER_SEED,
    provider_seed: bytes = PROVIDER_SEED,
    cache: MemoryReplayCache | None = None,
) -> tuple[Negotiation, Negotiation]:
    """A submitter and a provider machine for the same negotiation."""
    sk, pk = key_of(submitter_seed), key_of(provider_seed)
    s, p = peer_of(sk), peer_of(pk)
    sub = Negotiation(Role.SUBMITTER, key=sk, submitter=s, provider=p, negotiation_id=nid)
    prov = Negotiation(Role.PROVIDER, key=pk, submitter=s, provider=p, replay_cache=cache if cache is not None else MemoryReplayCache())
    return sub, prov


def deliver(frame: bytes, to: Negotiation, now: int) -> Any:
    to.receive_data(frame)
    ev = to.next_event(now=now)
    assert ev is not NEED_DATA
    return ev


def happy_transcript(now: int = T0) -> list[tuple[str, bytes, int]]:
    """Offer, quote, accept, agreement, transferring, running, finished: (receiver, frame, now)."""
    sub, prov = pair()
    sk = key_of(SUBMITTER_SEED)
    out: list[tuple[str, bytes, int]] = []

    def to_p(frame: bytes, t: int) -> None:
        deliver(frame, prov, t)
        out.append(("provider", frame, t))

    def to_s(frame: bytes, t: int) -> None:
        deliver(frame, sub, t)
        out.append(("submitter", frame, t))

    to_p(sub.send_offer(job_envelope(sk), expires_at=now + 60, now=now), now)
    to_s(prov.send_quote(price=1_000_000, estimated_start=now + 1, queue_position=0,
                         reservation_expires_at=now + 30, gpu_models=("h100",), now=now + 1), now + 1)
    to_p(sub.send_accept(now=now + 2), now + 2)
    to_s(prov.send_agreement(now=now + 2), now + 2)
    to_s(prov.send_status(Phase.TRANSFERRING, at=now + 3, now=now + 3), now + 3)
    to_s(prov.send_status(Phase.RUNNING, at=now + 5, now=now + 5), now + 5)
    to_s(prov.send_status(Phase.FINISHED, at=now + 9, exit_code=0, now=now + 9), now + 9)
    return out



# --------------------------------------------------------------------------- running a transcript


def run_transcript(inp: dict[str, Any]) -> tuple[str, str | None, int | None, str | None]:
    """Run one vector input: (final state, first reject reason, its index, its field)."""
    sk = key_of(bytes.fromhex(inp["submitter_seed_hex"]))
    pk = key_of(bytes.fromhex(inp["provider_seed_hex"]))
    s, p = peer_of(sk), peer_of(pk)
    if inp["role"] == "provider":
        cache = MemoryReplayCache()
        for seen in inp.get("seen_offers", []):
            cache.remember(replay_key(s, bytes.fromhex(seen["negotiation_id_hex"])), seen["until"], now=0)
        me, m = p, Negotiation(Role.PROVIDER, key=pk, submitter=s, provider=p, replay_cache=cache)
    else:
        nid = bytes.fromhex(inp["negotiation_id_hex"])
        me, m = s, Negotiation(Role.SUBMITTER, key=sk, submitter=s, provider=p, negotiation_id=nid)
    first: tuple[str, int, str | None] | None = None
    for i, step in enumerate(inp["frames"]):
        now = step["now"]
        if step.get("event") == "expire":
            m.expire(now=now)
            continue
        raw = bytes.fromhex(step["frame_hex"])
        try:
            parsed = decode_frame(raw, MAX_FRAME)
            assert parsed is not None and parsed[1] == len(raw), "frame_hex holds exactly one frame"
            body = parsed[0]
            env = _try_open(body)
            if env is not None and env.signer == me:  # our own message: sending it gives the same bytes
                assert m.send(env.message, now=now) == body, "vector frame is not what this side would send"
                continue
            m.receive_data(body)
            m.next_event(now=now)
        except ProtocolError as exc:
            if first is None:
                first = (exc.reason, i, getattr(exc, "field", None))
    if first is None:
        return m.state.value, None, None, None
    return m.state.value, first[0], first[1], first[2]


def _try_open(body: bytes) -> Signed[Any] | None:
    try:
        return open_envelope(body)
    except ProtocolError:
        return None


# --------------------------------------------------------------------------- building frames

SK, PK, OTHER_KEY = key_of(SUBMITTER_SEED), key_of(PROVIDER_SEED), key_of(OTHER_SEED)
S_ID, P_ID, O_ID = peer_of(SK), peer_of(PK), peer_of(OTHER_KEY)


def _step(envelope: bytes, now: int) -> dict[str, Any]:
    return {"frame_hex": encode_frame(envelope).hex(), "now": now}


def _expire(now: int) -> dict[str, Any]:
    return {"event": "expire", "now": now}


def _raw(key: Ed25519PrivateKey, cls: type[Message], wire: dict[str, Any]) -> bytes:
    """An envelope around any payload map (construction would refuse an invalid one)."""
    payload = cbor.encode(wire)
    return cbor.encode({"key": public_key_proto_of(key), "payload": payload,
                        "sig": key.sign(signing_bytes(cls.DOMAIN, cls.TYPE, payload)), "type": cls.TYPE})


def _msg(frame: bytes) -> Any:
    return open_envelope(frame).message


def _header(seq: int, **over: Any) -> dict[str, Any]:
    return {"negotiation_id": NEGOTIATION_ID, "submitter": S_ID, "provider": P_ID, "seq": seq, **over}


def _vector(name: str, description: str, role: str, steps: list[dict[str, Any]], expected: dict[str, Any],
            **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "operation": "negotiation_transcript",
        "input": {
            "role": role,
            "submitter_seed_hex": SUBMITTER_SEED.hex(),
            "provider_seed_hex": PROVIDER_SEED.hex(),
            "negotiation_id_hex": NEGOTIATION_ID.hex(),
            **extra,
            "frames": steps,
        },
        "expected": expected,
    }


def _outcome(inp: dict[str, Any]) -> dict[str, Any]:
    """The expected outcome, computed by running the transcript (and cross-checked by hand
    in :func:`generate` against the reason and index each case states)."""
    state, reason, index, field = run_transcript(inp)
    if reason is None:
        return {"outcome": "accept", "state": state}
    out: dict[str, Any] = {"outcome": "reject", "reason": reason, "failing_frame": index, "state": state}
    if field is not None:
        out["field"] = field
    return out


# --------------------------------------------------------------------------- vectors


def generate() -> dict[str, Any]:
    vectors: list[dict[str, Any]] = []
    for name, description, role, steps, expected, extra in _cases():
        v = _vector(name, description, role, steps, {}, **extra)
        got = _outcome(v["input"])
        want = {"outcome": "accept" if expected[0] is None else "reject"}
        if expected[0] is not None:
            want.update(reason=expected[0], failing_frame=expected[1])
        checked = {k: got[k] for k in want}
        if checked != want or got["state"] != expected[2] or got.get("field") != (expected[3] if len(expected) > 3 else None):
            raise AssertionError(f"negotiation vector {name}: ran to {got}, the case says {expected}")
        v["expected"] = got
        vectors.append(v)
    return {"area": "negotiation", "spec": "negotiation.md", "revision": 2, "vectors": vectors}


Case = tuple[str, str, str, list[dict[str, Any]], tuple[Any, ...], dict[str, Any]]


def _cases() -> list[Case]:  # noqa: C901 - one list of cases, read top to bottom
    happy = happy_transcript()
    offer, quote, accept, agreement, transferring, running, finished = (f for _, f, _ in happy)
    t = [t for _, _, t in happy]
    o, q, a, g = _msg(offer), _msg(quote), _msg(accept), _msg(agreement)
    job = job_spec()
    cases: list[Case] = []

    def case(name: str, description: str, role: str, steps: list[dict[str, Any]],
             expected: tuple[Any, ...], **extra: Any) -> None:
        cases.append((name, description, role, steps, expected, extra))

    # ---- accepted transcripts
    all_steps = [_step(f, when) for _, f, when in happy]
    case("happy-path-submitter", "offer, quote, accept, agreement, status to finished", "submitter",
         all_steps, (None, None, "finished"))
    case("happy-path-provider", "the same transcript run by the provider (its own frames are sent)", "provider",
         all_steps, (None, None, "finished"))
    case("offer-provider", "a provider receives a valid offer", "provider", all_steps[:1], (None, None, "offered"))

    def quote_steps() -> list[dict[str, Any]]:
        return [_step(offer, t[0]), _step(quote, t[1])]

    def agreed_steps() -> list[dict[str, Any]]:
        return [*quote_steps(), _step(accept, t[2]), _step(agreement, t[3])]

    refuse_offer = seal(Refusal(**_header(0), in_reply_to=sha256(offer).digest(), reason=RefusalReason.BUSY,
                                detail="all GPUs reserved", queue_depth=3), PK).raw
    case("refusal-of-offer", "the provider refuses the offer (busy, with its queue depth)", "submitter",
         [_step(offer, t[0]), _step(refuse_offer, t[1])], (None, None, "refused"))
    refuse_accept = seal(Refusal(**_header(1), in_reply_to=sha256(accept).digest(), reason=RefusalReason.BUSY,
                                 detail="capacity taken", queue_depth=0), PK).raw
    case("refusal-of-accept", "the provider refuses the accept (capacity went meanwhile)", "submitter",
         [*quote_steps(), _step(accept, t[2]), _step(refuse_accept, t[2])], (None, None, "refused"))
    expired_offer = seal(o.replace(expires_at=T0), SK).raw
    refuse_expired = seal(Refusal(**_header(0), in_reply_to=sha256(expired_offer).digest(),
                                  reason=RefusalReason.EXPIRED, detail="offer expired", queue_depth=None), PK).raw
    case("refusal-from-idle", "a provider rejects an offer (expired), stays idle, then refuses it: idle -> refused",
         "provider", [_step(expired_offer, T0), _step(refuse_expired, T0)], ("expired", 0, "refused"))
    case("refusal-from-idle-submitter", "the submitter's view of the same refusal", "submitter",
         [_step(expired_offer, T0 - 1), _step(refuse_expired, T0)], (None, None, "refused"))

    cancel_offered = seal(Cancel(**_header(1), reason=CancelReason.CHOSE_OTHER, detail=""), SK).raw
    case("cancel-offered", "the submitter cancels before any quote", "provider",
         [_step(offer, t[0]), _step(cancel_offered, t[0])], (None, None, "cancelled"))
    case("cancel-quoted-by-submitter", "the submitter cancels a quote it does not take", "provider",
         [*quote_steps(), _step(cancel_offered, t[1])], (None, None, "cancelled"))
    cancel_quoted_p = seal(Cancel(**_header(1), reason=CancelReason.SHUTDOWN, detail="stopping"), PK).raw
    case("cancel-quoted-by-provider", "the provider withdraws its quote", "submitter",
         [*quote_steps(), _step(cancel_quoted_p, t[1])], (None, None, "cancelled"))
    cancel_agreed_p = seal(Cancel(**_header(2), reason=CancelReason.FAILURE, detail="GPU lost"), PK).raw
    case("cancel-agreed-by-provider", "the provider cancels an agreed job", "submitter",
         [*agreed_steps(), _step(cancel_agreed_p, t[3])], (None, None, "cancelled"))

    def status(phase: Phase, seq: int, at: int, exit_code: int | None = None) -> bytes:
        return seal(JobStatus(**_header(seq), terms_digest=terms_digest(g.terms), phase=phase, at=at, detail="",
                              exit_code=exit_code), PK).raw

    cancel_running_s = seal(Cancel(**_header(2), reason=CancelReason.USER, detail=""), SK).raw
    case("cancel-running-by-submitter", "the submitter cancels a running job", "provider",
         [*agreed_steps(), _step(status(Phase.RUNNING, 2, T0 + 3), T0 + 3), _step(cancel_running_s, T0 + 4)],
         (None, None, "cancelled"))

    case("status-queued-then-failed", "agreed, queued, failed (a job that never ran)", "submitter",
         [*agreed_steps(), _step(status(Phase.QUEUED, 2, T0 + 3), T0 + 3),
          _step(status(Phase.FAILED, 3, T0 + 4), T0 + 4)], (None, None, "failed"))
    case("status-finished-exit-code", "a finished status carries the exit code", "submitter",
         [*agreed_steps(), _step(status(Phase.RUNNING, 2, T0 + 3), T0 + 3),
          _step(status(Phase.FINISHED, 3, T0 + 4, exit_code=7), T0 + 4)], (None, None, "finished"))

    case("expire-offered", "the offer's expires_at passes: expired (an expire before it changes nothing)",
         "provider", [_step(offer, t[0]), _expire(T0 + 59), _expire(T0 + 60)], (None, None, "expired"))
    case("expire-quoted", "the reservation ends: expired", "submitter",
         [*quote_steps(), _expire(q.reservation_expires_at)], (None, None, "expired"))
    case("expire-too-early", "an expire before the deadline changes nothing; the accept still applies",
         "provider", [*quote_steps(), _expire(T0 + 29), _step(accept, T0 + 29)], (None, None, "accepted"))
    case("expired-then-quote", "after expiry (terminal) a quote is unexpected", "submitter",
         [_step(offer, t[0]), _expire(T0 + 60), _step(quote, T0 + 61)], ("unexpected_message", 2, "expired"))
    case("expired-then-accept", "after the reservation expired an accept is unexpected", "provider",
         [*quote_steps(), _expire(T0 + 30), _step(accept, T0 + 30)], ("unexpected_message", 3, "expired"))

    # ---- frames and envelopes (section 5, step 1)
    case("oversize-frame", "a length prefix of 1048577 bytes is refused before the body is read", "submitter",
         [_step(offer, t[0]), {"frame_hex": uvarint(MAX_FRAME + 1).hex(), "now": t[1]}], ("oversize", 1, "offered"))
    case("length-prefix-too-long", "a length prefix still unfinished after 10 bytes (its value stays 0)",
         "provider", [{"frame_hex": ("80" * 10) + "01", "now": T0}], ("malformed", 0, "idle"))
    case("wrong-signer-offer", "offer signed by a third peer", "provider",
         [_step(_resign(offer, OTHER_KEY), T0)], ("wrong_signer", 0, "idle"))
    bad_sig = bytearray(offer)
    bad_sig[-5] ^= 1  # inside the signature (the last map entry is "type"; sig precedes it)
    case("corrupt-frame", "one bit flipped in the offer's signature", "provider",
         [_step(bytes(bad_sig), T0)], ("bad_signature", 0, "idle"))
    case("garbage", "not CBOR at all", "provider", [_step(b"\xff\x00garbage", T0)], ("forbidden_type", 0, "idle"))
    case("job-spec-as-frame", "a job spec envelope (tag 1) where a negotiation message is expected", "provider",
         [_step(job_envelope(SK), T0)], ("unexpected_type", 0, "idle"))
    case("quote-signed-by-third-peer", "a quote signed by someone other than the provider", "submitter",
         [_step(offer, t[0]), _step(_resign(quote, OTHER_KEY), t[1])], ("wrong_signer", 1, "offered"))
    case("quote-signed-by-submitter", "a quote signed by the submitter itself: a submitter never sends one",
         "provider", [_step(offer, t[0]), _step(_resign(quote, SK), t[1])], ("unexpected_message", 1, "offered"))
    case("type-before-signature", "a job spec envelope with a broken signature: the type is checked first",
         "provider", [_step(_flip_sig(job_envelope(SK)), T0)], ("unexpected_type", 0, "idle"))

    # ---- transitions and the binding header (steps 2 and 3)
    case("replayed-offer", "the same offer twice in one session", "provider",
         [_step(offer, T0), _step(offer, T0 + 1)], ("unexpected_message", 1, "offered"))
    case("reordered", "agreement before the quote", "submitter",
         [_step(offer, t[0]), _step(agreement, t[1])], ("unexpected_message", 1, "offered"))
    case("status-before-agreement", "running status while only offered", "submitter",
         [_step(offer, t[0]), _step(running, t[1])], ("unexpected_message", 1, "offered"))
    case("replayed-status", "a status event delivered twice", "submitter",
         [*agreed_steps(), _step(transferring, t[4]), _step(transferring, t[4])],
         ("unexpected_message", 5, "transferring"))
    case("refusal-after-agreement", "a refusal once agreed is not allowed", "submitter",
         [*agreed_steps(), _step(seal(Refusal(**_header(2), in_reply_to=sha256(accept).digest(),
                                              reason=RefusalReason.BUSY, detail="", queue_depth=1), PK).raw, t[3])],
         ("unexpected_message", 4, "agreed"))
    case("cancel-offered-by-provider", "a provider cannot cancel before it quoted (it refuses)", "submitter",
         [_step(offer, t[0]), _step(seal(Cancel(**_header(0), reason=CancelReason.USER, detail=""), PK).raw, t[1])],
         ("unexpected_message", 1, "offered"))
    case("transition-before-binding", "an agreement for another negotiation while offered: the transition fails first",
         "submitter", [_step(offer, t[0]), _step(seal(g.replace(negotiation_id=bytes(16)), PK).raw, t[1])],
         ("unexpected_message", 1, "offered"))
    cross = pair(bytes(16))
    other_offer = cross[0].send_offer(job_envelope(SK), expires_at=T0 + 60, now=T0)
    case("cross-session", "a quote for another negotiation's offer", "submitter",
         [_step(offer, t[0]), _step(_quote_for(other_offer, PK), t[1])], ("binding_mismatch", 1, "offered"))
    case("offer-names-other-provider", "an offer naming another provider (signed by the right submitter)",
         "provider", [_step(seal(o.replace(provider=O_ID), SK).raw, T0)], ("binding_mismatch", 0, "idle"))
    case("binding-before-sequence", "a quote naming another provider and with seq 1: binding first", "submitter",
         [_step(offer, t[0]), _step(seal(q.replace(provider=O_ID, seq=1), PK).raw, t[1])],
         ("binding_mismatch", 1, "offered"))
    case("bad-sequence-offer", "an offer with seq 1", "provider", [_step(seal(o.replace(seq=1), SK).raw, T0)],
         ("bad_sequence", 0, "idle"))
    case("bad-sequence-quote", "a quote with seq 1 (the provider's first message is 0)", "submitter",
         [_step(offer, t[0]), _step(seal(q.replace(seq=1), PK).raw, t[1])], ("bad_sequence", 1, "offered"))
    case("status-seq-restarted", "a status with seq 0 after the agreement (seq continues across streams)",
         "submitter", [*agreed_steps(), _step(status(Phase.RUNNING, 0, T0 + 3), T0 + 3)],
         ("bad_sequence", 4, "agreed"))
    case("status-seq-skipped", "a status with seq 3 where 2 is due", "submitter",
         [*agreed_steps(), _step(status(Phase.RUNNING, 3, T0 + 3), T0 + 3)], ("bad_sequence", 4, "agreed"))

    # ---- offers (step 4)
    case("offer-expiry-max", "expires_at = now + 330 (300 s and 30 s of clock skew) is accepted", "provider",
         [_step(seal(o.replace(expires_at=T0 + 330), SK).raw, T0)], (None, None, "offered"))
    case("offer-expiry-too-far", "expires_at = now + 331", "provider",
         [_step(seal(o.replace(expires_at=T0 + 331), SK).raw, T0)], ("expiry_too_far", 0, "idle"))
    case("expired-offer", "offer received after its expires_at", "provider", [_step(offer, T0 + 61)],
         ("expired", 0, "idle"))
    case("expired-offer-boundary", "offer received at its expires_at: expired", "provider",
         [_step(offer, T0 + 60)], ("expired", 0, "idle"))
    case("offer-expired-before-job", "an expired offer whose job is not an envelope: expiry is checked first",
         "provider", [_step(seal(o.replace(expires_at=T0, job=b"\x00"), SK).raw, T0)], ("expired", 0, "idle"))
    case("job-signed-by-other", "the offered job spec is signed by another peer than the submitter", "provider",
         [_step(seal(o.replace(job=job_envelope(OTHER_KEY)), SK).raw, T0)], ("wrong_signer", 0, "idle"))
    case("job-not-a-job-spec", "the offered job is an envelope of another type (an offer)", "provider",
         [_step(seal(o.replace(job=offer), SK).raw, T0)], ("unexpected_type", 0, "idle"))
    case("job-bad-signature", "the offered job spec's signature does not verify", "provider",
         [_step(seal(o.replace(job=_flip_sig(job_envelope(SK))), SK).raw, T0)], ("bad_signature", 0, "idle"))
    case("job-not-cbor", "the offered job is not an envelope", "provider",
         [_step(seal(o.replace(job=b"\x00"), SK).raw, T0)], ("malformed", 0, "idle"))
    bad_job = job.to_wire()
    bad_job["timeouts"]["run_s"] = 0
    case("job-invalid", "the offered job spec breaks a rule", "provider",
         [_step(seal(o.replace(job=_raw(SK, JobSpec, bad_job)), SK).raw, T0)],
         ("invalid_field", 0, "idle", "timeouts.run_s"))
    case("job-from-future", "the offered job spec was created 301 s after now", "provider",
         [_step(seal(o.replace(job=job_envelope(SK, created_at=T0 + 301)), SK).raw, T0)],
         ("from_future", 0, "idle"))
    case("job-expired", "the offered job spec was created more than a day before now", "provider",
         [_step(seal(o.replace(job=job_envelope(SK, created_at=T0 - 86401)), SK).raw, T0)],
         ("expired", 0, "idle"))
    seen = [{"negotiation_id_hex": NEGOTIATION_ID.hex(), "until": T0 + 90}]
    case("replayed", "an offer whose (submitter, negotiation ID) the provider saw before, on another stream",
         "provider", [_step(offer, T0)], ("replayed", 0, "idle"), seen_offers=seen)
    case("replayed-until-inclusive", "remembered until its 'until' second inclusive", "provider",
         [_step(offer, T0)], ("replayed", 0, "idle"), seen_offers=[{"negotiation_id_hex": NEGOTIATION_ID.hex(),
                                                                     "until": T0}])
    case("replay-memory-lapsed", "after 'until' the pair is forgotten and a new offer with it is accepted", "provider",
         [_step(offer, T0)], (None, None, "offered"), seen_offers=[{"negotiation_id_hex": NEGOTIATION_ID.hex(),
                                                                     "until": T0 - 1}])
    case("replayed-other-submitter-pair", "the replay memory is per submitter: another ID is new", "provider",
         [_step(offer, T0)], (None, None, "offered"), seen_offers=[{"negotiation_id_hex": bytes(16).hex(),
                                                                     "until": T0 + 90}])
    case("job-checked-before-replay", "a replayed offer whose job is invalid: the job is checked first", "provider",
         [_step(seal(o.replace(job=job_envelope(OTHER_KEY)), SK).raw, T0)], ("wrong_signer", 0, "idle"), seen_offers=seen)
    ow = o.to_wire()
    case("offer-submitter-is-provider", "an offer naming the submitter as provider too", "provider",
         [_step(_raw(SK, Offer, {**ow, "provider": S_ID}), T0)], ("invalid_field", 0, "idle", "provider"))
    case("offer-bad-peer-id", "a header peer ID that is not an Ed25519 peer ID", "provider",
         [_step(_raw(SK, Offer, {**ow, "submitter": "QmNotAnEd25519PeerId"}), T0)],
         ("invalid_field", 0, "idle", "submitter"))
    case("offer-short-negotiation-id", "a 15-byte negotiation ID", "provider",
         [_step(_raw(SK, Offer, {**ow, "negotiation_id": bytes(15)}), T0)],
         ("invalid_field", 0, "idle", "negotiation_id"))
    case("offer-empty-job", "an offer whose job is empty", "provider", [_step(_raw(SK, Offer, {**ow, "job": b""}), T0)],
         ("invalid_field", 0, "idle", "job"))
    case("offer-unknown-field", "an offer with an extra field", "provider",
         [_step(_raw(SK, Offer, {**ow, "price": 1}), T0)], ("unknown_field", 0, "idle"))
    case("offer-missing-field", "an offer without expires_at", "provider",
         [_step(_raw(SK, Offer, {k: v for k, v in ow.items() if k != "expires_at"}), T0)],
         ("missing_field", 0, "idle"))

    # ---- quotes
    case("quote-reservation-max", "a reservation ending now + 630 is accepted", "submitter",
         [_step(offer, t[0]), _step(seal(q.replace(reservation_expires_at=t[1] + 630), PK).raw, t[1])],
         (None, None, "quoted"))
    case("quote-reservation-too-far", "a reservation ending now + 631", "submitter",
         [_step(offer, t[0]), _step(seal(q.replace(reservation_expires_at=t[1] + 631), PK).raw, t[1])],
         ("bad_expiry", 1, "offered"))
    case("quote-reservation-ended", "a reservation that ends now", "submitter",
         [_step(offer, t[0]), _step(seal(q.replace(reservation_expires_at=t[1]), PK).raw, t[1])],
         ("bad_expiry", 1, "offered"))
    case("quote-price-max", "price = the job's max_price is accepted", "submitter",
         [_step(offer, t[0]), _step(seal(q.replace(price=job.max_price), PK).raw, t[1])], (None, None, "quoted"))
    case("quote-price-above-max", "price above the job's max_price", "submitter",
         [_step(offer, t[0]), _step(seal(q.replace(price=job.max_price + 1), PK).raw, t[1])],
         ("price_above_max", 1, "offered"))
    case("quote-run-time-mismatch", "max_run_s differs from the job's run_s", "submitter",
         [_step(offer, t[0]), _step(seal(q.replace(max_run_s=job.timeouts.run_s + 1), PK).raw, t[1])],
         ("terms_mismatch", 1, "offered"))
    case("quote-wrong-offer-digest", "a quote naming another offer digest", "submitter",
         [_step(offer, t[0]), _step(seal(q.replace(offer_digest=bytes(32)), PK).raw, t[1])],
         ("binding_mismatch", 1, "offered"))
    case("quote-after-offer-expired", "a quote that arrives once the offer expired", "submitter",
         [_step(offer, t[0]), _step(quote, T0 + 60)], ("expired", 1, "offered"))
    case("quote-order-expiry-before-price", "a reservation too far and a price too high: the reservation first",
         "submitter", [_step(offer, t[0]), _step(seal(q.replace(reservation_expires_at=t[1] + 631,
                                                                price=job.max_price + 1), PK).raw, t[1])],
         ("bad_expiry", 1, "offered"))

    # ---- accepts
    case("accept-last-second", "an accept one second before the reservation ends", "provider",
         [*quote_steps(), _step(accept, T0 + 29)], (None, None, "accepted"))
    case("late-accept", "accept after the reservation expired", "provider",
         [*quote_steps(), _step(accept, T0 + 31)], ("expired", 2, "quoted"))
    case("accept-wrong-quote-digest", "an accept naming another quote digest", "provider",
         [*quote_steps(), _step(seal(a.replace(quote_digest=bytes(32)), SK).raw, t[2])],
         ("binding_mismatch", 2, "quoted"))
    other_terms = a.terms.replace(price=a.terms.price - 1)
    case("accept-other-terms", "an accept whose terms differ from the quote (signed for those terms)", "provider",
         [*quote_steps(), _step(seal(a.replace(terms=other_terms, submitter_sig=sign_terms(other_terms, SK)), SK).raw,
                                t[2])], ("terms_mismatch", 2, "quoted"))
    case("accept-bad-terms-signature", "the terms signature is another peer's", "provider",
         [*quote_steps(), _step(seal(a.replace(submitter_sig=sign_terms(a.terms, OTHER_KEY)), SK).raw, t[2])],
         ("bad_signature", 2, "quoted"))
    case("accept-digest-before-expiry", "a late accept naming another quote: binding first", "provider",
         [*quote_steps(), _step(seal(a.replace(quote_digest=bytes(32)), SK).raw, T0 + 31)],
         ("binding_mismatch", 2, "quoted"))
    case("accept-bad-sequence", "an accept with seq 2 (the submitter's second message is 1)", "provider",
         [*quote_steps(), _step(seal(a.replace(seq=2), SK).raw, t[2])], ("bad_sequence", 2, "quoted"))

    # ---- agreements
    def agree_steps(frame: bytes) -> list[dict[str, Any]]:
        return [*quote_steps(), _step(accept, t[2]), _step(frame, t[3])]

    case("agreement-wrong-accept-digest", "an agreement naming another accept", "submitter",
         agree_steps(seal(g.replace(accept_digest=bytes(32)), PK).raw), ("binding_mismatch", 3, "accepted"))
    case("agreement-other-terms", "an agreement whose terms differ from the accepted ones", "submitter",
         agree_steps(seal(g.replace(terms=other_terms, provider_sig=sign_terms(other_terms, PK)), PK).raw),
         ("terms_mismatch", 3, "accepted"))
    case("agreement-other-submitter-sig", "an agreement whose copy of the submitter's signature differs",
         "submitter", agree_steps(seal(g.replace(submitter_sig=sign_terms(g.terms, PK)), PK).raw),
         ("terms_mismatch", 3, "accepted"))
    case("agreement-bad-provider-sig", "the provider's terms signature does not verify", "submitter",
         agree_steps(seal(g.replace(provider_sig=sign_terms(g.terms, OTHER_KEY)), PK).raw), ("bad_signature", 3, "accepted"))

    # ---- refusals, cancels, status
    case("refusal-answers-nothing", "a refusal whose in_reply_to is not a message of ours", "submitter",
         [_step(offer, t[0]), _step(seal(Refusal(**_header(0), in_reply_to=bytes(32), reason=RefusalReason.BUSY,
                                                 detail="", queue_depth=1), PK).raw, t[1])],
         ("binding_mismatch", 1, "offered"))
    rw = Refusal(**_header(0), in_reply_to=sha256(offer).digest(), reason=RefusalReason.BUSY, detail="",
                 queue_depth=1).to_wire()
    case("refusal-busy-without-depth", "a busy refusal must give the queue depth", "submitter",
         [_step(offer, t[0]), _step(_raw(PK, Refusal, {**rw, "queue_depth": None}), t[1])],
         ("invalid_field", 1, "offered", "queue_depth"))
    case("refusal-unknown-reason", "a refusal reason outside the list", "submitter",
         [_step(offer, t[0]), _step(_raw(PK, Refusal, {**rw, "reason": "tired"}), t[1])],
         ("invalid_field", 1, "offered", "reason"))
    cw = Cancel(**_header(1), reason=CancelReason.USER, detail="").to_wire()
    case("cancel-unknown-reason", "a cancel reason outside the list", "provider",
         [_step(offer, t[0]), _step(_raw(SK, Cancel, {**cw, "reason": "bored"}), t[0])],
         ("invalid_field", 1, "offered", "reason"))
    case("cancel-bad-sequence", "a cancel with the submitter's seq 0 again", "provider",
         [_step(offer, t[0]), _step(seal(Cancel(**_header(0), reason=CancelReason.USER, detail=""), SK).raw, t[0])],
         ("bad_sequence", 1, "offered"))
    case("status-wrong-terms", "a status naming other terms than the agreement", "submitter",
         [*agreed_steps(), _step(seal(_msg(status(Phase.RUNNING, 2, T0 + 3)).replace(terms_digest=bytes(32)), PK).raw,
                                 T0 + 3)], ("binding_mismatch", 4, "agreed"))
    sw = _msg(status(Phase.RUNNING, 2, T0 + 3)).to_wire()
    case("status-exit-code-while-running", "only a finished status has an exit code", "submitter",
         [*agreed_steps(), _step(_raw(PK, JobStatus, {**sw, "exit_code": 0}), T0 + 3)],
         ("invalid_field", 4, "agreed", "exit_code"))
    case("status-after-reject-goes-on", "a rejected status changes nothing; the next valid one applies",
         "submitter", [*agreed_steps(), _step(status(Phase.RUNNING, 3, T0 + 3), T0 + 3),
                       _step(status(Phase.RUNNING, 2, T0 + 3), T0 + 3)], ("bad_sequence", 4, "running"))
    return cases


def _flip_sig(envelope: bytes) -> bytes:
    env = cbor.decode(envelope)
    env["sig"] = bytes([env["sig"][0] ^ 1]) + env["sig"][1:]
    return cbor.encode(env)


def _quote_for(offer_frame: bytes, pk: Ed25519PrivateKey) -> bytes:
    """A provider quote answering ``offer_frame`` (whose negotiation ID differs)."""
    sub, prov = pair(open_envelope(offer_frame).message.negotiation_id)  # type: ignore[attr-defined]
    deliver(offer_frame, prov, T0)
    return prov.send_quote(price=1, estimated_start=T0, queue_position=0, reservation_expires_at=T0 + 30,
                           gpu_models=(), now=T0)


def _resign(frame: bytes, key: Ed25519PrivateKey) -> bytes:
    return seal(open_envelope(frame).message, key).raw


def check(vector: dict[str, Any]) -> None:
    """Run one vector; raise AssertionError if the outcome differs."""
    assert _outcome(vector["input"]) == vector["expected"], vector["name"]
