"""Signed advert records: what a provider offers, for how long (spec/discovery.md).

An :class:`Advert` is a provider's self-description: who it is (peer ID and
addresses), what it has (a :class:`~protocol.resources.ResourceSet` plus
CATS-style metrics), what is free right now, what it charges, which container
limits it has *verified* it can enforce, the compute identifiers it provides in
the DHT, and a validity window.  A :class:`Tombstone` withdraws every advert of
the same peer with a sequence number not above its own.

Both travel in signed envelopes (:mod:`protocol.envelope`), so a record can be
relayed by any DHT node and still be checked end to end: the envelope's key
must be the key of the peer the record names.  Validation is pure and takes
``now`` explicitly; the same function runs when a DHT peer asks us to store a
record, when a DHT lookup hands one back and when a provider sends its advert
directly.  Nothing here keeps state: the freshest record among several is
chosen by :func:`select_newest`.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping, Sequence
from typing import Final, TypeAlias

from . import cbor
from .envelope import Signed, open_envelope
from .errors import LocalProtocolError, ProtocolError, ValidationError
from .identifiers import advertised_ids, parse_id
from .identity import check_peer_id_field
from .resources import MAX_GPUS, Metric, ResourceSet
from .wire import Message, Struct, message, struct

__all__ = [
    "Advert",
    "Tombstone",
    "FreeCapacity",
    "Price",
    "ContainerCapability",
    "NO_CONTAINER",
    "Record",
    "DEFAULT_LIFETIME",
    "MAX_LIFETIME",
    "MAX_CLOCK_SKEW",
    "MAX_RECORD_SIZE",
    "RECORD_LIMITS",
    "MAX_ADDRS",
    "MAX_GPUS",
    "MAX_METRICS",
    "MAX_COMPUTE_IDS",
    "MAX_LIMITS",
    "validate_advert",
    "validate_tombstone",
    "validate_record",
    "open_record",
    "select_newest",
    "select_opened",
    "select_raw",
    "refresh_due",
    "next_seq",
    "make_advert",
    "all_free",
]

#: Default validity of an advert (seconds).  Refresh at half of it.
DEFAULT_LIFETIME: Final = 300
#: Longest validity a finder or DHT node accepts (issue 3: at most 10 minutes).
MAX_LIFETIME: Final = 600
#: How far in the future ``issued_at`` may lie before a record is "not yet valid".
MAX_CLOCK_SKEW: Final = 30

#: Size bounds: a record is small, so a DHT node can hold many and a flood of
#: huge records costs the sender, not us.
MAX_RECORD_SIZE: Final = 32 * 1024
RECORD_LIMITS: Final = cbor.Limits(max_size=MAX_RECORD_SIZE, max_depth=8, max_items=256)
MAX_ADDRS: Final = 16
MAX_ADDR_LEN: Final = 256
MAX_METRICS: Final = 64
MAX_COMPUTE_IDS: Final = 256
MAX_LIMITS: Final = 16
MAX_TEXT: Final = 128

_MULTIADDR_RE = re.compile(r"^(/[A-Za-z0-9._~:%+\-\[\]=]+)+\Z")
_TOKEN_RE = re.compile(r"^[a-z0-9][a-z0-9._/+\-]*\Z")
_UINT_FIELDS = ("cpu_millis", "memory_mib", "disk_mib")


def _uint(name: str, value: int) -> None:
    if value < 0:
        raise ValidationError(name, "must be >= 0")


def _token(name: str, value: str) -> None:
    if not value or len(value) > MAX_TEXT or not _TOKEN_RE.match(value):
        raise ValidationError(name, "must be a short lowercase token ([a-z0-9._/+-])")


def _unique(name: str, values: Sequence[str]) -> None:
    if len(set(values)) != len(values):
        raise ValidationError(name, "must not contain duplicates")


@struct
class FreeCapacity(Struct):
    """Capacity not committed to running or reserved jobs, at ``issued_at``.

    GPUs are named by UUID (a subset of ``resources.gpus``), so a finder can
    see *which* GPU model is free on a host with a mix.
    """

    gpu_uuids: tuple[str, ...]
    cpu_millis: int  #: 1000 = one core
    memory_mib: int
    disk_mib: int

    def check(self) -> None:
        for name in _UINT_FIELDS:
            _uint(name, getattr(self, name))
        _unique("gpu_uuids", self.gpu_uuids)


@struct
class Price(Struct):
    """Asking price in integer micro-units of account per hour (1_000_000 = 1 unit).

    A job's price is the sum of its GPUs, CPU cores and memory over its run
    time, rounded up (see :func:`protocol.matching.estimate_cost`); integers
    keep it exact and float-free on the wire.  Zero is free.
    """

    gpu_hour: int  #: per whole GPU
    cpu_core_hour: int  #: per 1000 millicores
    memory_gib_hour: int  #: per GiB (1024 MiB)

    def check(self) -> None:
        for name in ("gpu_hour", "cpu_core_hour", "memory_gib_hour"):
            _uint(name, getattr(self, name))


@struct
class ContainerCapability(Struct):
    """What the provider's container runtime was *verified* to enforce.

    ``runtime`` is ``"none"`` until the execution self-test has run and passed;
    a provider never claims a limit it has not checked.
    """

    runtime: str  #: e.g. "podman/runc", or "none"
    limits: tuple[str, ...]  #: enforced limits, e.g. "memory", "cpu", "pids", "network-none"
    gpu_cdi: bool  #: GPUs can be passed into containers through CDI

    def check(self) -> None:
        _token("runtime", self.runtime)
        if len(self.limits) > MAX_LIMITS:
            raise ValidationError("limits", f"at most {MAX_LIMITS} entries")
        for i, lim in enumerate(self.limits):
            _token(f"limits[{i}]", lim)
        _unique("limits", self.limits)
        if self.runtime == "none" and (self.limits or self.gpu_cdi):
            raise ValidationError("runtime", "'none' cannot enforce limits or pass GPUs")


NO_CONTAINER: Final = ContainerCapability(runtime="none", limits=(), gpu_cdi=False)


@message(tag=16, domain="cpn/discovery/advert")
class Advert(Message):
    """A provider's signed, time-limited offer (spec/discovery.md, "Advert")."""

    peer_id: str  #: must equal the envelope signer
    addrs: tuple[str, ...]  #: multiaddrs to dial, without /p2p/ suffix
    resources: ResourceSet  #: what the host has (nominal)
    metrics: tuple[Metric, ...]  #: CATS-style metrics (nominal and measured)
    free: FreeCapacity  #: what is free now
    price: Price
    container: ContainerCapability
    compute_ids: tuple[str, ...]  #: identifiers it provides in the DHT (general -> specific)
    seq: int  #: strictly increasing per peer across restarts
    issued_at: int  #: unix seconds
    expires_at: int  #: unix seconds; issued_at < expires_at

    def check(self) -> None:
        _peer_field("peer_id", self.peer_id)
        if len(self.addrs) > MAX_ADDRS:
            raise ValidationError("addrs", f"at most {MAX_ADDRS} addresses")
        for i, addr in enumerate(self.addrs):
            if len(addr) > MAX_ADDR_LEN or not _MULTIADDR_RE.match(addr):
                raise ValidationError(
                    f"addrs[{i}]", "must be a multiaddr string like /ip4/.../tcp/..."
                )
        _unique("addrs", self.addrs)
        gpus = self.resources.gpus
        if len(gpus) > MAX_GPUS:
            raise ValidationError("resources.gpus", f"at most {MAX_GPUS} GPUs")
        uuids = [g.uuid for g in gpus]
        _unique("resources.gpus", uuids)
        if len(self.metrics) > MAX_METRICS:
            raise ValidationError("metrics", f"at most {MAX_METRICS} metrics")
        if len(self.compute_ids) > MAX_COMPUTE_IDS:
            raise ValidationError("compute_ids", f"at most {MAX_COMPUTE_IDS} identifiers")
        for i, cid in enumerate(self.compute_ids):
            try:
                parse_id(cid)
            except ProtocolError as exc:
                raise ValidationError(
                    f"compute_ids[{i}]", f"not a compute identifier: {exc}"
                ) from None
        _unique("compute_ids", self.compute_ids)
        if not set(self.free.gpu_uuids) <= set(uuids):
            raise ValidationError("free.gpu_uuids", "must name GPUs listed in resources.gpus")
        if self.free.cpu_millis > self.resources.cpu_cores * 1000:
            raise ValidationError("free.cpu_millis", "exceeds resources.cpu_cores * 1000")
        if self.free.memory_mib > self.resources.memory_mib:
            raise ValidationError("free.memory_mib", "exceeds resources.memory_mib")
        if self.free.disk_mib > self.resources.disk_mib:
            raise ValidationError("free.disk_mib", "exceeds resources.disk_mib")
        for name in ("seq", "issued_at"):
            _uint(name, getattr(self, name))
        if self.expires_at <= self.issued_at:
            raise ValidationError("expires_at", "must be after issued_at")

    @property
    def lifetime(self) -> int:
        return self.expires_at - self.issued_at


@message(tag=17, domain="cpn/discovery/tombstone")
class Tombstone(Message):
    """Withdraws every advert of ``peer_id`` whose ``seq`` is <= this ``seq``.

    Stored under the same DHT key as the advert.  It is kept for
    ``MAX_LIFETIME`` seconds after ``issued_at``; by then any advert it could
    withdraw has expired on its own.
    """

    peer_id: str
    seq: int
    issued_at: int

    def check(self) -> None:
        _peer_field("peer_id", self.peer_id)
        _uint("seq", self.seq)
        _uint("issued_at", self.issued_at)


def _peer_field(name: str, value: str) -> None:
    check_peer_id_field(value, name)


Record: TypeAlias = Advert | Tombstone


# --------------------------------------------------------------------------- validation


def _check_signer(signed: Signed[Advert] | Signed[Tombstone], peer_id: str | None) -> None:
    named = signed.message.peer_id
    if signed.signer != named:
        raise ProtocolError(
            "wrong_signer", f"record names {named} but is signed by {signed.signer}"
        )
    if peer_id is not None and named != peer_id:
        raise ProtocolError("wrong_peer", f"record is for {named}, expected {peer_id}")


def validate_advert(
    signed: Signed[Advert],
    now: int,
    *,
    peer_id: str | None = None,
    max_lifetime: int = MAX_LIFETIME,
    max_clock_skew: int = MAX_CLOCK_SKEW,
) -> Advert:
    """Check a verified envelope holds an advert acceptable at time ``now``.

    The envelope's signature was checked by :func:`~protocol.envelope.open_envelope`;
    this adds the record rules: signed by the peer it names (and, if given, for
    ``peer_id``), issued no later than ``now + max_clock_skew``, not expired at
    ``now`` (no grace: a stale offer is worse than none), and a lifetime of at
    most ``max_lifetime``.  Raises :class:`ProtocolError` with reason
    ``unexpected_type``, ``wrong_signer``, ``wrong_peer``, ``not_yet_valid``,
    ``expired`` or ``lifetime_too_long``.
    """
    adv = signed.message
    if not isinstance(adv, Advert):
        raise ProtocolError("unexpected_type", f"expected Advert, got {type(adv).__name__}")
    _check_signer(signed, peer_id)
    if adv.issued_at > now + max_clock_skew:
        raise ProtocolError("not_yet_valid", f"issued_at {adv.issued_at} is after now {now}")
    if adv.lifetime > max_lifetime:
        raise ProtocolError("lifetime_too_long", f"{adv.lifetime} s > {max_lifetime} s")
    if now >= adv.expires_at:
        raise ProtocolError("expired", f"expired at {adv.expires_at}, now {now}")
    return adv


def validate_tombstone(
    signed: Signed[Tombstone],
    now: int,
    *,
    peer_id: str | None = None,
    max_lifetime: int = MAX_LIFETIME,
    max_clock_skew: int = MAX_CLOCK_SKEW,
) -> Tombstone:
    """Like :func:`validate_advert` for a tombstone, which expires ``max_lifetime``
    seconds after it was issued (reason ``expired``)."""
    tomb = signed.message
    if not isinstance(tomb, Tombstone):
        raise ProtocolError("unexpected_type", f"expected Tombstone, got {type(tomb).__name__}")
    _check_signer(signed, peer_id)
    if tomb.issued_at > now + max_clock_skew:
        raise ProtocolError("not_yet_valid", f"issued_at {tomb.issued_at} is after now {now}")
    if now >= tomb.issued_at + max_lifetime:
        raise ProtocolError("expired", f"tombstone issued at {tomb.issued_at} has lapsed")
    return tomb


def validate_record(
    signed: Signed[Advert] | Signed[Tombstone],
    now: int,
    *,
    peer_id: str | None = None,
    max_lifetime: int = MAX_LIFETIME,
    max_clock_skew: int = MAX_CLOCK_SKEW,
) -> Record:
    """Validate an advert or a tombstone (dispatch on the message type)."""
    kw = {"peer_id": peer_id, "max_lifetime": max_lifetime, "max_clock_skew": max_clock_skew}
    if isinstance(signed.message, Tombstone):
        return validate_tombstone(signed, now, **kw)  # type: ignore[arg-type]
    return validate_advert(signed, now, **kw)  # type: ignore[arg-type]


def open_record(
    raw: bytes,
    now: int,
    *,
    peer_id: str | None = None,
    max_lifetime: int = MAX_LIFETIME,
    max_clock_skew: int = MAX_CLOCK_SKEW,
    memo: MutableMapping[bytes, Signed[Advert] | Signed[Tombstone]] | None = None,
) -> Signed[Advert] | Signed[Tombstone]:
    """Decode, verify and validate record bytes from the DHT or a provider.

    This is the one entry point for untrusted record bytes: size limits, the
    envelope signature, the message schema and the record rules.  Raises
    :class:`ProtocolError` (the reason names the failed rule; schema errors keep
    the decoder's reasons such as ``invalid_field``, ``unknown_field``).

    ``memo`` (the caller bounds it) keeps envelopes already decoded and
    verified, keyed by their exact bytes: the same bytes opened again skip the
    decoding and the signature check, never the record rules (the time-bound
    ones depend on ``now``; the signer binding on ``peer_id``).
    """
    if len(raw) > MAX_RECORD_SIZE:
        raise ProtocolError("oversize", f"record is {len(raw)} bytes, limit {MAX_RECORD_SIZE}")
    known = memo.get(raw) if memo is not None else None
    if known is None:
        signed: Signed[Advert] | Signed[Tombstone] = open_envelope(  # type: ignore[assignment]
            raw, expected=(Advert, Tombstone), limits=RECORD_LIMITS
        )
        if memo is not None:
            memo[raw] = signed
    else:
        signed = known
    validate_record(
        signed, now, peer_id=peer_id, max_lifetime=max_lifetime, max_clock_skew=max_clock_skew
    )
    return signed


def _rank(signed: Signed[Advert] | Signed[Tombstone]) -> tuple[int, int, int, bytes]:
    msg = signed.message
    # At equal seq a tombstone (1) outranks an advert (0): withdrawal wins ties.
    return (msg.seq, 1 if isinstance(msg, Tombstone) else 0, msg.issued_at, signed.digest)


def select_newest(records: Sequence[Signed[Advert] | Signed[Tombstone]], now: int) -> int:
    """Index of the record that supersedes the others (the DHT ``select``).

    Records that are invalid at ``now`` never win.  Among valid ones: highest
    ``seq``; at equal ``seq`` a tombstone beats an advert; then the later
    ``issued_at``; then the greater envelope digest, so every node picks the
    same record.  Raises ``ProtocolError("no_valid_record")`` if none is valid.
    """
    best: int | None = None
    best_key: tuple[int, int, int, bytes] | None = None
    for i, rec in enumerate(records):
        try:
            validate_record(rec, now)
        except ProtocolError:
            continue
        key = _rank(rec)
        if best_key is None or key > best_key:
            best, best_key = i, key
    if best is None:
        raise ProtocolError("no_valid_record", f"none of {len(records)} records is valid")
    return best


def select_raw(
    values: Sequence[bytes],
    now: int,
    *,
    peer_id: str | None = None,
    memo: MutableMapping[bytes, Signed[Advert] | Signed[Tombstone]] | None = None,
) -> int:
    """:func:`select_newest` over raw record bytes; unreadable ones never win."""
    return select_opened(values, now, peer_id=peer_id, memo=memo)[0]


def select_opened(
    values: Sequence[bytes],
    now: int,
    *,
    peer_id: str | None = None,
    memo: MutableMapping[bytes, Signed[Advert] | Signed[Tombstone]] | None = None,
) -> tuple[int, Signed[Advert] | Signed[Tombstone]]:
    """:func:`select_raw` and the winner, opened (each value is opened once)."""
    opened: list[Signed[Advert] | Signed[Tombstone]] = []
    index: list[int] = []
    for i, raw in enumerate(values):
        try:
            opened.append(open_record(raw, now, peer_id=peer_id, memo=memo))
        except ProtocolError:
            continue
        index.append(i)
    if not opened:
        raise ProtocolError("no_valid_record", f"none of {len(values)} records is valid")
    best = select_newest(opened, now)
    return index[best], opened[best]


def refresh_due(advert: Advert) -> int:
    """When the provider should publish a fresh advert: half-way through the
    lifetime, so a finder always sees one valid record despite lookup delays."""
    return advert.issued_at + advert.lifetime // 2


def next_seq(last_seq: int | None, now: int) -> int:
    """A sequence number above ``last_seq`` that also survives a lost state file:
    ``max(last_seq + 1, now)``, so a restarted node whose clock moved forward
    still supersedes the records it published before."""
    return now if last_seq is None else max(last_seq + 1, now)


def all_free(resources: ResourceSet) -> FreeCapacity:
    """Free capacity of an idle host: everything it has."""
    return FreeCapacity(
        gpu_uuids=tuple(g.uuid for g in resources.gpus),
        cpu_millis=resources.cpu_cores * 1000,
        memory_mib=resources.memory_mib,
        disk_mib=resources.disk_mib,
    )


def make_advert(
    *,
    peer_id: str,
    addrs: Sequence[str],
    resources: ResourceSet,
    metrics: Sequence[Metric],
    price: Price,
    seq: int,
    now: int,
    lifetime: int = DEFAULT_LIFETIME,
    free: FreeCapacity | None = None,
    container: ContainerCapability = NO_CONTAINER,
) -> Advert:
    """An advert issued at ``now`` whose compute identifiers are the ladder
    :func:`protocol.identifiers.advertised_ids` derives from ``resources``
    (so the record and the DHT provider keys always agree).  ``free`` defaults
    to :func:`all_free`; at most :data:`MAX_ADDRS` addresses are kept."""
    if not 0 < lifetime <= MAX_LIFETIME:
        raise LocalProtocolError(f"advert lifetime must be 1..{MAX_LIFETIME} s")
    return Advert(
        peer_id=peer_id,
        addrs=tuple(dict.fromkeys(addrs))[:MAX_ADDRS],
        resources=resources,
        metrics=tuple(metrics),
        free=free if free is not None else all_free(resources),
        price=price,
        container=container,
        compute_ids=tuple(advertised_ids(resources)),
        seq=seq,
        issued_at=now,
        expires_at=now + lifetime,
    )
