"""``/v1/health``, ``/v1/id``, ``/v1/peers``, ``/v1/status``: the node itself.

``/v1/status`` is what ``cpn status`` prints: one document with the node's
health, how reachable its addresses are, its GPUs and what state each is in,
its capacity (total, free, reserved by quotes, committed to agreements), the
jobs running on both sides, its peers and its advert's expiry.  Everything
comes from the services' public state; nothing is probed anew.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio

from node.api.server import Api, Request
from node.execute.service import ExecutionService
from node.find.adverts import DiscoveryService
from node.find.nvml import FAKE_MARK
from node.jobs.provider import ProviderJobs
from node.jobs.runner import JobRunner
from node.jobs.runs import FINAL_STATES
from node.negotiate.scheduler import Allocation, Scheduler
from node.p2p import P2PHost
from protocol import sha256
from protocol.advert import Advert

__all__ = ["register", "address_scope", "SCOPE_MEANING"]

#: What each address scope means for who can reach the node.
SCOPE_MEANING = {
    "loopback": "this host only",
    "link-local": "this network link only",
    "private": "this private network only (behind NAT: not from the internet without port forwarding)",
    "public": "the internet, unless a firewall blocks it",
    "unspecified": "every interface of this host",
    "unknown": "unknown",
}


def address_scope(addr: str) -> str:
    """``loopback`` / ``link-local`` / ``private`` / ``public`` / ``unspecified`` of a multiaddr or IP."""
    parts = addr.split("/")
    host = parts[2] if len(parts) > 2 and parts[1] in ("ip4", "ip6") else addr
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return "unknown"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private or ip.is_reserved or ip.is_multicast:
        return "private"
    return "public"


def _reachability(p2p: P2PHost, data_host: str) -> dict[str, Any]:
    listen = [{"addr": a, "scope": address_scope(a)} for a in p2p.listen_addrs]
    scopes = {x["scope"] for x in listen}
    best = next((s for s in ("public", "unspecified", "private", "link-local", "loopback") if s in scopes),
                "unknown")
    return {
        "listen": listen,
        "data_plane": {"host": data_host, "scope": address_scope(data_host)},
        "scope": best,
        "reachable_from": SCOPE_MEANING[best],
    }


def _amounts(cpu_millis: int = 0, memory_mib: int = 0, disk_mib: int = 0, gpus: int = 0) -> dict[str, int]:
    return {"gpus": gpus, "cpu_millis": cpu_millis, "memory_mib": memory_mib, "disk_mib": disk_mib}


def _committed(scheduler: Scheduler, provider_jobs: ProviderJobs) -> list[Allocation]:
    return [a for a in scheduler.allocations() if a.committed]


def _capacity(scheduler: Scheduler, provider_jobs: ProviderJobs) -> dict[str, Any]:
    res = scheduler.resources
    if res is None:
        return {"probed": False}
    free = scheduler.free()
    committed = _committed(scheduler, provider_jobs)
    total = _amounts(res.cpu_cores * 1000, res.memory_mib, res.disk_mib, len(res.gpus))
    free_d = _amounts(free.cpu_millis, free.memory_mib, free.disk_mib, len(free.gpu_uuids))
    com = _amounts(sum(a.cpu_millis for a in committed), sum(a.memory_mib for a in committed),
                   sum(a.disk_mib for a in committed), sum(len(a.gpu_uuids) for a in committed))
    reserved = {k: total[k] - free_d[k] - com[k] for k in total}  # held by quotes not yet accepted
    return {"probed": True, "total": total, "free": free_d, "reserved": reserved, "committed": com,
            "queue_depth": scheduler.queue_depth}


def _gpus(discovery: DiscoveryService, scheduler: Scheduler, provider_jobs: ProviderJobs) -> dict[str, Any]:
    report = discovery.report
    if report is None:
        return {"probed": False, "devices": []}
    free = set(scheduler.free().gpu_uuids) if scheduler.resources is not None else set()
    committed = {u for a in _committed(scheduler, provider_jobs) for u in a.gpu_uuids}
    devices = []
    for g in report.gpus:
        if g.mig_mode:
            state = "mig"  # partitioned: not offered as a whole device
        elif g.uuid in committed:
            state = "committed"
        elif g.uuid in free:
            state = "free"
        else:
            state = "reserved"
        devices.append({
            "index": g.index, "name": g.name, "uuid": g.uuid, "fake": g.name.endswith(FAKE_MARK),
            "memory_total_mib": g.memory_total_mib, "memory_free_mib": g.memory_free_mib,
            "compute_capability": g.compute_capability, "utilisation_gpu_pct": g.utilisation_gpu_pct,
            "state": state,
        })
    return {"probed": True, "devices": devices, "nvml_error": report.nvml_error,
            "left_out": list(report.gpu_errors), "driver_version": report.driver_version,
            "cuda_driver_version": report.cuda_driver_version}


def _container(execution: ExecutionService) -> dict[str, Any]:
    ex = execution.executor
    cap = ex.capability if ex is not None else None
    advertised = execution.capability
    return {
        "enabled": ex is not None,
        "tested": cap is not None,
        "ok": cap.ok if cap is not None else None,
        "reason": cap.reason if cap is not None else "",
        "advertised_runtime": advertised.runtime,
        "gpu_cdi": advertised.gpu_cdi,
    }


def _jobs(provider_jobs: ProviderJobs, runner: JobRunner) -> dict[str, Any]:
    serving = [{"agreement_id": pj.aid, "submitter": pj.submitter, "phase": pj.phase.value, "detail": pj.detail}
               for pj in provider_jobs.jobs.values() if pj.result is None]
    submitted = [{"id": r.id, "state": r.state.value, "provider": r.attempts[-1].provider if r.attempts else None}
                 for r in runner.runs.values() if r.state not in FINAL_STATES]
    return {"serving": serving, "submitted": submitted}


def _advert(discovery: DiscoveryService, now: float) -> dict[str, Any]:
    current = discovery.current
    if current is None:
        return {"published": False, "identifiers": [i["id"] for i in discovery.advertised]}
    msg = current.message
    expires = msg.expires_at if isinstance(msg, Advert) else None  # a tombstone withdraws, never expires
    return {
        "published": True,
        "type": type(msg).__name__.lower(),
        "seq": msg.seq,
        "expires_at": expires,
        "expires_in_s": None if expires is None else round(expires - now),
        "identifiers": [i["id"] for i in discovery.advertised],
    }


def register(
    api: Api, *, p2p: P2PHost, discovery: DiscoveryService, data_dir: Path, stopping: trio.Event,
    scheduler: Scheduler, execution: ExecutionService, provider_jobs: ProviderJobs, runner: JobRunner,
    data_host: str,
    web_ports: Mapping[str, int] | None = None,
) -> None:
    started_at = time.monotonic()
    ports = web_ports if web_ports is not None else {}

    async def health(request: Request) -> Any:
        """Liveness: the daemon is up and serving."""
        return {
            "status": "stopping" if stopping.is_set() else "ok",
            "peer_id": p2p.peer_id,
            "peers": len(p2p.connected_peers()),
            "uptime_s": round(time.monotonic() - started_at, 1),
        }

    async def identity(request: Request) -> Any:
        """Peer ID, listen addresses and advertised compute identifiers with their CIDs."""
        return {
            "peer_id": p2p.peer_id,
            "addrs": p2p.listen_addrs,
            "identifiers": discovery.advertised,
            "data_dir": str(data_dir),
            # "pure" means SHA-256 in Python (no libcrypto found): ~1000x slower transfers
            "sha256_backend": sha256.BACKEND,
            # the 127.0.0.1 web ports once they serve: {"dashboard": url, "metrics": url}
            **{name: f"http://127.0.0.1:{port}/" for name, port in ports.items()},
            # public/private/unknown, public IP, NAT type, announced direct and relay
            # addresses, and how each connected peer is reached (direct, relayed, ...)
            "reachability": dict(p2p.reachability.to_json(), connections=p2p.connection_paths()),
        }

    async def peers(request: Request) -> Any:
        """Connected peers and DHT table sizes."""
        return {
            "connected": p2p.connected_peers(),
            "routing_table": p2p.routing_table_size(),
            "dht_values": p2p.value_store_size(),
        }

    async def status(request: Request) -> Any:
        """Everything `cpn status` shows: health, reachability, GPUs, capacity, jobs, peers, advert."""
        return {
            "node": {**await health(request), "data_dir": str(data_dir), "sha256_backend": sha256.BACKEND},
            "reachability": _reachability(p2p, data_host),
            "gpus": _gpus(discovery, scheduler, provider_jobs),
            "container": _container(execution),
            "capacity": _capacity(scheduler, provider_jobs),
            "jobs": _jobs(provider_jobs, runner),
            "peers": {"connected": len(p2p.connected_peers()), "routing_table": p2p.routing_table_size()},
            "advert": _advert(discovery, discovery.clock()),
        }

    api.route("GET", "/v1/health", health, summary="Liveness and peer count")
    api.route("GET", "/v1/id", identity, summary="Identity and advertised identifiers")
    api.route("GET", "/v1/peers", peers, summary="Connections and DHT sizes")
    api.route("GET", "/v1/status", status, summary="Health, reachability, GPUs, capacity, jobs, peers, advert")
