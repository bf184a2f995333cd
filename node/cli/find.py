"""``cpn find``: live providers matching a requirement, ranked (asks the local daemon)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("find", help="find live providers matching a resource requirement")
    p.add_argument("--gpus", type=int, help="number of GPUs")
    p.add_argument("--gpu-mem", help="minimum memory per GPU, e.g. 40GiB")
    p.add_argument("--gpu-model", action="append", help="GPU model, e.g. h100 (repeatable)")
    p.add_argument("--vendor", help="GPU vendor: nvidia, amd, intel")
    p.add_argument("--cc", help="minimum CUDA compute capability, e.g. 9.0")
    p.add_argument("--cpus", type=float, help="CPU cores")
    p.add_argument("--mem", help="memory, e.g. 16GiB")
    p.add_argument("--disk", help="scratch disk, e.g. 100GiB")
    p.add_argument("--id", help="look up this one compute identifier instead (e.g. cpn:gpu/nvidia)")
    p.add_argument("--limit", type=int, default=10, help="at most K offers (default 10)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to search (default 5)")
    p.add_argument("--data-dir", type=Path, help="data dir of the daemon to ask")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_find)


def cmd_find(args: argparse.Namespace) -> int:
    from node.api.client import ApiClient

    body = {
        "gpus": args.gpus,
        "gpu_mem": args.gpu_mem,
        "gpu_model": args.gpu_model,
        "vendor": args.vendor,
        "cc": args.cc,
        "cpus": args.cpus,
        "mem": args.mem,
        "disk": args.disk,
        "id": args.id,
        "limit": args.limit,
        "timeout": args.timeout,
    }
    body = {k: v for k, v in body.items() if v is not None}
    client = ApiClient(args.data_dir, timeout=args.timeout + 30)
    result = client.post("/v1/find", body)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0 if result["offers"] else 3
    print_result(result)
    return 0 if result["offers"] else 3


def _fmt_price(micro: int) -> str:
    return f"{micro / 1_000_000:.4f}/h"


def print_result(result: dict[str, Any]) -> None:
    offers = result["offers"]
    print(
        f"looked up: {', '.join(result['identifiers'])}  ({result['elapsed_ms']} ms, "
        f"{result['hops']} hops)"
    )
    if offers:
        rows = [("#", "PEER", "GPUS", "CPU", "MEM", "FIT", "RTT", "PRICE")]
        for i, o in enumerate(offers, 1):
            rtt = f"{o['rtt_ms']} ms" if o["rtt_ms"] is not None else "-"
            rows.append(
                (
                    str(i),
                    o["peer_id"],
                    o["gpu_summary"],
                    str(o["cpu_cores"]),
                    f"{o['memory_mib'] // 1024}G",
                    f"{o['fit_pct']}%",
                    rtt,
                    _fmt_price(o["hourly_cost"]),
                )
            )
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        for r in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        return
    expl = result["explanation"]
    print(f"no provider matched. {result['summary']}")
    if expl["candidates"] == 0 and not expl["unreachable"]:
        print("  no provider advertises these identifiers (or none was found within the timeout)")
    for name, n in expl["eliminated"].items():
        print(f"  {n} eliminated by {name}")
    if expl["unreachable"]:
        print(f"  {expl['unreachable']} provider(s) unreachable")
    if expl["invalid"]:
        print(f"  {expl['invalid']} provider(s) sent an invalid advert")
    if result.get("timed_out"):
        print("  the search hit its timeout; try --timeout with a larger value")
