"""Negotiation messages: offer, quote, refusal, accept, agreement, cancel, status
(spec/negotiation.md, message tags 32-63).

Every message travels in a signed envelope (:mod:`protocol.envelope`) and
carries the same *binding header*: the negotiation ID, the submitter's and the
provider's peer IDs, and the sender's sequence number.  A message is therefore
only meaningful inside the one negotiation between the two peers it names, in
the one position its sender gave it: a message replayed into another session,
against other peers, or out of order is rejected by the state machine
(:mod:`protocol.negotiation_state`) before it can have any effect.

The agreement is *co-signed*: both parties sign the sha256 of the same
canonical :class:`Terms` (domain ``cpn/negotiation/terms``), so either
signature alone proves nothing and the pair can be checked by anyone holding
the agreement (:func:`verify_agreement`), without the transcript.

Times are unix seconds (integers, no floats on the wire); prices are
micro-units.  Nothing here reads a clock: ``now`` is always a parameter.
"""

from __future__ import annotations

import enum
from functools import lru_cache
from hashlib import sha256
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .envelope import signing_bytes
from .errors import ProtocolError, ValidationError
from .identity import check_peer_id_field, public_key_of_peer
from .identity import validate_peer_id as _validate_peer_id
from .wire import Message, Struct, message, struct

__all__ = [
    "NEGOTIATION_ID_LEN",
    "DIGEST_LEN",
    "TERMS_DOMAIN",
    "TERMS_TAG",
    "MAX_DETAIL",
    "RefusalReason",
    "CancelReason",
    "Phase",
    "Offer",
    "Quote",
    "Refusal",
    "Accept",
    "Terms",
    "Agreement",
    "Cancel",
    "JobStatus",
    "NEGOTIATION_MESSAGES",
    "terms_digest",
    "sign_terms",
    "verify_terms_signature",
    "verify_agreement",
]

NEGOTIATION_ID_LEN: Final = 16
DIGEST_LEN: Final = 32
MAX_DETAIL: Final = 1024  #: characters of human-readable detail in refusals, cancels, status
#: Domain and type tag of the co-signature over the terms.  Tag 47 is reserved
#: for this: it never appears as an envelope type, so a terms signature can
#: never be mistaken for the signature of an envelope (and vice versa).
TERMS_DOMAIN: Final = "cpn/negotiation/terms"
TERMS_TAG: Final = 47


#: Peer-ID validation (a base58 round trip) dominated decoding a message; the
#: same two peer IDs recur in every message of a negotiation, so cache them.
#: Only successes are cached (an invalid ID raises every time).
validate_peer_id = lru_cache(maxsize=4096)(_validate_peer_id)
_peer_key = lru_cache(maxsize=4096)(public_key_of_peer)


class RefusalReason(enum.Enum):
    """Why a provider will not (or no longer) quote.  Machine-readable codes."""

    NO_MATCHING_GPU = "no_matching_gpu"
    INSUFFICIENT_GPU_MEMORY = "insufficient_gpu_memory"
    INSUFFICIENT_RESOURCES = "insufficient_resources"  #: CPU, memory or disk beyond the node's total
    BUSY = "busy"  #: capacity exists but is taken; ``queue_depth`` says by how many jobs
    NO_CONTAINER_RUNTIME = "no_container_runtime"
    IMAGE_TOO_LARGE = "image_too_large"
    POLICY_DENIED = "policy_denied"
    PRICE_TOO_LOW = "price_too_low"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    REPLAYED = "replayed"


class CancelReason(enum.Enum):
    """Why either side abandons a negotiation or an agreed job."""

    USER = "user"  #: the submitter's user asked for it
    CHOSE_OTHER = "chose_other"  #: the submitter accepted another provider's quote
    EXPIRED = "expired"  #: a deadline passed
    SHUTDOWN = "shutdown"  #: the node is stopping
    FAILURE = "failure"  #: a local failure makes the job impossible


class Phase(enum.Enum):
    """Later phases of an agreed job, reported by the provider."""

    TRANSFERRING = "transferring"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


def _check_header(m: Offer | Quote | Refusal | Accept | Agreement | Cancel | JobStatus) -> None:
    if len(m.negotiation_id) != NEGOTIATION_ID_LEN:
        raise ValidationError("negotiation_id", f"must be {NEGOTIATION_ID_LEN} bytes")
    check_peer_id_field(m.submitter, "submitter")
    check_peer_id_field(m.provider, "provider")
    if m.submitter == m.provider:
        raise ValidationError("provider", "must differ from submitter")
    if m.seq < 0:
        raise ValidationError("seq", "must be >= 0")


def _check_digest(value: bytes, field: str) -> None:
    if len(value) != DIGEST_LEN:
        raise ValidationError(field, f"must be a {DIGEST_LEN}-byte sha256")


def _check_detail(value: str, field: str = "detail") -> None:
    if len(value) > MAX_DETAIL:
        raise ValidationError(field, f"at most {MAX_DETAIL} characters")


@message(tag=32, domain="cpn/negotiation/offer")
class Offer(Message):
    """Submitter -> provider: "would you run this job, and for how much?"

    ``job`` is the submitter's signed JobSpec envelope, embedded whole so the
    provider can verify who wrote the job; ``negotiation_id`` is the offer's
    fresh random nonce, and ``expires_at`` bounds how long the provider must
    remember it to reject replays.
    """

    negotiation_id: bytes
    submitter: str
    provider: str
    seq: int
    job: bytes
    expires_at: int

    def check(self) -> None:
        _check_header(self)
        if not self.job:
            raise ValidationError("job", "must be a signed JobSpec envelope")
        if self.expires_at < 0:
            raise ValidationError("expires_at", "must be >= 0")

    @property
    def job_digest(self) -> bytes:
        return sha256(self.job).digest()


@message(tag=33, domain="cpn/negotiation/quote")
class Quote(Message):
    """Provider -> submitter: a price and a reservation held until ``reservation_expires_at``.

    The reserved GPU UUIDs are deliberately not disclosed (they would let
    anyone map a provider's hardware); ``gpu_models`` says what kind of GPU
    the job will get, which is all a submitter needs to compare quotes.
    """

    negotiation_id: bytes
    submitter: str
    provider: str
    seq: int
    offer_digest: bytes
    price: int
    estimated_start: int
    queue_position: int
    reservation_expires_at: int
    max_run_s: int
    gpu_models: tuple[str, ...]

    def check(self) -> None:
        _check_header(self)
        _check_digest(self.offer_digest, "offer_digest")
        for name in ("price", "estimated_start", "queue_position", "reservation_expires_at"):
            if getattr(self, name) < 0:
                raise ValidationError(name, "must be >= 0")
        if self.max_run_s <= 0:
            raise ValidationError("max_run_s", "must be > 0")
        if len(self.gpu_models) > 64:
            raise ValidationError("gpu_models", "at most 64 entries")


@message(tag=34, domain="cpn/negotiation/refusal")
class Refusal(Message):
    """Provider -> submitter: a machine-readable "no" to the message ``in_reply_to``."""

    negotiation_id: bytes
    submitter: str
    provider: str
    seq: int
    in_reply_to: bytes
    reason: RefusalReason
    detail: str
    queue_depth: int | None

    def check(self) -> None:
        _check_header(self)
        _check_digest(self.in_reply_to, "in_reply_to")
        _check_detail(self.detail)
        if self.reason is RefusalReason.BUSY:
            if self.queue_depth is None or self.queue_depth < 0:
                raise ValidationError("queue_depth", "a busy refusal gives the queue depth (>= 0)")
        elif self.queue_depth is not None:
            raise ValidationError("queue_depth", "only a busy refusal has a queue depth")


@struct
class Terms(Struct):
    """What both parties sign: the job, the quote it came from, and the price.

    Digests pin every detail (the job envelope, the offer, the quote) without
    copying them; ``negotiation_id`` doubles as the agreement's ID.
    """

    negotiation_id: bytes
    submitter: str
    provider: str
    job_digest: bytes
    offer_digest: bytes
    quote_digest: bytes
    price: int
    estimated_start: int
    max_run_s: int

    def check(self) -> None:
        if len(self.negotiation_id) != NEGOTIATION_ID_LEN:
            raise ValidationError("negotiation_id", f"must be {NEGOTIATION_ID_LEN} bytes")
        check_peer_id_field(self.submitter, "submitter")
        check_peer_id_field(self.provider, "provider")
        for name in ("job_digest", "offer_digest", "quote_digest"):
            _check_digest(getattr(self, name), name)
        if self.price < 0 or self.estimated_start < 0 or self.max_run_s <= 0:
            raise ValidationError("terms", "price and estimated_start >= 0, max_run_s > 0")


@message(tag=35, domain="cpn/negotiation/accept")
class Accept(Message):
    """Submitter -> provider: "I take this quote", with the submitter's terms signature."""

    negotiation_id: bytes
    submitter: str
    provider: str
    seq: int
    quote_digest: bytes
    terms: Terms
    submitter_sig: bytes

    def check(self) -> None:
        _check_header(self)
        _check_digest(self.quote_digest, "quote_digest")
        if len(self.submitter_sig) != 64:
            raise ValidationError("submitter_sig", "an Ed25519 signature is 64 bytes")


@message(tag=36, domain="cpn/negotiation/agreement")
class Agreement(Message):
    """Provider -> submitter: the co-signed terms; capacity is now committed."""

    negotiation_id: bytes
    submitter: str
    provider: str
    seq: int
    accept_digest: bytes
    terms: Terms
    submitter_sig: bytes
    provider_sig: bytes

    def check(self) -> None:
        _check_header(self)
        _check_digest(self.accept_digest, "accept_digest")
        for name in ("submitter_sig", "provider_sig"):
            if len(getattr(self, name)) != 64:
                raise ValidationError(name, "an Ed25519 signature is 64 bytes")


@message(tag=37, domain="cpn/negotiation/cancel")
class Cancel(Message):
    """Either side -> the other: abandon the negotiation or the agreed job."""

    negotiation_id: bytes
    submitter: str
    provider: str
    seq: int
    reason: CancelReason
    detail: str

    def check(self) -> None:
        _check_header(self)
        _check_detail(self.detail)


@message(tag=38, domain="cpn/negotiation/status")
class JobStatus(Message):
    """Provider -> submitter: the agreed job entered ``phase`` at time ``at``.

    ``terms_digest`` ties the event to the co-signed agreement (not only to the
    negotiation ID); ``exit_code`` is set only for ``finished``.
    """

    negotiation_id: bytes
    submitter: str
    provider: str
    seq: int
    terms_digest: bytes
    phase: Phase
    at: int
    detail: str
    exit_code: int | None

    def check(self) -> None:
        _check_header(self)
        _check_digest(self.terms_digest, "terms_digest")
        _check_detail(self.detail)
        if self.at < 0:
            raise ValidationError("at", "must be >= 0")
        if self.exit_code is not None and self.phase is not Phase.FINISHED:
            raise ValidationError("exit_code", "only a finished status has an exit code")


#: Every negotiation message class, in tag order.
NEGOTIATION_MESSAGES: Final[tuple[type[Message], ...]] = (
    Offer,
    Quote,
    Refusal,
    Accept,
    Agreement,
    Cancel,
    JobStatus,
)


# --------------------------------------------------------------------------- co-signature


@lru_cache(maxsize=1024)
def terms_digest(terms: Terms) -> bytes:
    """sha256 of the canonical CBOR of ``terms``: what both parties sign.

    Cached: the same (frozen, hashable) terms are hashed by the accept, the
    agreement, both signatures and every status check of a negotiation."""
    return sha256(terms.encode()).digest()


def _terms_signing_bytes(terms: Terms) -> bytes:
    return signing_bytes(TERMS_DOMAIN, TERMS_TAG, terms_digest(terms))


def sign_terms(terms: Terms, key: Ed25519PrivateKey) -> bytes:
    """This party's signature over ``terms`` (domain-separated, over its digest)."""
    return key.sign(_terms_signing_bytes(terms))


def verify_terms_signature(terms: Terms, signature: bytes, peer_id: str) -> None:
    """Raise ``ProtocolError('bad_signature')`` unless ``peer_id`` signed ``terms``."""
    try:
        _peer_key(peer_id).verify(signature, _terms_signing_bytes(terms))
    except InvalidSignature:
        raise ProtocolError("bad_signature", f"terms signature of {peer_id} does not verify") from None


def verify_agreement(agreement: Agreement) -> bytes:
    """Check an agreement stands on its own; return its terms digest.

    The terms must name the same negotiation and peers as the message, and
    both the submitter's and the provider's signatures must verify.
    """
    t = agreement.terms
    if (t.negotiation_id, t.submitter, t.provider) != (
        agreement.negotiation_id,
        agreement.submitter,
        agreement.provider,
    ):
        raise ProtocolError("binding_mismatch", "agreement terms name another negotiation or peers")
    verify_terms_signature(t, agreement.submitter_sig, t.submitter)
    verify_terms_signature(t, agreement.provider_sig, t.provider)
    return terms_digest(t)
