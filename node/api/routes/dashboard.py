"""``/v1/dashboard/*``: read-only views the web dashboard shows (and any API client may read).

* ``gpus``: each GPU with live utilisation and memory, re-sampled from NVML
  (or the fake backend) at most once a second however many clients ask, in
  one worker thread of its own, and whether the scheduler holds it;
* ``capacity``: what the node has, what is free, reserved (a quote) and
  committed (an agreement), and each holder;
* ``adverts``: this node's signed record and the adverts of other peers it
  holds, each verified now, with their expiry;
* ``served``: the jobs this node runs for others (provider side), live;
* ``ledger``: the receipt ledger's entries and the totals earned and spent
  per peer, priced from the co-signed agreements.

Every handler only reads; nothing here changes the node.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.api.params import query_int
from node.api.server import Api, Request
from node.clock import UnixClock
from node.find.adverts import DiscoveryService
from node.find.nvml import NvmlBackend, NvmlError, make_backend
from node.find.records import advert_key
from node.jobs.provider import ProviderJobs
from node.ledger import Ledger, LedgerEntry
from node.negotiate.agreements import AgreementStore
from node.negotiate.scheduler import Allocation, Scheduler
from node.p2p import P2PHost
from protocol.advert import Advert, Tombstone, open_record
from protocol.envelope import open_envelope
from protocol.errors import ProtocolError
from protocol.negotiation import Agreement
from protocol.result import verify_receipt

__all__ = ["register", "GpuSampler", "LedgerTotals", "SAMPLE_INTERVAL_S"]

SAMPLE_INTERVAL_S = 1.0  #: NVML is asked at most this often, however many clients poll
SAMPLE_TIMEOUT_S = 2.0  #: a GPU that stalls NVML longer gets the last sample, marked stale
MAX_ADVERTS = 200  #: other peers' adverts listed
MIB = 1 << 20


# --------------------------------------------------------------------------- GPUs


@dataclass
class GpuSampler:
    """Live GPU figures from the node's NVML backend, cached for :data:`SAMPLE_INTERVAL_S`.

    One sample runs at a time, in a worker thread with its own limiter (a lost
    GPU can block NVML for seconds); a caller that would wait longer than
    :data:`SAMPLE_TIMEOUT_S` gets the previous sample marked ``stale``.
    """

    backend_factory: Callable[[], NvmlBackend]
    now: Callable[[], float] = trio.current_time
    _backend: NvmlBackend | None = None
    _error: str | None = None
    _sample: dict[str, dict[str, Any]] = field(default_factory=dict)
    _taken_at: float = -math.inf
    _lock: trio.Lock = field(default_factory=trio.Lock)
    _limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))
    samples: int = 0  #: samples taken (tests check the rate limit with it)

    async def sample(self) -> tuple[dict[str, dict[str, Any]], str | None, bool]:
        """``(uuid -> figures, error, stale)``; figures: memory used/total MiB, utilisation %."""
        async with self._lock:
            if self.now() - self._taken_at < SAMPLE_INTERVAL_S:
                return self._sample, self._error, False
            with trio.move_on_after(SAMPLE_TIMEOUT_S) as waited:
                sample = await trio.to_thread.run_sync(  # type: ignore[call-arg]  # stubs predate it
                    self._sample_sync, limiter=self._limiter, abandon_on_cancel=True
                )
            if waited.cancelled_caught:
                return self._sample, self._error, True
            self._sample, self._taken_at = sample, self.now()
            self.samples += 1
            return self._sample, self._error, False

    def _sample_sync(self) -> dict[str, dict[str, Any]]:
        nv = self._backend
        try:
            if nv is None:
                nv = self.backend_factory()
                nv.init()
                self._backend, self._error = nv, None
            out: dict[str, dict[str, Any]] = {}
            for i in range(nv.device_count()):
                uuid = nv.uuid(i)
                total, free = nv.memory(i)
                gpu: int | None
                mem: int | None
                try:
                    gpu, mem = nv.utilisation(i)
                except NvmlError:
                    gpu = mem = None
                out[uuid] = {"memory_total_mib": total // MIB, "memory_used_mib": (total - free) // MIB,
                             "utilisation_gpu_pct": gpu, "utilisation_memory_pct": mem}
            return out
        except NvmlError as exc:
            self._error = str(exc)[:200]
            return {}


def _gpu_holders(allocs: list[Allocation]) -> dict[str, Allocation]:
    return {u: a for a in allocs for u in a.gpu_uuids}


# --------------------------------------------------------------------------- ledger


@dataclass
class LedgerTotals:
    """The ledger read incrementally: each entry is opened and priced once.

    A receipt's price is the one both parties signed in the agreement
    (``terms.price``, micro-units for the whole job); a receipt whose
    agreement is not in this node's store counts as ``unpriced``.
    """

    data_dir: Path
    peer_id: str
    agreements: AgreementStore
    rows: list[dict[str, Any]] = field(default_factory=list)
    _limiter: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(1))

    async def refresh(self) -> list[dict[str, Any]]:
        path = self.data_dir / "ledger.sqlite"
        if not path.is_file():
            return self.rows
        after = len(self.rows)
        new = await trio.to_thread.run_sync(self._read_after, path, after, limiter=self._limiter)
        for row in new:
            row["price"] = self._price(row)
        if len(self.rows) == after:  # a concurrent refresh did not get there first
            self.rows.extend(new)
        return self.rows

    @staticmethod
    def _read_after(path: Path, after: int) -> list[dict[str, Any]]:
        with Ledger(path) as ledger:
            return [_entry_row(e) for e in ledger.entries() if e.seq > after]

    def _price(self, row: dict[str, Any]) -> int | None:
        aid = row.get("agreement_id")
        if not aid:
            return None
        role = "provider" if row["provider"] == self.peer_id else "submitter"
        for job in self.agreements.get(aid, role):
            raw = (job.record or {}).get("agreement")
            if job.id == aid and isinstance(raw, bytes):
                try:
                    return int(open_envelope(raw, expected=Agreement).message.terms.price)
                except ProtocolError:
                    return None
        return None

    def report(self, limit: int) -> dict[str, Any]:
        peers: dict[str, dict[str, Any]] = {}
        totals = {"earned": 0, "spent": 0, "disputed": 0, "unpriced": 0, "entries": len(self.rows)}
        for row in self.rows:
            mine = "earned" if row["provider"] == self.peer_id else "spent"
            other = row["submitter"] if mine == "earned" else row["provider"]
            if not other:
                continue
            p = peers.setdefault(other, {"peer": other, "earned": 0, "spent": 0, "jobs": 0, "disputed": 0})
            p["jobs"] += 1
            if not row["accepted"]:
                p["disputed"] += 1
                totals["disputed"] += 1
            elif row["price"] is None:
                totals["unpriced"] += 1
            else:
                p[mine] += row["price"]
                totals[mine] += row["price"]
        return {"totals": totals, "peers": sorted(peers.values(), key=lambda p: (-p["jobs"], p["peer"])),
                "entries": list(reversed(self.rows[-limit:])), "unit": "micro"}


def _entry_row(e: LedgerEntry) -> dict[str, Any]:
    row: dict[str, Any] = {"seq": e.seq, "recorded_at": e.recorded_at, "entry_hash": e.entry_hash.hex()}
    try:
        v = verify_receipt(e.receipt)
    except ProtocolError as exc:
        return {**row, "invalid": exc.reason, "provider": "", "submitter": "", "accepted": False}
    r = v.result.message
    return {**row, "agreement_id": r.agreement_id.hex(), "provider": r.provider, "submitter": r.submitter,
            "accepted": v.receipt.message.accepted, "outcome": r.outcome.value, "exit_code": r.exit_code,
            "wall_ms": r.metering.wall_ms}


# --------------------------------------------------------------------------- the views


@dataclass
class Views:
    """The handlers; each reads the services it was given."""

    p2p: P2PHost
    discovery: DiscoveryService
    scheduler: Scheduler
    provider_jobs: ProviderJobs
    clock: UnixClock
    sampler: GpuSampler
    ledger: LedgerTotals
    fake_gpus: bool

    def _allocations(self) -> list[Allocation]:
        return self.scheduler.allocations()

    async def gpus(self, request: Request) -> Any:
        """Each GPU: probe facts, live memory and utilisation, and who holds it."""
        report = self.discovery.report
        live: dict[str, dict[str, Any]] = {}
        error, stale = None, False
        if report is not None and report.gpus:  # nothing to sample on a host without GPUs
            live, error, stale = await self.sampler.sample()
        holders = _gpu_holders(self._allocations())
        out = []
        for g in report.gpus if report is not None else ():
            now = live.get(g.uuid, {})
            alloc = holders.get(g.uuid)
            out.append({
                "index": g.index, "uuid": g.uuid, "name": g.name, "model": g.gpu_info().model,
                "compute_capability": g.compute_capability, "mig": g.mig_mode,
                "memory_total_mib": now.get("memory_total_mib", g.memory_total_mib),
                "memory_used_mib": now.get("memory_used_mib", g.memory_total_mib - g.memory_free_mib),
                "utilisation_gpu_pct": now.get("utilisation_gpu_pct", g.utilisation_gpu_pct),
                "utilisation_memory_pct": now.get("utilisation_memory_pct", g.utilisation_memory_pct),
                "live": bool(now),
                "state": "free" if alloc is None else ("committed" if alloc.committed else "reserved"),
                "held_by": alloc.key if alloc is not None else None,
            })
        return {"gpus": out, "fake": self.fake_gpus, "stale": stale, "error": error,
                "nvml_error": report.nvml_error if report is not None else None,
                "driver_version": report.driver_version if report is not None else None,
                "cuda_driver_version": report.cuda_driver_version if report is not None else None}

    async def capacity(self, request: Request) -> Any:
        """What the node has, what is free, reserved and committed, and who holds it."""
        res = self.scheduler.resources
        allocs = self._allocations()
        free = self.scheduler.free()
        now = trio.current_time()

        def part(items: list[Allocation]) -> dict[str, Any]:
            return {"gpus": sum(len(a.gpu_uuids) for a in items), "cpu_millis": sum(a.cpu_millis for a in items),
                    "memory_mib": sum(a.memory_mib for a in items), "disk_mib": sum(a.disk_mib for a in items),
                    "count": len(items)}

        return {
            "total": None if res is None else {"gpus": len(res.gpus), "cpu_millis": res.cpu_cores * 1000,
                                               "memory_mib": res.memory_mib, "disk_mib": res.disk_mib},
            "free": {"gpus": len(free.gpu_uuids), "cpu_millis": free.cpu_millis, "memory_mib": free.memory_mib,
                     "disk_mib": free.disk_mib},
            "reserved": part([a for a in allocs if not a.committed]),
            "committed": part([a for a in allocs if a.committed]),
            "holders": [{"key": a.key, "committed": a.committed, "gpus": list(a.gpu_models),
                         "cpu_millis": a.cpu_millis, "memory_mib": a.memory_mib, "disk_mib": a.disk_mib,
                         "expires_in_s": None if a.expires_at is None else round(a.expires_at - now, 1)}
                        for a in allocs],
        }

    async def adverts(self, request: Request) -> Any:
        """This node's current record, and the adverts of other peers held here, verified now."""
        now = int(self.clock())
        own = self.discovery.current
        mine = _record_json(own.message, now) if own is not None else None
        peers = set(self.discovery.finder.cache) | set(self.p2p.connected_peers())
        others = []
        for peer in sorted(peers - {self.p2p.peer_id})[:MAX_ADVERTS]:
            raws = [r for r in (self.p2p.local_value(advert_key(peer)),
                                self.discovery.finder.cache.get(peer, (None, 0))[0]) if r is not None]
            best: dict[str, Any] | None = None
            for raw in raws:
                try:
                    rec = _record_json(open_record(raw, now, peer_id=peer).message, now)
                except ProtocolError as exc:
                    rec = {"peer_id": peer, "valid": False, "reason": exc.reason}
                if best is None or (rec.get("valid"), rec.get("seq", -1)) > (best.get("valid"), best.get("seq", -1)):
                    best = rec
            if best is not None:
                others.append(best)
        return {"own": mine, "peers": others, "now": now}

    async def served(self, request: Request) -> Any:
        """Jobs this node runs for others (provider side), as they stand now."""
        jobs = []
        for pj in self.provider_jobs.jobs.values():
            jobs.append({"agreement_id": pj.aid, "submitter": pj.submitter, "phase": pj.phase.value,
                         "detail": pj.detail, "gpus": list(pj.gpus), "transfer_done": pj.transfer_now,
                         "transfer_total": pj.transfer_total, "log_lines": len(pj.lines),
                         "cancelled": pj.cancelled})
        return {"jobs": list(reversed(jobs))}

    async def ledger_view(self, request: Request) -> Any:
        """Totals earned and spent per peer, and the newest entries (micro-units)."""
        limit = query_int(request, "limit", 50, 1, 1000)
        await self.ledger.refresh()
        return self.ledger.report(limit)


def _record_json(msg: Advert | Tombstone, now: int) -> dict[str, Any]:
    out: dict[str, Any] = {"peer_id": msg.peer_id, "type": type(msg).__name__.lower(), "seq": msg.seq,
                           "valid": True}
    if isinstance(msg, Advert):
        res = msg.resources
        out.update({
            "issued_at": msg.issued_at, "expires_at": msg.expires_at, "expires_in_s": msg.expires_at - now,
            "addrs": list(msg.addrs), "gpus": [g.model for g in res.gpus], "cpu_cores": res.cpu_cores,
            "memory_mib": res.memory_mib, "free_gpus": len(msg.free.gpu_uuids),
            "price_gpu_hour": msg.price.gpu_hour, "compute_ids": len(msg.compute_ids),
            "container": msg.container.to_wire(),
        })
    return out


def register(
    api: Api,
    *,
    p2p: P2PHost,
    discovery: DiscoveryService,
    scheduler: Scheduler,
    provider_jobs: ProviderJobs,
    agreements: AgreementStore,
    data_dir: Path,
    clock: UnixClock,
    fake_gpus: str,
) -> Views:
    """Add the dashboard's read routes to ``api``; returns the views (tests read their state)."""
    sampler = GpuSampler(lambda: make_backend(fake_gpus or None, seed=p2p.peer_id))
    views = Views(p2p=p2p, discovery=discovery, scheduler=scheduler, provider_jobs=provider_jobs, clock=clock,
                  sampler=sampler, ledger=LedgerTotals(data_dir, p2p.peer_id, agreements),
                  fake_gpus=bool(fake_gpus))
    api.route("GET", "/v1/dashboard/gpus", views.gpus, summary="GPUs: live utilisation and memory, holder")
    api.route("GET", "/v1/dashboard/capacity", views.capacity, summary="Capacity: total, free, reserved, committed")
    api.route("GET", "/v1/dashboard/adverts", views.adverts, summary="This node's advert and others held here")
    api.route("GET", "/v1/dashboard/served", views.served, summary="Jobs run here for others (provider side)")
    api.route("GET", "/v1/dashboard/ledger", views.ledger_view, summary="Ledger totals per peer and entries")
    return views
