"""Negotiation test vectors (spec/negotiation.md) and the fixtures that build them.

``generate()`` returns the vector file's content (format: spec/README.md).
Keys come from fixed 32-byte seeds and every time is an explicit integer, so
the output is byte-for-byte reproducible: Ed25519 signatures are
deterministic.  The same builders serve the tests (``job_envelope``,
``keys``, ``happy_transcript``), so tests and vectors describe one protocol.

Each vector is a *transcript*: frames in order, each with the side that
receives it and the ``now`` it is received at, and the expected outcome of
feeding them to a fresh machine of the receiving role: ``accept`` with the
final state, or ``reject`` with the reason of the first failing frame (its
index in ``failing_frame``).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.envelope import open_envelope, public_key_proto_of, seal
from protocol.errors import ProtocolError
from protocol.identity import peer_id_from_proto_key
from protocol.jobspec import BlobRef, GpuRequirement, ImageRef, JobSpec, Resources, Timeouts
from protocol.negotiation import Phase
from protocol.negotiation_state import NEED_DATA, MemoryReplayCache, Negotiation, Role

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


def run_transcript(role: str, frames: list[tuple[bytes, int]]) -> tuple[str, str | None, int | None]:
    """Feed ``frames`` to a fresh machine of ``role``: (final state, reject reason, failing index).

    Frames signed by the machine's own key are *sent* (and must come out
    byte-identical); the others are received.
    """
    sk, pk = key_of(SUBMITTER_SEED), key_of(PROVIDER_SEED)
    s, p = peer_of(sk), peer_of(pk)
    if role == "provider":
        m = Negotiation(Role.PROVIDER, key=pk, submitter=s, provider=p, replay_cache=MemoryReplayCache())
    else:
        m = Negotiation(Role.SUBMITTER, key=sk, submitter=s, provider=p, negotiation_id=NEGOTIATION_ID)
    me = s if role == "submitter" else p
    for i, (frame, now) in enumerate(frames):
        if _is_own(frame, me):
            # our own message: sending it again must give the same bytes (signatures are deterministic)
            got = m.send(open_envelope(frame).message, now=now)
            assert got == frame, "vector frame is not what this side would send"
            continue
        m.receive_data(frame)
        try:
            m.next_event(now=now)
        except ProtocolError as exc:
            return m.state.value, exc.reason, i
    return m.state.value, None, None


def _is_own(frame: bytes, me: str) -> bool:
    try:
        return open_envelope(frame).signer == me
    except ProtocolError:
        return False


# --------------------------------------------------------------------------- vectors


def _vector(name: str, description: str, role: str, frames: list[tuple[bytes, int]], expected: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "operation": "negotiation_transcript",
        "input": {
            "role": role,
            "submitter_seed_hex": SUBMITTER_SEED.hex(),
            "provider_seed_hex": PROVIDER_SEED.hex(),
            "negotiation_id_hex": NEGOTIATION_ID.hex(),
            "frames": [{"frame_hex": f.hex(), "now": t} for f, t in frames],
        },
        "expected": expected,
    }


def generate() -> dict[str, Any]:
    from protocol.negotiation_state import TRANSITIONS  # noqa: F401  (the table the vectors exercise)

    vectors: list[dict[str, Any]] = []
    happy = happy_transcript()
    sub_view = [(f, t) for _, f, t in happy]
    vectors.append(_vector("happy-path-submitter", "offer, quote, accept, agreement, status to finished", "submitter",
                           sub_view, {"outcome": "accept", "state": "finished"}))
    prov_view = [(f, t) for who, f, t in happy[:2]]
    vectors.append(_vector("offer-provider", "a provider receives a valid offer", "provider",
                           prov_view[:1], {"outcome": "accept", "state": "offered"}))
    for name, desc, role, frames, reason, idx, state in _invalid_cases(happy):
        vectors.append(_vector(name, desc, role, frames,
                               {"outcome": "reject", "reason": reason, "failing_frame": idx, "state": state}))
    return {"area": "negotiation", "spec": "negotiation.md", "revision": 1, "vectors": vectors}


def _invalid_cases(happy: list[tuple[str, bytes, int]]) -> list[tuple[str, str, str, list[tuple[bytes, int]], str, int, str]]:
    offer, quote, accept, agreement, transferring, running, finished = (f for _, f, _ in happy)
    t = [t for _, _, t in happy]
    sk, pk, ok = key_of(SUBMITTER_SEED), key_of(PROVIDER_SEED), key_of(OTHER_SEED)
    cases: list[tuple[str, str, str, list[tuple[bytes, int]], str, int, str]] = []
    cases.append(("expired-offer", "offer received after its expires_at", "provider",
                  [(offer, T0 + 61)], "expired", 0, "idle"))
    cases.append(("replayed-offer", "the same offer twice in one session", "provider",
                  [(offer, T0), (offer, T0 + 1)], "unexpected_message", 1, "offered"))
    cases.append(("wrong-signer-offer", "offer signed by a third peer", "provider",
                  [(_resign(offer, ok), T0)], "wrong_signer", 0, "idle"))
    bad_sig = bytearray(offer)
    bad_sig[-5] ^= 1  # inside the signature (the last map entry is "type"; sig precedes it)
    cases.append(("corrupt-frame", "one bit flipped in the offer", "provider",
                  [(bytes(bad_sig), T0)], _reason_of(bytes(bad_sig)), 0, "idle"))
    cases.append(("garbage", "not CBOR at all", "provider", [(b"\xff\x00garbage", T0)], _reason_of(b"\xff\x00garbage"), 0, "idle"))
    cases.append(("reordered", "agreement before the quote", "submitter",
                  [(offer, t[0]), (agreement, t[1])], "unexpected_message", 1, "offered"))
    cases.append(("status-before-agreement", "running status while only offered", "submitter",
                  [(offer, t[0]), (running, t[1])], "unexpected_message", 1, "offered"))
    cases.append(("replayed-status", "a status event delivered twice", "submitter",
                  [(offer, t[0]), (quote, t[1]), (accept, t[2]), (agreement, t[3]), (transferring, t[4]),
                   (transferring, t[4])], "unexpected_message", 5, "transferring"))
    cases.append(("late-accept", "accept after the reservation expired", "provider",
                  [(offer, t[0]), (quote, t[1]), (accept, T0 + 31)], "expired", 2, "quoted"))
    cross = pair(bytes(16))
    other_offer = cross[0].send_offer(job_envelope(sk), expires_at=T0 + 60, now=T0)
    cases.append(("cross-session", "a quote for another negotiation's offer", "submitter",
                  [(offer, t[0]), (_quote_for(other_offer, pk), t[1])], "binding_mismatch", 1, "offered"))
    return cases


def _quote_for(offer_frame: bytes, pk: Ed25519PrivateKey) -> bytes:
    """A provider quote answering ``offer_frame`` (whose negotiation ID differs)."""
    sub, prov = pair(open_envelope(offer_frame).message.negotiation_id)  # type: ignore[attr-defined]
    deliver(offer_frame, prov, T0)
    return prov.send_quote(price=1, estimated_start=T0, queue_position=0, reservation_expires_at=T0 + 30,
                           gpu_models=(), now=T0)


def _resign(frame: bytes, key: Ed25519PrivateKey) -> bytes:
    return seal(open_envelope(frame).message, key).raw


def _reason_of(frame: bytes) -> str:
    try:
        open_envelope(frame)
    except ProtocolError as exc:
        return exc.reason
    return "none"


def check(vector: dict[str, Any]) -> None:
    """Run one vector; raise AssertionError if the outcome differs."""
    inp, exp = vector["input"], vector["expected"]
    frames = [(bytes.fromhex(f["frame_hex"]), f["now"]) for f in inp["frames"]]
    state, reason, idx = run_transcript(inp["role"], frames)
    if exp["outcome"] == "accept":
        assert reason is None, f"{vector['name']}: rejected with {reason} at frame {idx}"
    else:
        assert (reason, idx) == (exp["reason"], exp["failing_frame"]), f"{vector['name']}: got {reason} at {idx}"
    assert state == exp["state"], f"{vector['name']}: state {state}, expected {exp['state']}"

