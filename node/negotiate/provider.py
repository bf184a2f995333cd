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

#: Called synchronously once an agreement is persisted and sent.  Runs inside
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
        await send_frame(stream, frame)

    async def _offer(self, stream: FramedStream, conn: Negotiation) -> str | None:
        """Receive the offer; quote (reserving capacity) or refuse.  Returns the key if quoted."""
        frame = await recv_frame(stream)
        conn.receive_data(frame)
        try:
            conn.next_event(now=self.clock())
        except ProtocolError as exc:
            if conn.negotiation_id is None:
                raise  # not even a signed offer from this peer: reset
            reason = _ERROR_REASONS.get(exc.reason, RefusalReason.MALFORMED)
            log.info("offer from %s refused: %s", conn.submitter, exc)
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
        await send_frame(stream, frame)
        return key

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
        frame = conn.send_agreement(now=self.clock())
        # persist before telling anyone: a crash after this line keeps the agreement
        self._save(conn, extra={"allocation": _alloc_json(alloc), "price": conn.expected_terms().price})
        await send_frame(stream, frame)
        self.agreements += 1
        log.info("agreement %s with %s", key, conn.submitter)
        for hook in self.on_agreement:
            hook(conn, alloc)


def _alloc_json(a: Allocation) -> dict[str, Any]:
    return {"gpu_uuids": list(a.gpu_uuids), "gpu_models": list(a.gpu_models), "cpu_millis": a.cpu_millis,
            "memory_mib": a.memory_mib, "disk_mib": a.disk_mib}
