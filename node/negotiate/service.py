"""Negotiation over libp2p: the provider service and the submitter client.

The protocol logic is the sans-IO machine of :mod:`protocol.negotiation_state`;
this module only moves frames (``/cpn/negotiate/0.1.0``, one signed envelope
per length-prefixed frame), applies the node's admission policy and capacity
(:mod:`node.negotiate.scheduler`) and persists every step (:mod:`node.negotiate.agreements`) before
acting on it, so a restart neither loses an agreement nor runs one twice.

Every network call has a timeout written where it is made.  A peer that sends
garbage, a bad signature, a frame signed by someone else or an oversize frame
gets its stream reset (or a signed refusal when the offer could be bound to a
negotiation); other negotiations are unaffected.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.negotiate.agreements import Store
from node.negotiate.scheduler import Allocation, NoCapacity, Scheduler
from node.p2p import FramedStream, P2PHost, StreamClosed
from protocol.advert import Price
from protocol.envelope import Signed, open_envelope
from protocol.errors import LocalProtocolError, ProtocolError
from protocol.jobspec import JobSpec
from protocol.matching import estimate_cost
from protocol.negotiation import (
    Agreement,
    Cancel,
    CancelReason,
    JobStatus,
    Phase,
    Quote,
    Refusal,
    RefusalReason,
)
from protocol.negotiation_state import FRAME_LIMITS, MAX_FRAME, NEED_DATA, Negotiation, Role, State

__all__ = [
    "PROTOCOL_ID",
    "STEP_TIMEOUT",
    "SESSION_TIMEOUT",
    "Policy",
    "Provider",
    "QuoteSession",
    "Outcome",
    "request_quote",
    "negotiate_best",
    "NegotiationService",
    "STATUS_PROTOCOL_ID",
    "push_status",
    "status_handler",
]

log = logging.getLogger("cpn.negotiation")

PROTOCOL_ID = "/cpn/negotiate/0.1.0"
STEP_TIMEOUT = 10.0  #: seconds for one frame read or write
SESSION_TIMEOUT = 30.0  #: seconds for a whole negotiation on one stream
OFFER_TTL = 60  #: seconds an offer we send stays valid

_ERROR_REASONS = {"expired": RefusalReason.EXPIRED, "replayed": RefusalReason.REPLAYED}


@dataclass
class Policy:
    """Admission policy (the ``[negotiation]`` table of the node config)."""

    allowed_peers: list[str] = field(default_factory=list)  #: empty: open to everyone
    max_job_s: int = 24 * 3600  #: longest run time accepted
    max_image_mib: int = 64 * 1024  #: image plus inputs
    min_price: int = 0  #: micro-units: the least any job pays here
    reservation_s: int = 30  #: how long a quote holds capacity
    price: Price = field(default_factory=lambda: Price(gpu_hour=1_000_000, cpu_core_hour=10_000, memory_gib_hour=1_000))

    @classmethod
    def from_config(cls, config: Any) -> Policy:
        """Build from ``config.raw["negotiation"]`` and the advertised prices."""
        table = dict(getattr(config, "raw", {}).get("negotiation", {}))
        d = getattr(config, "discovery", None)
        price = (
            Price(gpu_hour=d.price_gpu_hour, cpu_core_hour=d.price_cpu_core_hour, memory_gib_hour=d.price_memory_gib_hour)
            if d is not None
            else cls().price
        )
        known = {"allowed_peers", "max_job_s", "max_image_mib", "min_price", "reservation_s"}
        unknown = set(table) - known
        if unknown:
            raise ValueError(f"negotiation.{sorted(unknown)[0]}: unknown key (known: {', '.join(sorted(known))})")
        policy = cls(price=price, **table)
        if not isinstance(policy.allowed_peers, list) or not all(isinstance(p, str) for p in policy.allowed_peers):
            raise ValueError("negotiation.allowed_peers: must be a list of peer IDs")
        for name in ("max_job_s", "max_image_mib", "min_price", "reservation_s"):
            value = getattr(policy, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"negotiation.{name}: must be a non-negative integer")
        if not 1 <= policy.reservation_s <= 600:
            raise ValueError("negotiation.reservation_s: must be 1..600 seconds")
        return policy

    def admit(self, peer: str, job: JobSpec) -> tuple[RefusalReason, str] | None:
        """None if the job may be quoted, else (reason, detail)."""
        if self.allowed_peers and peer not in self.allowed_peers:
            return RefusalReason.POLICY_DENIED, "peer not in allowed_peers"
        if job.timeouts.run_s > self.max_job_s:
            return RefusalReason.POLICY_DENIED, f"run_s {job.timeouts.run_s} above max_job_s {self.max_job_s}"
        size_mib = -(-sum(b.size for b in job.blobs()) // (1 << 20))
        if size_mib > self.max_image_mib:
            return RefusalReason.IMAGE_TOO_LARGE, f"{size_mib} MiB above {self.max_image_mib} MiB"
        return None

    def price_of(self, job: JobSpec) -> int:
        return max(self.min_price, estimate_cost(self.price, job.resources, job.timeouts.run_s))


async def _recv(stream: FramedStream) -> bytes:
    with trio.fail_after(STEP_TIMEOUT):
        return await stream.receive_frame(MAX_FRAME)


async def _send(stream: FramedStream, frame: bytes) -> None:
    with trio.fail_after(STEP_TIMEOUT):
        await stream.send_frame(frame)


# --------------------------------------------------------------------------- provider


#: states in which an agreed job keeps its capacity
_HOLDING = frozenset({State.AGREED, State.TRANSFERRING, State.QUEUED, State.RUNNING})

#: Called synchronously once an agreement is persisted and sent.  Runs inside
#: the stream handler's timeout, so anything long (transfer, execution) must
#: be started as a task in the node's nursery, not awaited here.
AgreementHook = Callable[[Negotiation, Allocation], None]


@dataclass
class Provider:
    """Serves offers: admission, reservation, quote, agreement, persistence."""

    key: Ed25519PrivateKey
    peer_id: str
    store: Store
    scheduler: Scheduler
    policy: Policy
    clock: Callable[[], int]  #: unix seconds
    #: called after an agreement is persisted and sent: where execution plugs in
    on_agreement: list[AgreementHook] = field(default_factory=list)
    #: None if a container runtime can run ``job`` here, else why not (refused
    #: ``no_container_runtime``); the daemon wires it to execution's self-test
    runtime_check: Callable[[JobSpec], str | None] = lambda job: None
    served: int = 0
    agreements: int = 0

    def resume(self) -> list[str]:
        """After a restart: re-commit stored agreements, expire stale reservations."""
        resumed = []
        now = self.clock()
        for row in self.store.open_jobs("provider"):
            alloc = row.extra.get("allocation")
            if row.state in ("offered", "quoted", "accepted") or alloc is None:
                self.store.save(row.id, "provider", peer=row.peer, state="expired", now=now,
                                detail="reservation lost in a restart")
                continue
            self.scheduler.restore(Allocation(key=row.id, gpu_uuids=tuple(alloc["gpu_uuids"]),
                                              gpu_models=tuple(alloc["gpu_models"]), cpu_millis=alloc["cpu_millis"],
                                              memory_mib=alloc["memory_mib"], disk_mib=alloc["disk_mib"]))
            resumed.append(row.id)
        return resumed

    async def handle(self, stream: FramedStream) -> None:
        """One negotiation on one stream (the P2PHost wrapper resets it on ProtocolError)."""
        self.served += 1
        conn = Negotiation(Role.PROVIDER, key=self.key, submitter=stream.remote_peer, provider=self.peer_id,
                           replay_cache=self.store)
        key: str | None = None
        try:
            with trio.fail_after(SESSION_TIMEOUT):
                key = await self._offer(stream, conn)
                if key is not None:
                    await self._accept(stream, conn, key)
        finally:
            if key is not None and conn.state not in _HOLDING:
                self.scheduler.release(key)
                if conn.state is State.QUOTED:  # the stream ended or timed out before an accept
                    self._save(conn, "expired", detail="no accept before the session ended")
        await stream.close()

    def _save(self, conn: Negotiation, state: str | None = None, **kw: Any) -> None:
        assert conn.negotiation_id is not None
        self.store.save(conn.negotiation_id.hex(), "provider", peer=conn.submitter, state=state or conn.state.value,
                        now=self.clock(), record=conn.to_record(), **kw)

    async def _refuse(self, stream: FramedStream, conn: Negotiation, reason: RefusalReason, detail: str,
                      *, in_reply_to: bytes | None = None, queue_depth: int | None = None) -> None:
        frame = conn.send_refusal(reason, detail, in_reply_to=in_reply_to, queue_depth=queue_depth, now=self.clock())
        self._save(conn, detail=f"{reason.value}: {detail}")
        await _send(stream, frame)

    async def _offer(self, stream: FramedStream, conn: Negotiation) -> str | None:
        """Receive the offer; quote (reserving capacity) or refuse.  Returns the key if quoted."""
        frame = await _recv(stream)
        conn.receive_data(frame)
        try:
            conn.next_event(now=self.clock())
        except ProtocolError as exc:
            if conn.negotiation_id is None:
                raise  # not even a signed offer from this peer: reset
            reason = _ERROR_REASONS.get(exc.reason, RefusalReason.MALFORMED)
            log.info("offer from %s refused: %s", conn.submitter, exc)
            await self._refuse(stream, conn, reason, str(exc), in_reply_to=sha256(frame).digest())
            return None
        job: JobSpec = conn.job.message  # type: ignore[union-attr]
        key = conn.negotiation_id.hex()  # type: ignore[union-attr]
        no_runtime = self.runtime_check(job)
        if no_runtime is not None:
            await self._refuse(stream, conn, RefusalReason.NO_CONTAINER_RUNTIME, no_runtime)
            return None
        denied = self.policy.admit(conn.submitter, job)
        if denied is not None:
            await self._refuse(stream, conn, *denied)
            return None
        price = self.policy.price_of(job)
        if price > job.max_price:
            await self._refuse(stream, conn, RefusalReason.PRICE_TOO_LOW, f"price {price} above max_price {job.max_price}")
            return None
        try:
            alloc = self.scheduler.reserve(key, job.resources, seconds=self.policy.reservation_s)
        except NoCapacity as exc:
            await self._refuse(stream, conn, exc.reason, exc.detail, queue_depth=exc.queue_depth)
            return None
        now = self.clock()
        frame = conn.send_quote(price=price, estimated_start=now, queue_position=0,
                                reservation_expires_at=now + self.policy.reservation_s,
                                gpu_models=alloc.gpu_models, now=now)
        self._save(conn, extra={"allocation": _alloc_json(alloc), "price": price})
        await _send(stream, frame)
        return key

    async def _accept(self, stream: FramedStream, conn: Negotiation, key: str) -> None:
        frame = await _recv(stream)
        conn.receive_data(frame)
        try:
            event = conn.next_event(now=self.clock())
        except ProtocolError as exc:
            if exc.reason == "expired":
                self.scheduler.release(key)
                await self._refuse(stream, conn, RefusalReason.EXPIRED, str(exc), in_reply_to=sha256(frame).digest())
                return
            raise
        assert event is not NEED_DATA
        if isinstance(event.message, Cancel):
            self._save(conn, detail=f"cancelled by submitter: {event.message.reason.value}")
            return
        try:
            alloc = self.scheduler.commit(key)
        except NoCapacity as exc:
            await self._refuse(stream, conn, exc.reason, exc.detail)
            return
        frame = conn.send_agreement(now=self.clock())
        # persist before telling anyone: a crash after this line keeps the agreement
        self._save(conn, extra={"allocation": _alloc_json(alloc), "price": conn.expected_terms().price})
        await _send(stream, frame)
        self.agreements += 1
        log.info("agreement %s with %s", key, conn.submitter)
        for hook in self.on_agreement:
            hook(conn, alloc)


def _alloc_json(a: Allocation) -> dict[str, Any]:
    return {"gpu_uuids": list(a.gpu_uuids), "gpu_models": list(a.gpu_models), "cpu_millis": a.cpu_millis,
            "memory_mib": a.memory_mib, "disk_mib": a.disk_mib}


# --------------------------------------------------------------------------- submitter


@dataclass
class QuoteSession:
    """An open negotiation with one provider, between quote and decision."""

    provider: str
    conn: Negotiation
    stream: FramedStream | None
    quote: Quote | None = None
    refusal: Refusal | None = None
    error: str | None = None  #: unreachable, reset, timeout, protocol error
    fit_pct: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"provider": self.provider}
        if self.quote is not None:
            q = self.quote
            out.update(status="quoted", price=q.price, estimated_start=q.estimated_start,
                       gpu_models=list(q.gpu_models), reservation_expires_at=q.reservation_expires_at)
        elif self.refusal is not None:
            r = self.refusal
            out.update(status="refused", reason=r.reason.value, detail=r.detail, queue_depth=r.queue_depth)
        else:
            out.update(status="error", reason="unreachable", detail=self.error or "")
        return out


async def request_quote(
    p2p: P2PHost,
    key: Ed25519PrivateKey,
    provider: str,
    job: Signed[JobSpec],
    *,
    clock: Callable[[], int],
    addrs: Sequence[str] | None = None,
    store: Store | None = None,
) -> QuoteSession:
    """Open a stream, offer the job, wait for a quote or refusal (stream stays open on a quote)."""
    nid = secrets.token_bytes(16)
    conn = Negotiation(Role.SUBMITTER, key=key, submitter=p2p.peer_id, provider=provider, negotiation_id=nid)
    session = QuoteSession(provider=provider, conn=conn, stream=None)
    try:
        with trio.fail_after(STEP_TIMEOUT):
            session.stream = await p2p.open_stream(provider, PROTOCOL_ID, addrs)
        now = clock()
        await _send(session.stream, conn.send_offer(job.raw, expires_at=now + OFFER_TTL, now=now))
        conn.receive_data(await _recv(session.stream))
        event = conn.next_event(now=clock())
    except (StreamClosed, trio.TooSlowError, ProtocolError) as exc:
        session.error = str(exc) or type(exc).__name__
        await _close(session)
        return session
    assert event is not NEED_DATA
    if isinstance(event.message, Quote):
        session.quote = event.message
    elif isinstance(event.message, Refusal):
        session.refusal = event.message
        await _close(session)
    if store is not None:
        store.save(nid.hex(), "submitter", peer=provider, state=conn.state.value, now=clock(),
                   record=conn.to_record(), detail=_detail(session))
    return session


def _detail(s: QuoteSession) -> str:
    if s.refusal is not None:
        return f"{s.refusal.reason.value}: {s.refusal.detail}"
    return s.error or ""


async def _close(session: QuoteSession) -> None:
    if session.stream is not None:
        with trio.CancelScope(shield=True), trio.move_on_after(STEP_TIMEOUT):
            await session.stream.close()


async def cancel_quote(session: QuoteSession, reason: CancelReason, *, clock: Callable[[], int]) -> None:
    """Tell the provider we do not take its quote (it releases the reservation now)."""
    if session.stream is None or session.conn.state is not State.QUOTED:
        return
    try:
        await _send(session.stream, session.conn.send_cancel(reason, now=clock()))
    except (StreamClosed, trio.TooSlowError, LocalProtocolError):
        pass
    await _close(session)


async def accept_quote(session: QuoteSession, *, clock: Callable[[], int]) -> Agreement | None:
    """Accept; return the co-signed agreement, or None (refused/timeout: see ``session``)."""
    assert session.stream is not None
    conn = session.conn
    try:
        await _send(session.stream, conn.send_accept(now=clock()))
        conn.receive_data(await _recv(session.stream))
        event = conn.next_event(now=clock())
    except (StreamClosed, trio.TooSlowError, ProtocolError, LocalProtocolError) as exc:
        session.error = str(exc) or type(exc).__name__
        await _close(session)
        return None
    await _close(session)
    assert event is not NEED_DATA
    if isinstance(event.message, Refusal):
        session.refusal, session.quote = event.message, None
        return None
    assert isinstance(event.message, Agreement)
    return event.message


@dataclass
class Outcome:
    agreement: Agreement | None
    chosen: QuoteSession | None
    sessions: list[QuoteSession]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"agreed": self.agreement is not None,
                               "providers": [s.to_json() for s in self.sessions]}
        if self.agreement is not None and self.chosen is not None:
            t = self.agreement.terms
            out.update(agreement_id=t.negotiation_id.hex(), provider=t.provider, price=t.price,
                       estimated_start=t.estimated_start, max_run_s=t.max_run_s)
        return out


def _rank(s: QuoteSession) -> tuple[int, int, int]:
    assert s.quote is not None
    return (s.quote.price, s.quote.estimated_start, -s.fit_pct)


async def negotiate_best(
    p2p: P2PHost,
    key: Ed25519PrivateKey,
    job: Signed[JobSpec],
    candidates: Sequence[tuple[str, Sequence[str] | None, int]],
    *,
    clock: Callable[[], int],
    store: Store | None = None,
) -> Outcome:
    """Ask every candidate ``(peer, addrs, fit_pct)`` for a quote in parallel, accept the
    best (price, then estimated start, then tightest fit), cancel the rest.  If the best
    refuses at accept time (e.g. its reservation lapsed), try the next."""
    sessions: list[QuoteSession] = []

    async def ask(peer: str, addrs: Sequence[str] | None, fit: int) -> None:
        s = await request_quote(p2p, key, peer, job, clock=clock, addrs=addrs, store=store)
        s.fit_pct = fit
        sessions.append(s)

    async with trio.open_nursery() as nursery:
        for peer, addrs, fit in candidates:
            nursery.start_soon(ask, peer, addrs, fit)
    quoted = sorted((s for s in sessions if s.quote is not None), key=_rank)
    agreement: Agreement | None = None
    chosen: QuoteSession | None = None
    for s in quoted:
        if agreement is None:
            agreement = await accept_quote(s, clock=clock)
            chosen = s if agreement is not None else None
        else:
            await cancel_quote(s, CancelReason.CHOSE_OTHER, clock=clock)
        if store is not None:
            store.save(s.conn.negotiation_id.hex(), "submitter", peer=s.provider,  # type: ignore[union-attr]
                       state=s.conn.state.value, now=clock(), record=s.conn.to_record(), detail=_detail(s))
    return Outcome(agreement=agreement, chosen=chosen, sessions=sorted(sessions, key=lambda s: s.provider))


# --------------------------------------------------------------------------- status events


STATUS_PROTOCOL_ID = "/cpn/negotiate/status/0.1.0"
STATUS_ACK = b"ok"


async def push_status(
    p2p: P2PHost,
    key: Ed25519PrivateKey,
    store: Store,
    negotiation_id: str,
    phase: Phase,
    *,
    at: int,
    clock: Callable[[], int],
    detail: str = "",
    exit_code: int | None = None,
    addrs: Sequence[str] | None = None,
) -> None:
    """Provider side: report ``phase`` of an agreed job to its submitter.

    The machine is rebuilt from the store, the signed status sent on its own
    stream, and the new state saved only once the submitter acknowledged it,
    so a failed push (raises StreamClosed / TooSlowError) can simply be
    retried with the same sequence number.
    """
    rows = store.get(negotiation_id, "provider")
    if len(rows) != 1 or rows[0].record is None:
        raise LocalProtocolError(f"no agreement {negotiation_id} on this provider")
    row = rows[0]
    conn = Negotiation.from_record(row.record, key=key, replay_cache=store)
    frame = conn.send_status(phase, at=at, detail=detail, exit_code=exit_code, now=clock())
    with trio.fail_after(STEP_TIMEOUT):
        stream = await p2p.open_stream(row.peer, STATUS_PROTOCOL_ID, addrs)
    try:
        await _send(stream, frame)
        if await _recv(stream) != STATUS_ACK:
            raise ProtocolError("malformed", "status not acknowledged")
    finally:
        await stream.close()
    store.save(negotiation_id, "provider", peer=row.peer, state=conn.state.value, now=clock(),
               record=conn.to_record())
    store.add_event(negotiation_id, "provider", kind=phase.value, at=at, data=frame)


def status_handler(key: Ed25519PrivateKey, store: Store, clock: Callable[[], int]) -> Callable[[FramedStream], Any]:
    """Submitter side: accept status events (and cancels) for our agreements."""

    async def handle(stream: FramedStream) -> None:
        frame = await _recv(stream)
        env = open_envelope(frame, expected=(JobStatus, Cancel), signer=stream.remote_peer, limits=FRAME_LIMITS)
        nid = env.message.negotiation_id.hex()  # type: ignore[attr-defined]
        rows = [r for r in store.get(nid, "submitter") if r.id == nid]
        if not rows or rows[0].peer != stream.remote_peer or rows[0].record is None:
            raise ProtocolError("binding_mismatch", "no agreement with this peer under that ID")
        conn = Negotiation.from_record(rows[0].record, key=key)
        conn.receive_data(frame)
        conn.next_event(now=clock())  # ProtocolError: replayed, reordered, wrong terms...
        kind = env.message.phase.value if isinstance(env.message, JobStatus) else "cancel"
        store.save(nid, "submitter", peer=rows[0].peer, state=conn.state.value, now=clock(),
                   record=conn.to_record())
        store.add_event(nid, "submitter", kind=kind, at=clock(), data=frame)
        await _send(stream, STATUS_ACK)
        await stream.close()

    return handle


# --------------------------------------------------------------------------- daemon service


def _runtime_check(capability: Any, job: JobSpec, resources: Any = None) -> str | None:
    """Refuse what the verified container runtime cannot do (execution's self-test)."""
    if capability is None or capability.runtime == "none":
        return "no verified container runtime on this node (execution disabled or self-test failed)"
    if job.resources.gpu is not None and not capability.gpu_cdi:
        if resources is not None and not resources.gpus:
            return None  # no GPU at all: the scheduler's no_matching_gpu is the clearer reason
        return "GPUs cannot be passed into containers here (no CDI device for them: fake or unconfigured GPUs)"
    return None


class NegotiationService:
    """Daemon service: serves ``/cpn/negotiate/0.1.0`` and the jobs API routes."""

    def __init__(self) -> None:
        self.provider: Provider | None = None
        self.store: Store | None = None

    async def run(self, node: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        from node.api.jobs_routes import register_routes
        from node.config import ConfigError

        try:
            policy = Policy.from_config(node.config)
        except (TypeError, ValueError) as exc:  # a bad [negotiation] table: fail fast, by key
            raise ConfigError(str(exc)) from None
        store = self.store = Store.open(node.data_dir)
        scheduler = Scheduler(node.resources, clock=trio.current_time, reservation_s=policy.reservation_s)
        node.scheduler = scheduler
        provider = self.provider = Provider(key=node.key, peer_id=node.peer_id, store=store, scheduler=scheduler,
                                            policy=policy, clock=node.clock)
        if hasattr(node, "container_capability"):  # the execution service ran its self-test
            provider.runtime_check = lambda job: _runtime_check(node.container_capability, job, node.resources)
        resumed = provider.resume()
        if resumed:
            log.info("resumed %d agreement(s) after restart", len(resumed))

        async def handle(stream: FramedStream) -> None:
            if scheduler.resources is None:  # discovery probes after we start, or not at all
                scheduler.resources = node.resources
            await provider.handle(stream)

        node.p2p.set_stream_handler(PROTOCOL_ID, handle)
        node.p2p.set_stream_handler(STATUS_PROTOCOL_ID, status_handler(node.key, store, node.clock))
        register_routes(node, self)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            store.close()
