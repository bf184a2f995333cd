"""The negotiation state machine: every state x every event, replays, random abuse."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import cbor
from protocol.envelope import seal
from protocol.errors import LocalProtocolError, ProtocolError
from protocol.negotiation import (
    Accept,
    Agreement,
    Cancel,
    CancelReason,
    JobStatus,
    Offer,
    Phase,
    Quote,
    Refusal,
    RefusalReason,
    Terms,
    verify_agreement,
)
from protocol.negotiation_state import (
    NEED_DATA,
    TERMINAL_STATES,
    TRANSITIONS,
    Event,
    MemoryReplayCache,
    Negotiation,
    Role,
    State,
    replay_key,
)
from protocol.wire import Message

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("negotiation_vectors", ROOT / "tools/vectors/negotiation.py")
assert _spec and _spec.loader
V = importlib.util.module_from_spec(_spec)
sys.modules["negotiation_vectors"] = V
_spec.loader.exec_module(V)

T0 = V.T0
S, P = Role.SUBMITTER, Role.PROVIDER
SK, PK = V.key_of(V.SUBMITTER_SEED), V.key_of(V.PROVIDER_SEED)
NID = V.NEGOTIATION_ID


def deliver(frame: bytes, to: Negotiation, now: int = T0) -> None:
    to.receive_data(frame)
    assert to.next_event(now=now) is not NEED_DATA


def step(sub: Negotiation, prov: Negotiation, event: Event, sender: Role | None, now: int = T0) -> None:
    """Perform a *valid* ``event`` from ``sender`` on both machines."""
    if sender is None:
        assert sub.expire(now=now + 10_000) and prov.expire(now=now + 10_000)
        return
    src, dst = (sub, prov) if sender is S else (prov, sub)
    if event is Event.OFFER:
        frame = sub.send_offer(V.job_envelope(SK), expires_at=now + 60, now=now)
    elif event is Event.QUOTE:
        frame = prov.send_quote(price=1_000_000, estimated_start=now, queue_position=0,
                                reservation_expires_at=now + 30, gpu_models=("h100",), now=now)
    elif event is Event.REFUSAL:
        frame = prov.send_refusal(RefusalReason.BUSY, "full", queue_depth=3, now=now)
    elif event is Event.ACCEPT:
        frame = sub.send_accept(now=now)
    elif event is Event.AGREEMENT:
        frame = prov.send_agreement(now=now)
    elif event is Event.CANCEL:
        frame = src.send_cancel(CancelReason.USER, "changed my mind", now=now)
    else:
        frame = prov.send_status(Phase(event.value), at=now,
                                 exit_code=0 if event is Event.FINISHED else None, now=now)
    deliver(frame, dst, now)


#: how to reach every state from idle (valid steps only)
PATHS: dict[State, list[tuple[Event, Role | None]]] = {
    State.IDLE: [],
    State.OFFERED: [(Event.OFFER, S)],
    State.QUOTED: [(Event.OFFER, S), (Event.QUOTE, P)],
    State.ACCEPTED: [(Event.OFFER, S), (Event.QUOTE, P), (Event.ACCEPT, S)],
    State.AGREED: [(Event.OFFER, S), (Event.QUOTE, P), (Event.ACCEPT, S), (Event.AGREEMENT, P)],
}
PATHS[State.TRANSFERRING] = PATHS[State.AGREED] + [(Event.TRANSFERRING, P)]
PATHS[State.QUEUED] = PATHS[State.AGREED] + [(Event.QUEUED, P)]
PATHS[State.RUNNING] = PATHS[State.AGREED] + [(Event.RUNNING, P)]
PATHS[State.FINISHED] = PATHS[State.RUNNING] + [(Event.FINISHED, P)]
PATHS[State.FAILED] = PATHS[State.AGREED] + [(Event.FAILED, P)]
PATHS[State.REFUSED] = PATHS[State.OFFERED] + [(Event.REFUSAL, P)]
PATHS[State.CANCELLED] = PATHS[State.OFFERED] + [(Event.CANCEL, S)]
PATHS[State.EXPIRED] = PATHS[State.OFFERED] + [(Event.EXPIRE, None)]


def machines_in(state: State) -> tuple[Negotiation, Negotiation]:
    sub, prov = V.pair()
    for event, sender in PATHS[state]:
        step(sub, prov, event, sender)
    assert sub.state is state and prov.state is state
    return sub, prov


def raw_message(event: Event, sender: Role, src: Negotiation) -> Message:
    """A well-formed message for ``event`` that ignores whether the state allows it."""
    h = {"negotiation_id": NID, "submitter": src.submitter, "provider": src.provider,
         "seq": src._seq[sender]}
    z = b"\x00" * 32
    terms = Terms(negotiation_id=NID, submitter=src.submitter, provider=src.provider, job_digest=z,
                  offer_digest=z, quote_digest=z, price=1, estimated_start=T0, max_run_s=600)
    if event is Event.OFFER:
        return Offer(**h, job=V.job_envelope(SK), expires_at=T0 + 60)
    if event is Event.QUOTE:
        return Quote(**h, offer_digest=z, price=1, estimated_start=T0, queue_position=0,
                     reservation_expires_at=T0 + 30, max_run_s=600, gpu_models=())
    if event is Event.REFUSAL:
        return Refusal(**h, in_reply_to=z, reason=RefusalReason.MALFORMED, detail="", queue_depth=None)
    if event is Event.ACCEPT:
        return Accept(**h, quote_digest=z, terms=terms, submitter_sig=bytes(64))
    if event is Event.AGREEMENT:
        return Agreement(**h, accept_digest=z, terms=terms, submitter_sig=bytes(64), provider_sig=bytes(64))
    if event is Event.CANCEL:
        return Cancel(**h, reason=CancelReason.USER, detail="")
    return JobStatus(**h, terms_digest=src.terms_digest or z, phase=Phase(event.value), at=T0, detail="",
                     exit_code=None)


MESSAGE_EVENTS = [e for e in Event if e is not Event.EXPIRE]


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
@pytest.mark.parametrize("event", MESSAGE_EVENTS, ids=lambda e: e.value)
@pytest.mark.parametrize("sender", [S, P], ids=lambda r: r.value)
def test_every_state_every_event(state: State, event: Event, sender: Role) -> None:
    sub, prov = machines_in(state)
    src, dst = (sub, prov) if sender is S else (prov, sub)
    target = TRANSITIONS.get((state, event, sender))
    if (state, event, sender) == (State.IDLE, Event.REFUSAL, P):
        # Only the provider is ever idle when refusing: the offer it got failed a check.
        offer = sub.send_offer(V.job_envelope(SK), expires_at=T0 + 60, now=T0)
        prov.receive_data(offer)
        with pytest.raises(ProtocolError):
            prov.next_event(now=T0 + 61)  # arrived expired
        assert prov.state is State.IDLE
        deliver(prov.send_refusal(RefusalReason.EXPIRED, in_reply_to=_digest(offer), now=T0 + 61), sub)
        assert sub.state is target and prov.state is target
        return
    if target is not None:
        step(sub, prov, event, sender)
        assert sub.state is target and prov.state is target
        return
    msg = raw_message(event, sender, src)
    key = SK if sender is S else PK
    if dst.role is S and state is State.IDLE:
        with pytest.raises(LocalProtocolError):  # a submitter receives nothing before its offer
            dst.receive_data(seal(msg, key).raw)
    else:
        dst.receive_data(seal(msg, key).raw)
        with pytest.raises(ProtocolError) as info:
            dst.next_event(now=T0)
        assert info.value.reason == "unexpected_message"
        assert dst.state is state
    if src.role is sender:
        with pytest.raises(LocalProtocolError):
            src.send(msg, now=T0)
        assert src.state is state


@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_expire_in_every_state(state: State) -> None:
    sub, prov = machines_in(state)
    allowed = (state, Event.EXPIRE, None) in TRANSITIONS
    for m in (sub, prov):
        assert m.expire(now=T0 - 1) is False  # never before the deadline
        assert m.expire(now=T0 + 10_000) is allowed
        assert m.state is (State.EXPIRED if allowed else state)


def test_table_shape() -> None:
    # every non-terminal state has a way out; terminal states have none
    sources = {s for s, _, _ in TRANSITIONS}
    assert sources.isdisjoint(TERMINAL_STATES)
    assert set(State) - TERMINAL_STATES <= sources
    assert all(sender is None for _, e, sender in TRANSITIONS if e is Event.EXPIRE)


def test_agreement_is_cosigned_and_verifiable_alone() -> None:
    sub, prov = machines_in(State.AGREED)
    assert sub.agreement is not None and prov.agreement is not None
    assert sub.agreement.raw == prov.agreement.raw
    assert verify_agreement(sub.agreement.message) == sub.terms_digest == prov.terms_digest
    forged = sub.agreement.message.replace(provider_sig=sub.agreement.message.submitter_sig)
    with pytest.raises(ProtocolError) as info:
        verify_agreement(forged)
    assert info.value.reason == "bad_signature"


# --------------------------------------------------------------------------- replay


def _received_frames() -> list[tuple[str, bytes, int]]:
    return V.happy_transcript()


@pytest.mark.parametrize("index", range(7))
def test_replay_of_every_message_in_session(index: int) -> None:
    """Each frame delivered a second time (right after it was applied) is rejected."""
    sub, prov = V.pair()
    transcript = _received_frames()
    for who, frame, now in transcript[: index + 1]:
        m = prov if who == "provider" else sub
        src = sub if who == "provider" else prov
        src.send(_decode(frame), now=now)  # keep the sender in step
        deliver(frame, m, now)
    who, frame, now = transcript[index]
    m = prov if who == "provider" else sub
    before = m.state
    m.receive_data(frame)
    with pytest.raises(ProtocolError) as info:
        m.next_event(now=now)
    assert info.value.reason in {"unexpected_message", "bad_sequence"}
    assert m.state is before


@pytest.mark.parametrize("kind", ["refusal", "cancel-by-submitter", "cancel-by-provider", "failed"])
def test_replay_of_refusal_cancel_and_failure(kind: str) -> None:
    start = {"refusal": State.OFFERED, "cancel-by-submitter": State.QUOTED,
             "cancel-by-provider": State.RUNNING, "failed": State.RUNNING}[kind]
    sub, prov = machines_in(start)
    if kind == "refusal":
        frame, dst = prov.send_refusal(RefusalReason.BUSY, queue_depth=2, now=T0), sub
    elif kind == "cancel-by-submitter":
        frame, dst = sub.send_cancel(CancelReason.USER, now=T0), prov
    elif kind == "cancel-by-provider":
        frame, dst = prov.send_cancel(CancelReason.SHUTDOWN, now=T0), sub
    else:
        frame, dst = prov.send_status(Phase.FAILED, at=T0, detail="oom", now=T0), sub
    deliver(frame, dst)
    final = dst.state
    assert final in TERMINAL_STATES
    dst.receive_data(frame)
    with pytest.raises(ProtocolError) as info:
        dst.next_event(now=T0)
    assert info.value.reason == "unexpected_message" and dst.state is final


def _digest(frame: bytes) -> bytes:
    import hashlib

    return hashlib.sha256(frame).digest()


def _decode(frame: bytes) -> Message:
    from protocol.envelope import open_envelope

    return open_envelope(frame).message


def test_replayed_offer_in_fresh_session_is_refused() -> None:
    cache = MemoryReplayCache()
    sub, prov = V.pair(cache=cache)
    offer = sub.send_offer(V.job_envelope(SK), expires_at=T0 + 60, now=T0)
    deliver(offer, prov)
    _, prov2 = V.pair(cache=cache)
    prov2.receive_data(offer)
    with pytest.raises(ProtocolError) as info:
        prov2.next_event(now=T0 + 5)
    assert info.value.reason == "replayed"
    assert prov2.state is State.IDLE
    # the provider can still refuse it, bound to the replayed negotiation
    frame = prov2.send_refusal(RefusalReason.REPLAYED, in_reply_to=bytes(32), now=T0 + 5)
    assert prov2.state is State.REFUSED and frame


def test_replay_cache_forgets_only_after_expiry() -> None:
    cache = MemoryReplayCache(max_entries=2)
    k = replay_key("a", NID)
    assert cache.remember(k, 100, now=10)
    assert not cache.remember(k, 100, now=99)
    assert cache.remember(replay_key("b", NID), 100, now=10)
    with pytest.raises(ProtocolError):  # full of live entries: refuse, never forget early
        cache.remember(replay_key("c", NID), 100, now=10)
    assert cache.remember(replay_key("c", NID), 300, now=101)  # expired ones pruned
    assert len(cache) == 1


# --------------------------------------------------------------------------- confusion


def test_offer_expiry_and_ttl_checked_against_now() -> None:
    sub, prov = V.pair()
    with pytest.raises(LocalProtocolError):
        sub.send_offer(V.job_envelope(SK), expires_at=T0, now=T0)
    with pytest.raises(LocalProtocolError):
        sub.send_offer(V.job_envelope(SK), expires_at=T0 + 100_000, now=T0)
    frame = sub.send_offer(V.job_envelope(SK), expires_at=T0 + 60, now=T0)
    prov.receive_data(frame)
    with pytest.raises(ProtocolError) as info:
        prov.next_event(now=T0 + 60)
    assert info.value.reason == "expired"


def test_job_signed_by_someone_else_is_rejected() -> None:
    sub, prov = V.pair()
    other = V.key_of(V.OTHER_SEED)
    msg = Offer(negotiation_id=NID, submitter=sub.submitter, provider=sub.provider, seq=0,
                job=V.job_envelope(other), expires_at=T0 + 60)
    prov.receive_data(seal(msg, SK).raw)
    with pytest.raises(ProtocolError) as info:
        prov.next_event(now=T0)
    assert info.value.reason == "wrong_signer"


def test_quote_above_max_price_and_mismatched_terms_rejected() -> None:
    sub, prov = machines_in(State.OFFERED)
    with pytest.raises(LocalProtocolError):
        prov.send_quote(price=10**12, estimated_start=T0, queue_position=0,
                        reservation_expires_at=T0 + 30, gpu_models=(), now=T0)
    step(sub, prov, Event.QUOTE, P)
    good = sub.expected_terms()
    bad = Accept(negotiation_id=NID, submitter=sub.submitter, provider=sub.provider, seq=1,
                 quote_digest=good.quote_digest, terms=good.replace(price=1), submitter_sig=bytes(64))
    prov.receive_data(seal(bad, SK).raw)
    with pytest.raises(ProtocolError) as info:
        prov.next_event(now=T0)
    assert info.value.reason == "terms_mismatch"


def test_persisted_machine_resumes_the_transcript() -> None:
    sub, prov = machines_in(State.AGREED)
    rec = prov.to_record()
    prov2 = Negotiation.from_record(rec, key=PK, replay_cache=MemoryReplayCache())
    assert prov2.state is State.AGREED and prov2.terms_digest == prov.terms_digest
    frame = prov2.send_status(Phase.RUNNING, at=T0, now=T0)
    deliver(frame, sub)
    assert sub.state is State.RUNNING


# --------------------------------------------------------------------------- random abuse


def _frame_pool() -> list[bytes]:
    t = [f for _, f, _ in V.happy_transcript()]
    sub, prov = machines_in(State.OFFERED)
    t.append(prov.send_refusal(RefusalReason.BUSY, queue_depth=1, now=T0))
    sub, prov = machines_in(State.QUOTED)
    t.append(sub.send_cancel(CancelReason.CHOSE_OTHER, now=T0))
    mutated = [f[:-1] + bytes([f[-1] ^ 1]) for f in t[:3]] + [f[:10] for f in t[:3]]
    other = V.key_of(V.OTHER_SEED)
    resigned = [seal(_decode(f), other).raw for f in t[:3]]
    mixed_keys = cbor.encode({1: b"", "key": b"", "sig": b"", "type": 32})  # once raised TypeError
    return t + mutated + resigned + [b"", b"\xa0", b"\x80" * 3, mixed_keys]


POOL = _frame_pool()


def test_every_pool_frame_is_a_protocol_error_or_valid_for_a_fresh_provider() -> None:
    for frame in POOL:
        _, prov = V.pair()
        prov.receive_data(frame)
        try:
            prov.next_event(now=T0)
        except ProtocolError:
            assert prov.state in (State.IDLE,)


@settings(max_examples=150, deadline=None)
@given(
    role=st.sampled_from([S, P]),
    ops=st.lists(st.tuples(st.integers(0, len(POOL) - 1), st.integers(-5, 400), st.binary(max_size=40)),
                 max_size=12),
)
def test_random_sequences_never_escape_the_table(role: Role, ops: list[tuple[int, int, bytes]]) -> None:
    sub, prov = V.pair()
    m = prov
    if role is S:
        m = sub
        m.send_offer(V.job_envelope(SK), expires_at=T0 + 60, now=T0)
    for index, dt, junk in ops:
        frame = POOL[index] if dt % 7 else junk
        before = m.state
        m.receive_data(frame)
        try:
            event = m.next_event(now=T0 + dt)
        except ProtocolError:
            assert m.state is before
            continue
        assert event is not NEED_DATA
        from protocol.negotiation_state import event_of

        assert TRANSITIONS[(before, event_of(event.message), role.other)] is m.state
        assert isinstance(m.state, State)


@pytest.mark.parametrize(
    ("created_at", "reason"),
    [(T0 + 301, "from_future"), (T0 - 86401, "expired"), (T0 + 300, None), (T0 - 86400, None)],
)
def test_provider_checks_the_freshness_of_the_offered_spec(created_at: int, reason: str | None) -> None:
    """jobspec.md "Freshness", applied to every offer (negotiation.md §5); a failing
    offer is not remembered, so the same ID with a fresh spec is not a replay."""
    sub, prov = V.pair()
    frame = sub.send_offer(V.job_envelope(SK, created_at=created_at), expires_at=T0 + 60, now=T0)
    prov.receive_data(frame)
    if reason is None:
        assert prov.next_event(now=T0) is not NEED_DATA
        assert prov.state is State.OFFERED
        return
    with pytest.raises(ProtocolError) as exc:
        prov.next_event(now=T0)
    assert exc.value.reason == reason
    assert prov.state is State.IDLE
    assert prov.replay_cache is not None and len(prov.replay_cache) == 0  # type: ignore[arg-type]


def test_a_resent_status_is_recognised_after_a_restore() -> None:
    """negotiation.md §1.3: a provider that lost the "ok" sends the same frame again;
    the submitter (restored from storage) sees it is the one it applied."""
    sub, prov = V.pair()
    deliver(sub.send_offer(V.job_envelope(SK), expires_at=T0 + 60, now=T0), prov)
    deliver(prov.send_quote(price=1, estimated_start=T0, queue_position=0, reservation_expires_at=T0 + 30,
                            gpu_models=(), now=T0), sub)
    deliver(sub.send_accept(now=T0), prov)
    deliver(prov.send_agreement(now=T0), sub)
    status = prov.send_status(Phase.RUNNING, at=T0 + 1, now=T0 + 1)
    assert not sub.is_duplicate(status)
    deliver(status, sub, T0 + 1)
    restored = Negotiation.from_record(cbor.decode(cbor.encode(sub.to_record())), key=SK)
    assert restored.is_duplicate(status)
    assert not restored.is_duplicate(prov.send_status(Phase.FINISHED, at=T0 + 2, exit_code=0, now=T0 + 2))
    restored.receive_data(status)  # applying it again is not allowed
    with pytest.raises(ProtocolError) as exc:
        restored.next_event(now=T0 + 1)
    assert exc.value.reason == "unexpected_message"
    older = sub.to_record()
    del older["last_received"]  # a record stored before this field existed
    assert not Negotiation.from_record(older, key=SK).is_duplicate(status)


def test_frames_split_on_the_length_prefix() -> None:
    from protocol.framing import decode_frame, encode_frame

    data = encode_frame(b"abc") + encode_frame(b"") + encode_frame(b"x" * 300)[:5]
    assert decode_frame(data, 1000) == (b"abc", 4)
    assert decode_frame(data[4:], 1000) == (b"", 1)
    assert decode_frame(data[5:], 1000) is None  # needs the rest of the body
    assert decode_frame(b"", 1000) is None
    assert decode_frame(b"\x80", 1000) is None  # needs the rest of the prefix
    with pytest.raises(ProtocolError, match="oversize"):
        decode_frame(encode_frame(b"x" * 11)[:2], 10)  # refused on the prefix alone
    with pytest.raises(ProtocolError, match="malformed"):
        decode_frame(b"\x80" * 10, 1 << 20)
