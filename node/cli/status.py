"""``cpn status`` (the node at a glance) and ``cpn peers`` (its connections)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status", help="the node at a glance: health, reachability, GPUs, capacity, jobs, peers, advert",
        description="Exit status 0 when the daemon answers (whatever its state), 7 when it is not running.",
    )
    p.set_defaults(func=cmd_status)
    peers = sub.add_parser("peers", help="connected peers and the DHT routing table")
    peers.set_defaults(func=cmd_peers)


def _mib(n: int) -> str:
    return f"{n / 1024:.1f} GiB" if n >= 1024 else f"{n} MiB"


def _cores(millis: int) -> str:
    return f"{millis / 1000:g}"


def _capacity_lines(cap: dict[str, Any]) -> list[str]:
    if not cap.get("probed"):
        return ["capacity:  not probed yet"]
    rows = [("", "GPUS", "CPU", "MEMORY", "DISK")]
    for name in ("total", "free", "reserved", "committed"):
        c = cap[name]
        rows.append((name, str(c["gpus"]), _cores(c["cpu_millis"]), _mib(c["memory_mib"]), _mib(c["disk_mib"])))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["capacity:  (reserved: held by quotes not yet accepted; committed: agreed jobs)"]
    for r in rows:
        lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return lines


def _gpu_lines(gpus: dict[str, Any]) -> list[str]:
    devices = gpus.get("devices", [])
    if not gpus.get("probed"):
        return ["gpus:      not probed yet"]
    if not devices:
        why = f" (NVML: {gpus['nvml_error']})" if gpus.get("nvml_error") else ""
        return [f"gpus:      none{why}"]
    lines = [f"gpus:      {len(devices)} (driver {gpus.get('driver_version')}, CUDA {gpus.get('cuda_driver_version')})"]
    for d in devices:
        util = "-" if d["utilisation_gpu_pct"] is None else f"{d['utilisation_gpu_pct']}%"
        lines.append(f"  [{d['index']}] {d['name']}  {d['state']}  {_mib(d['memory_free_mib'])} free of "
                     f"{_mib(d['memory_total_mib'])}, util {util}, cc {d['compute_capability']}")
    lines += [f"  {e}" for e in gpus.get("left_out", [])]
    if any(d["fake"] for d in devices):
        lines.append("  (fake): a fake NVML inventory (testnets); these GPUs cannot run GPU containers")
    return lines


def _container_line(c: dict[str, Any]) -> str:
    if not c["enabled"]:
        return "container: execution disabled ([execution] enabled = false): this node runs no jobs"
    if not c["tested"]:
        return "container: self-test still running"
    if c["ok"]:
        gpu = ", GPUs via CDI" if c["gpu_cdi"] else ""
        return f"container: {c['advertised_runtime']} (self-test passed{gpu})"
    return f"container: self-test FAILED: {c['reason']}"


def _jobs_lines(jobs: dict[str, Any]) -> list[str]:
    serving, submitted = jobs["serving"], jobs["submitted"]
    lines = [f"jobs:      {len(serving)} running here for others, {len(submitted)} submitted and not done"]
    for j in serving:
        lines.append(f"  serving   {j['agreement_id']}  {j['phase']}  for {j['submitter']}")
    for j in submitted:
        lines.append(f"  submitted {j['id']}  {j['state']}" + (f"  on {j['provider']}" if j["provider"] else ""))
    return lines


def _advert_line(a: dict[str, Any]) -> str:
    if not a["published"]:
        return "advert:    not published (discovery disabled or not started)"
    if a["type"] != "advert":
        return f"advert:    withdrawn (tombstone seq {a['seq']})"
    ids = ", ".join(a["identifiers"]) or "none"
    return f"advert:    seq {a['seq']}, expires in {a['expires_in_s']} s (refreshed before); identifiers: {ids}"


def print_status(s: dict[str, Any]) -> None:
    n, r = s["node"], s["reachability"]
    print(f"node:      {n['peer_id']}  {n['status']}, up {n['uptime_s']:.0f} s, data dir {n['data_dir']}")
    print(f"reachable: from {r['reachable_from']}")
    for a in r["listen"]:
        print(f"  {a['addr']}  ({a['scope']})")
    dp = r["data_plane"]
    print(f"  data plane on {dp['host']}  ({dp['scope']}; transfer.data_host)")
    for line in _gpu_lines(s["gpus"]):
        print(line)
    print(_container_line(s["container"]))
    for line in _capacity_lines(s["capacity"]):
        print(line)
    for line in _jobs_lines(s["jobs"]):
        print(line)
    p = s["peers"]
    print(f"peers:     {p['connected']} connected, {p['routing_table']} in the DHT routing table (cpn peers)")
    print(_advert_line(s["advert"]))


def cmd_status(args: argparse.Namespace) -> int:
    from node.api.client import ApiClient

    status = ApiClient(args.data_dir).get("/v1/status")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print_status(status)
    return 0


def cmd_peers(args: argparse.Namespace) -> int:
    from node.api.client import ApiClient

    peers = ApiClient(args.data_dir).get("/v1/peers")
    if args.json:
        print(json.dumps(peers, indent=2))
        return 0
    print(f"{len(peers['connected'])} connected, {peers['routing_table']} in the DHT routing table, "
          f"{peers['dht_values']} DHT records held")
    for peer in peers["connected"]:
        print(f"  {peer}")
    return 0
