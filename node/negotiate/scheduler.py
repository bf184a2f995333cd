"""The node's capacity ledger: which GPUs (by UUID), CPU, memory and disk are promised.

A quote *reserves* capacity until its reservation expires; an agreement
*commits* the reservation; cancel, expiry and completion *release* it.  All
operations are synchronous and never await, so under trio two negotiations
cannot interleave inside one: when two submitters race for the last GPU,
exactly one reservation succeeds and the other gets :class:`NoCapacity`
with reason ``busy`` and the current queue depth.

The clock is injected (``trio.current_time`` by default) so tests drive
expiry with ``trio.testing.MockClock`` and never sleep.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from protocol.jobspec import GpuRequirement, Resources, compute_capability_at_least
from protocol.negotiation import RefusalReason
from protocol.resources import GpuInfo, ResourceSet

__all__ = ["NoCapacity", "Allocation", "Free", "Scheduler"]

log = logging.getLogger("cpn.scheduler")


class NoCapacity(Exception):
    """The job cannot be placed; ``reason`` is the refusal code to send."""

    def __init__(self, reason: RefusalReason, detail: str, queue_depth: int | None = None) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.queue_depth = queue_depth


@dataclass(slots=True)
class Allocation:
    key: str  #: the negotiation ID (hex) that holds it
    gpu_uuids: tuple[str, ...]
    gpu_models: tuple[str, ...]
    cpu_millis: int
    memory_mib: int
    disk_mib: int
    committed: bool = False
    expires_at: float | None = None  #: clock time the reservation lapses (None once committed)


@dataclass(frozen=True, slots=True)
class Free:
    gpu_uuids: tuple[str, ...]
    cpu_millis: int
    memory_mib: int
    disk_mib: int


def _gpu_fits(g: GpuInfo, req: GpuRequirement, *, memory: bool) -> bool:
    if g.mig:
        return False
    if req.vendor is not None and g.vendor != req.vendor:
        return False
    if req.models and g.model not in req.models:
        return False
    if req.min_compute_capability is not None and not compute_capability_at_least(
        g.compute_capability, req.min_compute_capability
    ):
        return False
    return not memory or g.memory_mib >= req.min_memory_mib


@dataclass
class Scheduler:
    #: None until the node has probed its hardware: then nothing can be placed
    resources: ResourceSet | None
    clock: Callable[[], float]
    reservation_s: float = 30.0
    _allocs: dict[str, Allocation] = field(default_factory=dict)
    #: called after every change of free capacity (e.g. to refresh the advert)
    on_change: list[Callable[[], None]] = field(default_factory=list)

    # ---- queries

    @property
    def queue_depth(self) -> int:
        """Jobs holding capacity now (reserved or committed)."""
        self.expire()
        return len(self._allocs)

    def get(self, key: str) -> Allocation | None:
        self.expire()
        return self._allocs.get(key)

    def allocations(self) -> list[Allocation]:
        """Every live allocation, reserved (a quote) or committed (an agreement)."""
        self.expire()
        return list(self._allocs.values())

    def free(self) -> Free:
        self.expire()
        used_gpus = {u for a in self._allocs.values() for u in a.gpu_uuids}
        gpus, cpu, mem, disk = self._totals()
        return Free(
            gpu_uuids=tuple(g.uuid for g in gpus if g.uuid not in used_gpus),
            cpu_millis=cpu - sum(a.cpu_millis for a in self._allocs.values()),
            memory_mib=mem - sum(a.memory_mib for a in self._allocs.values()),
            disk_mib=disk - sum(a.disk_mib for a in self._allocs.values()),
        )

    def _totals(self) -> tuple[tuple[GpuInfo, ...], int, int, int]:
        r = self.resources
        if r is None:
            return (), 0, 0, 0
        return r.gpus, r.cpu_cores * 1000, r.memory_mib, r.disk_mib

    # ---- transitions

    def reserve(self, key: str, req: Resources, *, seconds: float | None = None) -> Allocation:
        """Hold capacity for ``req`` under ``key`` until the reservation expires.

        Raises :class:`NoCapacity`: ``no_matching_gpu`` / ``insufficient_gpu_memory``
        / ``insufficient_resources`` when this node could never run the job,
        ``busy`` (with queue depth) when it could but the capacity is promised.
        """
        if key in self._allocs:
            raise NoCapacity(RefusalReason.REPLAYED, f"{key} already holds capacity")
        self._check_total(req)
        free = self.free()
        gpus: tuple[GpuInfo, ...] = ()
        if req.gpu is not None:
            pool = [g for g in self._totals()[0] if g.uuid in free.gpu_uuids and _gpu_fits(g, req.gpu, memory=True)]
            if len(pool) < req.gpu.count:
                raise self._busy(f"{len(pool)} of {req.gpu.count} fitting GPUs free")
            # smallest fitting GPUs first, so big ones stay for jobs that need them
            gpus = tuple(sorted(pool, key=lambda g: (g.memory_mib, g.uuid))[: req.gpu.count])
        for name, need, have in (
            ("cpu_millis", req.cpu_millis, free.cpu_millis),
            ("memory_mib", req.memory_mib, free.memory_mib),
            ("disk_mib", req.disk_mib, free.disk_mib),
        ):
            if need > have:
                raise self._busy(f"{name}: need {need}, {have} free")
        alloc = Allocation(
            key=key,
            gpu_uuids=tuple(g.uuid for g in gpus),
            gpu_models=tuple(g.model for g in gpus),
            cpu_millis=req.cpu_millis,
            memory_mib=req.memory_mib,
            disk_mib=req.disk_mib,
            expires_at=self.clock() + (self.reservation_s if seconds is None else seconds),
        )
        self._allocs[key] = alloc
        self._changed()
        return alloc

    def commit(self, key: str) -> Allocation:
        """Turn a live reservation into a commitment (the agreement is signed)."""
        self.expire()
        alloc = self._allocs.get(key)
        if alloc is None:
            raise NoCapacity(RefusalReason.EXPIRED, "the reservation expired or never existed")
        alloc.committed = True
        alloc.expires_at = None
        return alloc

    def restore(self, alloc: Allocation) -> None:
        """Re-commit an agreement found in the store after a restart."""
        alloc.committed, alloc.expires_at = True, None
        self._allocs[alloc.key] = alloc
        self._changed()

    def release(self, key: str) -> bool:
        """Give back whatever ``key`` holds (cancel, completion, failure)."""
        alloc = self._allocs.pop(key, None)
        if alloc is not None:
            self._changed()
        return alloc is not None

    def expire(self) -> list[str]:
        """Drop reservations whose time is up; return their keys."""
        now = self.clock()
        gone = [k for k, a in self._allocs.items() if a.expires_at is not None and a.expires_at <= now]
        for k in gone:
            del self._allocs[k]
            log.info("reservation %s expired", k)
        if gone:
            self._changed()
        return gone

    # ---- helpers

    def _busy(self, detail: str) -> NoCapacity:
        return NoCapacity(RefusalReason.BUSY, detail, queue_depth=len(self._allocs))

    def _check_total(self, req: Resources) -> None:
        gpus, cpu, mem, disk = self._totals()
        if req.gpu is not None:
            kind = [g for g in gpus if _gpu_fits(g, req.gpu, memory=False)]
            if len(kind) < req.gpu.count:
                raise NoCapacity(
                    RefusalReason.NO_MATCHING_GPU, f"{len(kind)} fitting GPUs here, {req.gpu.count} needed"
                )
            big = [g for g in kind if g.memory_mib >= req.gpu.min_memory_mib]
            if len(big) < req.gpu.count:
                raise NoCapacity(
                    RefusalReason.INSUFFICIENT_GPU_MEMORY,
                    f"{len(big)} GPUs with {req.gpu.min_memory_mib} MiB, {req.gpu.count} needed",
                )
        for name, need, have in (
            ("cpu_millis", req.cpu_millis, cpu),
            ("memory_mib", req.memory_mib, mem),
            ("disk_mib", req.disk_mib, disk),
        ):
            if need > have:
                raise NoCapacity(RefusalReason.INSUFFICIENT_RESOURCES, f"{name}: need {need}, node has {have}")

    def _changed(self) -> None:
        for cb in self.on_change:
            cb()
