"""node/cli/status.py and GET /v1/status (node/api/routes/node.py): `cpn status`,
`cpn peers`, with the reachability, GPU, capacity, job, peer and advert facts."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
from support.daemons import Testnet

from node.api.routes.node import _capacity, _gpus, address_scope
from node.find.nvml import load_fake_nvml
from node.find.probe import probe_sync
from node.negotiate.scheduler import Scheduler
from protocol.jobspec import GpuRequirement, Resources


def test_status_json(net: Testnet) -> None:
    done = net.cpn(0, "status", "--json")
    assert done.returncode == 0, done.stderr
    s = json.loads(done.stdout)
    assert s["node"]["peer_id"] == net.ready[0]["peer_id"] and s["node"]["status"] == "ok"
    assert s["reachability"]["scope"] == "loopback" and s["reachability"]["reachable_from"] == "this host only"
    assert [a["scope"] for a in s["reachability"]["listen"]] == ["loopback"]
    devices = s["gpus"]["devices"]
    assert [(d["name"], d["fake"], d["state"]) for d in devices] == [
        ("NVIDIA H100 80GB HBM3 (fake)", True, "free"),
        ("NVIDIA GeForce RTX 4090 (fake)", True, "free"),
        ("NVIDIA A100-SXM4-40GB (fake)", True, "free"),
    ]
    cap = s["capacity"]
    assert cap["total"]["gpus"] == 3 and cap["free"] == cap["total"]
    assert cap["reserved"] == cap["committed"] == {"gpus": 0, "cpu_millis": 0, "memory_mib": 0, "disk_mib": 0}
    assert s["container"] == {"enabled": False, "tested": False, "ok": None, "reason": "",
                              "advertised_runtime": "none", "gpu_cdi": False}
    assert s["jobs"] == {"serving": [], "submitted": []}
    assert s["peers"]["connected"] >= 1 and s["peers"]["routing_table"] >= 1
    advert = s["advert"]
    assert advert["published"] and advert["type"] == "advert"
    assert 0 < advert["expires_in_s"] <= 600 and advert["expires_at"] > time.time()
    assert "cpn:gpu/nvidia/h100" in advert["identifiers"]


def test_status_text(net: Testnet) -> None:
    out = net.cpn(0, "status").stdout
    for text in ("reachable: from this host only", "(loopback)", "[0] NVIDIA H100 80GB HBM3 (fake)  free",
                 "(fake): a fake NVML inventory", "container: execution disabled", "committed  0",
                 "peers:     ", "advert:    seq ", "expires in "):
        assert text in out, (text, out)


def test_peers(net: Testnet) -> None:
    done = net.cpn(2, "peers", "--json")
    assert done.returncode == 0, done.stderr
    peers = json.loads(done.stdout)
    assert net.ready[0]["peer_id"] in peers["connected"] and peers["routing_table"] >= 1
    text = net.cpn(2, "peers").stdout
    assert "connected" in text and net.ready[0]["peer_id"] in text


@pytest.mark.parametrize(
    ("addr", "scope"),
    [("/ip4/127.0.0.1/tcp/1/p2p/x", "loopback"), ("/ip4/10.1.2.3/tcp/1", "private"),
     ("/ip4/192.168.1.9/tcp/1", "private"), ("/ip4/169.254.1.2/tcp/1", "link-local"),
     ("/ip4/8.8.8.8/tcp/4001", "public"), ("/ip6/::1/tcp/1", "loopback"), ("/ip4/0.0.0.0/tcp/1", "unspecified"),
     ("/ip6/2001:4860::8888/tcp/1", "public"), ("/dns4/example.com/tcp/1", "unknown")],
)
def test_address_scopes(addr: str, scope: str) -> None:
    assert address_scope(addr) == scope


def test_capacity_free_reserved_committed(tmp_path: object) -> None:
    """A quote reserves, an agreement commits: each shows in its own row, and per GPU."""
    report = probe_sync(tmp_path, backend=load_fake_nvml("h100:3"), affinity=8)  # type: ignore[arg-type]
    scheduler = Scheduler(report.resource_set(), clock=lambda: 0.0)
    gpu = GpuRequirement(count=1, min_memory_mib=0, vendor=None, models=(), min_compute_capability=None)
    req = Resources(gpu=gpu, cpu_millis=1000, memory_mib=1024, disk_mib=10)
    held = scheduler.reserve("q" * 32, req, seconds=30)
    agreed = scheduler.reserve("a" * 32, req, seconds=30)
    scheduler.commit("a" * 32)
    provider_jobs = SimpleNamespace(jobs={"a" * 32: object()})  # the provider side's agreed jobs
    cap = _capacity(scheduler, provider_jobs)  # type: ignore[arg-type]
    assert cap["total"]["gpus"] == 3 and cap["free"]["gpus"] == 1
    assert cap["reserved"] == {"gpus": 1, "cpu_millis": 1000, "memory_mib": 1024, "disk_mib": 10}
    assert cap["committed"] == {"gpus": 1, "cpu_millis": 1000, "memory_mib": 1024, "disk_mib": 10}
    discovery = SimpleNamespace(report=report)
    states = {d["uuid"]: d["state"] for d in _gpus(discovery, scheduler, provider_jobs)["devices"]}  # type: ignore[arg-type]
    assert states[held.gpu_uuids[0]] == "reserved" and states[agreed.gpu_uuids[0]] == "committed"
    assert sorted(states.values()) == ["committed", "free", "reserved"]
