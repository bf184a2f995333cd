"""The negotiation state machine (sans-IO, in the h11/wsproto style).

One :class:`Negotiation` object tracks one negotiation between one submitter
and one provider, from either side (``role``).  Both sides run the *same*
machine over the *same* transcript, so they agree on the state after every
message.  The transitions are data (:data:`TRANSITIONS`, in
:mod:`protocol.negotiation_table`); spec/negotiation.md contains the same table
and a test compares the two.

Byte interface: :meth:`Negotiation.send` returns one frame (a signed
envelope) to hand to the transport; :meth:`Negotiation.receive_data` takes one
frame from it; :meth:`Negotiation.next_event` verifies, checks and applies it
and returns the verified :class:`~protocol.envelope.Signed` message.  Framing
(a uvarint length prefix) belongs to the transport (node/p2p.FramedStream).

Errors split by blame: a frame from the peer that breaks any rule raises
:class:`ProtocolError` and leaves the state *unchanged* (the message has no
effect, so garbage, replays and reordered messages cannot move the state);
sending something the state does not allow, or building a message that breaks
a rule (:func:`protocol.wire.build`), raises :class:`LocalProtocolError`.

Replay and confusion protection, all checked here:

* every message names the negotiation ID and both peer IDs, and the envelope
  must be signed by the peer who is the sender in that role;
* every message carries its sender's sequence number, which must be exactly
  the next one (a replayed or reordered message fails);
* offers expire (``expires_at``) and a provider remembers every offer it saw
  until then in a :class:`ReplayCache` (:mod:`protocol.negotiation_replay`), so a replayed offer is refused even
  in a fresh negotiation object (and, with a persistent cache, after a
  restart);
* quotes, accepts, agreements and status events name the digest of the
  message they answer or the terms they belong to.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import cbor
from .envelope import Signed, open_envelope, public_key_proto_of, seal
from .errors import LocalProtocolError, ProtocolError
from .identity import peer_id_from_proto_key
from .jobspec import JobSpec, check_created_at
from .negotiation import (
    NEGOTIATION_ID_LEN,
    NEGOTIATION_MESSAGES,
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
    sign_terms,
    terms_digest,
    validate_peer_id,
    verify_terms_signature,
)
from .negotiation_replay import MemoryReplayCache, ReplayCache, replay_key
from .negotiation_table import SENDERS, TERMINAL_STATES, TRANSITIONS, Event, Role, State, event_of
from .wire import Message, build

__all__ = [
    "Role",
    "State",
    "Event",
    "NEED_DATA",
    "TRANSITIONS",
    "TERMINAL_STATES",
    "MAX_FRAME",
    "FRAME_LIMITS",
    "MAX_OFFER_TTL",
    "MAX_RESERVATION",
    "CLOCK_SKEW",
    "PROTOCOL_ID",
    "STATUS_PROTOCOL_ID",
    "STATUS_ACK",
    "STEP_TIMEOUT_S",
    "SESSION_TIMEOUT_S",
    "OFFER_TTL_S",
    "ReplayCache",
    "MemoryReplayCache",
    "replay_key",
    "event_of",
    "Negotiation",
]

MAX_FRAME: Final = 1 << 20  #: bytes in one negotiation frame (a job spec envelope fits easily)
FRAME_LIMITS: Final = cbor.Limits(max_size=MAX_FRAME, max_depth=16, max_items=4096)
MAX_OFFER_TTL: Final = 300  #: seconds an offer may stay valid (bounds the replay cache)
MAX_RESERVATION: Final = 600  #: seconds a quote may hold capacity
CLOCK_SKEW: Final = 30  #: seconds of tolerated clock difference between peers

# Wire facts of spec/negotiation.md sections 1 and 7, in one place (node/ serves them).
PROTOCOL_ID: Final = "/cpn/negotiate/0.1.0"  #: offer .. agreement, one stream per negotiation
STATUS_PROTOCOL_ID: Final = "/cpn/negotiate/status/0.1.0"  #: one status or cancel per stream
STATUS_ACK: Final = b"ok"  #: the submitter's answer on the status stream once it stored the event
STEP_TIMEOUT_S: Final = 10  #: default: one frame read or write
SESSION_TIMEOUT_S: Final = 30  #: default: a whole negotiation on one stream
OFFER_TTL_S: Final = 60  #: default: how long an offer a submitter sends stays valid


class _NeedData(enum.Enum):
    NEED_DATA = "need_data"


#: Returned by :meth:`Negotiation.next_event` when no frame is waiting.
NEED_DATA: Final = _NeedData.NEED_DATA

S, P = Role.SUBMITTER, Role.PROVIDER


# --------------------------------------------------------------------------- the machine


class Negotiation:
    """One negotiation seen from ``role``.

    ``key`` is this node's identity key; its peer ID must be ``submitter``
    (role submitter) or ``provider`` (role provider).  A provider learns the
    negotiation ID from the first offer, so it passes ``negotiation_id=None``;
    ``replay_cache`` is required for a provider.
    """

    def __init__(
        self,
        role: Role,
        *,
        key: Ed25519PrivateKey,
        submitter: str,
        provider: str,
        negotiation_id: bytes | None = None,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        validate_peer_id(submitter)
        validate_peer_id(provider)
        if submitter == provider:
            raise LocalProtocolError("submitter and provider must be different peers")
        self.role = role
        self.submitter = submitter
        self.provider = provider
        self._key = key
        me = peer_id_from_proto_key(public_key_proto_of(key))
        if me != (submitter if role is S else provider):
            raise LocalProtocolError(f"key belongs to {me}, not to the {role.value}")
        if role is S and (negotiation_id is None or len(negotiation_id) != NEGOTIATION_ID_LEN):
            raise LocalProtocolError(f"a submitter picks a {NEGOTIATION_ID_LEN}-byte negotiation ID")
        if role is P and replay_cache is None:
            raise LocalProtocolError("a provider needs a replay cache")
        self.negotiation_id = negotiation_id
        self.replay_cache = replay_cache
        self.state = State.IDLE
        self._seq = {S: 0, P: 0}
        self._incoming: deque[bytes] = deque()
        self._sent: set[bytes] = set()  # digests of our own envelopes (refusals answer one)
        self.offer: Signed[Offer] | None = None
        self.job: Signed[Any] | None = None
        self.quote: Signed[Quote] | None = None
        self.accept: Signed[Accept] | None = None
        self.agreement: Signed[Agreement] | None = None
        self.terms_digest: bytes | None = None
        self.last: Signed[Message] | None = None  #: the last applied message, either side
        self._last_received: bytes | None = None  # the last frame applied from the peer

    # ---- public API

    @property
    def peer(self) -> str:
        """The other party's peer ID."""
        return self.provider if self.role is S else self.submitter

    @property
    def deadline(self) -> int | None:
        """When the current state expires (unix seconds), if it does."""
        if self.state is State.OFFERED and self.offer is not None:
            return self.offer.message.expires_at
        if self.state is State.QUOTED and self.quote is not None:
            return self.quote.message.reservation_expires_at
        return None

    def send(self, msg: Message, *, now: int) -> bytes:
        """Sign ``msg`` as our next message; return the frame to transmit.

        Raises :class:`LocalProtocolError` if the state, the binding, the
        sequence number or the content would make the peer reject it.
        """
        try:
            self._check(msg, self.role, now, raw=None)
        except ProtocolError as exc:
            raise LocalProtocolError(f"cannot send {type(msg).__name__}: {exc}") from None
        signed = seal(msg, self._key)
        self._apply(signed, self.role)
        self._sent.add(signed.digest)
        return signed.raw

    def receive_data(self, frame: bytes) -> None:
        """Queue one frame received from the peer (checked by :meth:`next_event`)."""
        if self.state is State.IDLE and self.role is S:
            raise LocalProtocolError("a submitter sends its offer before receiving anything")
        self._incoming.append(bytes(frame))

    def next_event(self, *, now: int) -> Signed[Message] | _NeedData:
        """Verify and apply the next queued frame; :data:`NEED_DATA` if none.

        Raises :class:`ProtocolError` (state unchanged) for a frame that is
        oversize, malformed, badly signed, signed by anyone but the peer, bound
        to another negotiation or peers, out of sequence, replayed, expired,
        inconsistent with the transcript, or not allowed in this state.
        """
        if not self._incoming:
            return NEED_DATA
        frame = self._incoming.popleft()
        if len(frame) > MAX_FRAME:
            raise ProtocolError("oversize", f"frame of {len(frame)} bytes exceeds {MAX_FRAME}")
        signed: Signed[Message] = open_envelope(
            frame, expected=NEGOTIATION_MESSAGES, signer=self.peer, limits=FRAME_LIMITS
        )
        sender = self.role.other
        if self.role is P and self.state is State.IDLE and isinstance(signed.message, Offer):
            # Adopt the ID even if the offer fails later checks, so the refusal can name it.
            self.negotiation_id = signed.message.negotiation_id
        self._check(signed.message, sender, now, raw=signed)
        self._apply(signed, sender)
        self._last_received = frame
        return signed

    def is_duplicate(self, frame: bytes) -> bool:
        """True if ``frame`` is byte for byte the last frame applied from the peer.

        A provider that did not get the status stream's acknowledgement sends
        the same status again (same ``seq``, same bytes); the submitter already
        applied it, so the machine would reject it (``unexpected_message``).
        The receiver acknowledges such a duplicate again and applies nothing
        (spec/negotiation.md section 1).  Survives :meth:`to_record`."""
        return self._last_received is not None and bytes(frame) == self._last_received

    def expire(self, *, now: int) -> bool:
        """Move to ``expired`` if the current state's deadline has passed."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return False
        self.state = TRANSITIONS[(self.state, Event.EXPIRE, None)]
        return True

    # ---- message builders (fill in the binding header and our sequence number)

    def _header(self, role: Role) -> dict[str, Any]:
        if self.negotiation_id is None:
            raise LocalProtocolError("no negotiation ID yet (no offer received)")
        return {
            "negotiation_id": self.negotiation_id,
            "submitter": self.submitter,
            "provider": self.provider,
            "seq": self._seq[role],
        }

    def send_offer(self, job: bytes, *, expires_at: int, now: int) -> bytes:
        return self.send(build(Offer, **self._header(S), job=job, expires_at=expires_at), now=now)

    def send_quote(
        self,
        *,
        price: int,
        estimated_start: int,
        queue_position: int,
        reservation_expires_at: int,
        gpu_models: tuple[str, ...],
        now: int,
    ) -> bytes:
        offer = self._need(self.offer, "offer")
        msg = build(
            Quote, **self._header(P),
            offer_digest=offer.digest,
            price=price,
            estimated_start=estimated_start,
            queue_position=queue_position,
            reservation_expires_at=reservation_expires_at,
            max_run_s=self._job_run_s(),
            gpu_models=gpu_models,
        )
        return self.send(msg, now=now)

    def send_refusal(
        self,
        reason: RefusalReason,
        detail: str = "",
        *,
        in_reply_to: bytes | None = None,
        queue_depth: int | None = None,
        now: int,
    ) -> bytes:
        """Refuse the submitter's last message (or the frame whose digest is ``in_reply_to``)."""
        if in_reply_to is None:
            last = self.accept if self.state is State.ACCEPTED else self.offer
            in_reply_to = self._need(last, "message to refuse").digest
        msg = build(
            Refusal, **self._header(P),
            in_reply_to=in_reply_to,
            reason=reason,
            detail=detail[:1024],
            queue_depth=queue_depth,
        )
        return self.send(msg, now=now)

    def expected_terms(self) -> Terms:
        """The terms an accept of the current quote must carry."""
        offer, quote = self._need(self.offer, "offer"), self._need(self.quote, "quote")
        q = quote.message
        return Terms(
            negotiation_id=q.negotiation_id,
            submitter=self.submitter,
            provider=self.provider,
            job_digest=offer.message.job_digest,
            offer_digest=offer.digest,
            quote_digest=quote.digest,
            price=q.price,
            estimated_start=q.estimated_start,
            max_run_s=q.max_run_s,
        )

    def send_accept(self, *, now: int) -> bytes:
        terms = self.expected_terms()
        msg = build(
            Accept, **self._header(S),
            quote_digest=terms.quote_digest,
            terms=terms,
            submitter_sig=sign_terms(terms, self._key),
        )
        return self.send(msg, now=now)

    def send_agreement(self, *, now: int) -> bytes:
        accept = self._need(self.accept, "accept")
        terms = accept.message.terms
        msg = build(
            Agreement, **self._header(P),
            accept_digest=accept.digest,
            terms=terms,
            submitter_sig=accept.message.submitter_sig,
            provider_sig=sign_terms(terms, self._key),
        )
        return self.send(msg, now=now)

    def send_cancel(self, reason: CancelReason, detail: str = "", *, now: int) -> bytes:
        msg = build(Cancel, **self._header(self.role), reason=reason, detail=detail[:1024])
        return self.send(msg, now=now)

    def send_status(
        self, phase: Phase, *, at: int, detail: str = "", exit_code: int | None = None, now: int
    ) -> bytes:
        digest = self.terms_digest
        if digest is None:
            raise LocalProtocolError("no agreement yet")
        msg = build(
            JobStatus, **self._header(P),
            terms_digest=digest,
            phase=phase,
            at=at,
            detail=detail[:1024],
            exit_code=exit_code,
        )
        return self.send(msg, now=now)

    # ---- checks (one place for both directions)

    @staticmethod
    def _need(value: Any, what: str) -> Any:
        if value is None:
            raise LocalProtocolError(f"no {what} in this negotiation yet")
        return value

    def _job_run_s(self) -> int:
        job = self._need(self.job, "job").message
        return int(job.timeouts.run_s)

    def _check(self, msg: Message, sender: Role, now: int, raw: Signed[Message] | None) -> None:
        if type(msg) not in SENDERS:
            raise ProtocolError("unexpected_type", f"{type(msg).__name__} is not a negotiation message")
        if sender not in SENDERS[type(msg)]:
            raise ProtocolError("unexpected_message", f"a {sender.value} does not send {type(msg).__name__}")
        event = event_of(msg)
        if (self.state, event, sender) not in TRANSITIONS:
            raise ProtocolError(
                "unexpected_message", f"{event.value} from {sender.value} in state {self.state.value}"
            )
        binding = (msg.negotiation_id, msg.submitter, msg.provider)  # type: ignore[attr-defined]
        if binding != (self.negotiation_id, self.submitter, self.provider):
            raise ProtocolError("binding_mismatch", "message names another negotiation or other peers")
        if msg.seq != self._seq[sender]:  # type: ignore[attr-defined]
            raise ProtocolError(
                "bad_sequence",
                f"{sender.value} message #{msg.seq} where #{self._seq[sender]} was due",  # type: ignore[attr-defined]
            )
        if isinstance(msg, Offer):
            self._check_offer(msg, now, incoming=raw is not None)
        elif isinstance(msg, Quote):
            self._check_quote(msg, now)
        elif isinstance(msg, Refusal):
            self._check_refusal(msg, sender)
        elif isinstance(msg, Accept):
            self._check_accept(msg, now, incoming=raw is not None)
        elif isinstance(msg, Agreement):
            self._check_agreement(msg, incoming=raw is not None)
        elif isinstance(msg, JobStatus):
            if msg.terms_digest != self.terms_digest:
                raise ProtocolError("binding_mismatch", "status names other terms than the agreement")

    def _check_offer(self, msg: Offer, now: int, *, incoming: bool) -> None:
        if msg.expires_at <= now:
            raise ProtocolError("expired", f"offer expired at {msg.expires_at}, now {now}")
        if msg.expires_at > now + MAX_OFFER_TTL + CLOCK_SKEW:
            raise ProtocolError("expiry_too_far", f"offers live at most {MAX_OFFER_TTL} s")
        job: Signed[JobSpec] = open_envelope(msg.job, expected=JobSpec, signer=self.submitter, limits=FRAME_LIMITS)
        if incoming:
            # jobspec.md "Freshness": a provider runs only recent specs.  Not
            # checked when sending: a submitter with an old spec learns it from
            # the provider's refusal instead of a local error.
            check_created_at(job.message, now=now)
        if incoming:
            assert self.replay_cache is not None
            key = replay_key(self.submitter, msg.negotiation_id)
            if not self.replay_cache.remember(key, msg.expires_at + CLOCK_SKEW, now):
                raise ProtocolError("replayed", "this offer was already received")
        self._pending_job = job

    def _check_quote(self, msg: Quote, now: int) -> None:
        offer = self._need(self.offer, "offer")
        if msg.offer_digest != offer.digest:
            raise ProtocolError("binding_mismatch", "quote answers another offer")
        if offer.message.expires_at <= now:
            raise ProtocolError("expired", "quote for an offer that has expired")
        if not now < msg.reservation_expires_at <= now + MAX_RESERVATION + CLOCK_SKEW:
            raise ProtocolError("bad_expiry", "reservation must end in the future, within the limit")
        job = self._need(self.job, "job").message
        if msg.price > job.max_price:
            raise ProtocolError("price_above_max", f"price {msg.price} exceeds the job's {job.max_price}")
        if msg.max_run_s != job.timeouts.run_s:
            raise ProtocolError("terms_mismatch", "quote's max_run_s differs from the job's run time")

    def _check_refusal(self, msg: Refusal, sender: Role) -> None:
        # On the submitter side a refusal must answer one of our own messages.
        if self.role is S and msg.in_reply_to not in self._sent:
            raise ProtocolError("binding_mismatch", "refusal answers no message of ours")

    def _check_accept(self, msg: Accept, now: int, *, incoming: bool) -> None:
        quote = self._need(self.quote, "quote")
        if msg.quote_digest != quote.digest:
            raise ProtocolError("binding_mismatch", "accept answers another quote")
        if now >= quote.message.reservation_expires_at:
            raise ProtocolError("expired", "the quote's reservation has expired")
        if msg.terms != self.expected_terms():
            raise ProtocolError("terms_mismatch", "accepted terms differ from the quote")
        if incoming:  # our own signature, when sending, was just made with our key
            verify_terms_signature(msg.terms, msg.submitter_sig, self.submitter)

    def _check_agreement(self, msg: Agreement, *, incoming: bool) -> None:
        accept = self._need(self.accept, "accept")
        if msg.accept_digest != accept.digest:
            raise ProtocolError("binding_mismatch", "agreement answers another accept")
        if msg.terms != accept.message.terms or msg.submitter_sig != accept.message.submitter_sig:
            raise ProtocolError("terms_mismatch", "agreement terms differ from the accepted terms")
        if incoming:
            verify_terms_signature(msg.terms, msg.provider_sig, self.provider)

    # ---- applying a checked message

    def _apply(self, signed: Signed[Message], sender: Role) -> None:
        msg = signed.message
        self.state = TRANSITIONS[(self.state, event_of(msg), sender)]
        self._seq[sender] += 1
        self.last = signed
        if isinstance(msg, Offer):
            self.offer = signed  # type: ignore[assignment]
            self.job = self._pending_job
        elif isinstance(msg, Quote):
            self.quote = signed  # type: ignore[assignment]
        elif isinstance(msg, Accept):
            self.accept = signed  # type: ignore[assignment]
        elif isinstance(msg, Agreement):
            self.agreement = signed  # type: ignore[assignment]
            self.terms_digest = terms_digest(msg.terms)

    _pending_job: Signed[Any] | None = None

    # ---- persistence (a restart resumes the same transcript)

    def to_record(self) -> dict[str, Any]:
        """A CBOR-able snapshot: state, counters and the raw envelopes that matter."""
        return {
            "role": self.role.value,
            "state": self.state.value,
            "negotiation_id": self.negotiation_id,
            "submitter": self.submitter,
            "provider": self.provider,
            "seq": [self._seq[S], self._seq[P]],
            "offer": self.offer.raw if self.offer else None,
            "quote": self.quote.raw if self.quote else None,
            "accept": self.accept.raw if self.accept else None,
            "agreement": self.agreement.raw if self.agreement else None,
            "sent": sorted(self._sent),
            "last_received": self._last_received,
        }

    @classmethod
    def from_record(
        cls, record: Mapping[str, Any], *, key: Ed25519PrivateKey, replay_cache: ReplayCache | None = None
    ) -> Negotiation:
        """Rebuild a machine from :meth:`to_record` (envelopes are verified again)."""
        role = Role(record["role"])
        neg = cls(
            role,
            key=key,
            submitter=record["submitter"],
            provider=record["provider"],
            negotiation_id=record["negotiation_id"],
            replay_cache=replay_cache if role is P else None,
        )
        if role is P and replay_cache is None:  # pragma: no cover - guarded by __init__
            raise LocalProtocolError("a provider needs a replay cache")
        neg.state = State(record["state"])
        neg._seq = {S: int(record["seq"][0]), P: int(record["seq"][1])}
        neg._sent = set(record["sent"])
        neg._last_received = record.get("last_received")  # absent in records of older versions
        if record["offer"] is not None:
            neg.offer = open_envelope(record["offer"], expected=Offer, signer=neg.submitter, limits=FRAME_LIMITS)
            neg.job = open_envelope(
                neg.offer.message.job, expected=JobSpec, signer=neg.submitter, limits=FRAME_LIMITS
            )
        if record["quote"] is not None:
            neg.quote = open_envelope(record["quote"], expected=Quote, signer=neg.provider, limits=FRAME_LIMITS)
        if record["accept"] is not None:
            neg.accept = open_envelope(record["accept"], expected=Accept, signer=neg.submitter, limits=FRAME_LIMITS)
        if record["agreement"] is not None:
            neg.agreement = open_envelope(
                record["agreement"], expected=Agreement, signer=neg.provider, limits=FRAME_LIMITS
            )
            neg.terms_digest = terms_digest(neg.agreement.message.terms)
        return neg
