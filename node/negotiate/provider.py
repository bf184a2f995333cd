"""The provider side of a negotiation: admission, reservation, quote, agreement."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.clock import UnixClock
from node.negotiate.agreements import AgreementStore
from node.negotiate.framing import recv_frame, send_frame
from node.negotiate.guard import PeerLog
from node.negotiate.limits import PeerGate
from node.negotiate.policy import Policy
from node.negotiate.scheduler import Allocation, NoCapacity, Scheduler
from node.p2p import FramedStream
from protocol.errors import ProtocolError
from protocol.jobspec import JobSpec
from protocol.negotiation import (
    Cancel,
    RefusalReason,
)
from protocol.negotiation_state import NEED_DATA, Negotiation, Role, State

__all__ = ["Provider", "AgreementHook", "SESSION_TIMEOUT"]

log = logging.getLogger("cpn.negotiation")


SESSION_TIMEOUT = 30.0  #: seconds for a whole negotiation on one stream
_ERROR_REASONS = {
    "expired": RefusalReason.EXPIRED,
    "replayed": RefusalReason.REPLAYED,
    "busy": RefusalReason.BUSY,  # the replay memory is full (spec/negotiation.md section 5)
}

_HOLDING = frozenset({State.AGREED, State.TRANSFERRING, State.QUEUED, State.RUNNING})

#: Called synchronously once an agreement is persisted, just before it is sent.  Runs inside
#: the stream handler's timeout, so anything long (transfer, execution) must
#: be started as a task in the node's nursery, not awaited here.
AgreementHook = Callable[[Negotiation, Allocation], None]


@dataclass
class Provider:
    """Serves offers: admission, reservation, quote, agreement, persistence."""

    key: Ed25519PrivateKey
    peer_id: str
    store: AgreementStore
    scheduler: Scheduler
    policy: Policy
    clock: UnixClock  #: unix seconds
    #: called after an agreement is persisted and sent: where execution plugs in
    on_agreement: list[AgreementHook] = field(default_factory=list)
    #: None if a container runtime can run ``job`` here, else why not (refused
    #: ``no_container_runtime``); the daemon wires it to execution's self-test
    runtime_check: Callable[[JobSpec], str | None] = lambda job: None
    #: per-peer bounds (streams, quotes, agreements, rate, back-off); built from
    #: the scheduler with default limits unless the service passes its own
    gate: PeerGate | None = None
    peer_log: PeerLog = field(default_factory=lambda: PeerLog(log))
    served: int = 0
    agreements: int = 0

    def __post_init__(self) -> None:
        if self.gate is None:
            self.gate = PeerGate(self.scheduler)

    @property
    def limits(self) -> PeerGate:
        assert self.gate is not None
        return self.gate

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
            self.limits.holds(row.peer, row.id)
            self.scheduler.restore(Allocation(key=row.id, gpu_uuids=tuple(alloc["gpu_uuids"]),
                                              gpu_models=tuple(alloc["gpu_models"]), cpu_millis=alloc["cpu_millis"],
                                              memory_mib=alloc["memory_mib"], disk_mib=alloc["disk_mib"]))
            resumed.append(row.id)
        return resumed

    async def handle(self, stream: FramedStream) -> None:
        """One negotiation on one stream.  Errors propagate to the service's guard
        (:func:`node.negotiate.guard.guarded`), which logs them and resets the stream."""
        peer = stream.remote_peer
        if not self.limits.enter(peer):  # over max_negotiations_per_peer: not one byte read
            self.peer_log.log(peer, logging.INFO, "negotiation from %s reset: too many open at once", peer)
            await stream.reset()
            return
        try:
            await self._session(stream)
        finally:
            self.limits.leave(peer)
        await stream.close()

    async def _session(self, stream: FramedStream) -> None:
        self.served += 1
        conn = Negotiation(Role.PROVIDER, key=self.key, submitter=stream.remote_peer, provider=self.peer_id,
                           replay_cache=self.store)
        reserved: list[str] = []  # the key this session reserved, even if it then fails
        try:
            with trio.fail_after(SESSION_TIMEOUT):
                key = await self._offer(stream, conn, reserved)
                if key is not None:
                    await self._accept(stream, conn, key)
        finally:
            key = reserved[0] if reserved else None
            if key is not None and conn.state not in _HOLDING:
                self.scheduler.release(key)
                if conn.state is State.QUOTED:  # the stream ended or timed out before an accept
                    self._save(conn, "expired", detail="no accept before the session ended")
                    self.limits.lapsed(conn.submitter)

    def _save(self, conn: Negotiation, state: str | None = None, **kw: Any) -> None:
        assert conn.negotiation_id is not None
        self.store.save(conn.negotiation_id.hex(), "provider", peer=conn.submitter, state=state or conn.state.value,
                        now=self.clock(), record=conn.to_record(), **kw)

    async def _refuse(self, stream: FramedStream, conn: Negotiation, reason: RefusalReason, detail: str,
                      *, in_reply_to: bytes | None = None, queue_depth: int | None = None,
                      persist: bool = True) -> None:
        frame = conn.send_refusal(reason, detail, in_reply_to=in_reply_to, queue_depth=queue_depth, now=self.clock())
        if persist:  # refusals over a per-peer bound are not stored: a flood must not grow the database
            self._save(conn, detail=f"{reason.value}: {detail}")
        await send_frame(stream, frame)

    async def _offer(self, stream: FramedStream, conn: Negotiation, reserved: list[str]) -> str | None:
        """Receive the offer; quote (reserving capacity) or refuse.  Returns the key if quoted."""
        frame = await recv_frame(stream)
        conn.receive_data(frame)
        try:
            conn.next_event(now=self.clock())
        except ProtocolError as exc:
            if conn.negotiation_id is None:
                raise  # not even a signed offer from this peer: reset
            reason = _ERROR_REASONS.get(exc.reason, RefusalReason.MALFORMED)
            self.peer_log.log(conn.submitter, logging.INFO, "offer from %s refused: %s", conn.submitter, exc)
            depth = 0 if reason is RefusalReason.BUSY else None  # busy refusals carry a queue depth
            await self._refuse(stream, conn, reason, str(exc), in_reply_to=sha256(frame).digest(),
                               queue_depth=depth)
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
            await self._refuse(stream, conn, RefusalReason.PRICE_TOO_LOW, f"price {price} micro-units is above the job's max_price of {job.max_price} micro-units")
            return None
        over = self.limits.check(conn.submitter)
        if over is not None:
            await self._refuse(stream, conn, RefusalReason.BUSY, over, queue_depth=self.scheduler.queue_depth,
                               persist=False)
            return None
        try:
            alloc = self._reserve(conn.submitter, key, job)
        except NoCapacity as exc:
            await self._refuse(stream, conn, exc.reason, exc.detail, queue_depth=exc.queue_depth)
            return None
        reserved.append(key)
        self.limits.quoted(conn.submitter, key)
        now = self.clock()
        frame = conn.send_quote(price=price, estimated_start=now, queue_position=0,
                                reservation_expires_at=now + self.policy.reservation_s,
                                gpu_models=alloc.gpu_models, now=now)
        self._save(conn, extra={"allocation": _alloc_json(alloc), "price": price})
        await send_frame(stream, frame)
        return key

    def _reserve(self, peer: str, key: str, job: JobSpec) -> Allocation:
        """Reserve for ``job``; when busy, a proven peer may take what quotes of
        strangers hold (their accept is then refused ``expired``)."""
        try:
            return self.scheduler.reserve(key, job.resources, seconds=self.policy.reservation_s)
        except NoCapacity as exc:
            if exc.reason is not RefusalReason.BUSY or not self.limits.proven(peer):
                raise
            busy = exc
        for victim in self.limits.strangers_quotes():
            self.scheduler.release(victim)
            log.info("quote %s of a peer without agreements here withdrawn for %s", victim, peer)
            try:
                return self.scheduler.reserve(key, job.resources, seconds=self.policy.reservation_s)
            except NoCapacity as exc:
                if exc.reason is not RefusalReason.BUSY:
                    raise
                busy = exc
        raise busy

    async def _accept(self, stream: FramedStream, conn: Negotiation, key: str) -> None:
        frame = await recv_frame(stream)
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
        now = self.clock()
        frame = conn.send_agreement(now=now)
        # persist before telling anyone: a crash after this line keeps the agreement.
        # agreed_at starts the job's phase deadlines, which survive restarts.
        self._save(conn, extra={"allocation": _alloc_json(alloc), "price": conn.expected_terms().price,
                                "agreed_at": now})
        self.agreements += 1
        self.limits.agreed(conn.submitter)
        log.info("agreement %s with %s", key, conn.submitter)
        # The job starts before the agreement is sent: a submitter that resets the
        # stream instead of reading it has agreed all the same, and its job must run
        # its (bounded) course, or the committed capacity would stay with no job.
        for hook in self.on_agreement:
            hook(conn, alloc)
        await send_frame(stream, frame)


def _alloc_json(a: Allocation) -> dict[str, Any]:
    return {"gpu_uuids": list(a.gpu_uuids), "gpu_models": list(a.gpu_models), "cpu_millis": a.cpu_millis,
            "memory_mib": a.memory_mib, "disk_mib": a.disk_mib}
