"""``cpn transfers``: blob transfers of the local daemon with progress bars."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

BAR = 30


def register(sub: Any) -> None:
    p = sub.add_parser("transfers", help="show blob transfers (progress, rate, ETA)")
    p.add_argument("digest", nargs="?", help="only this blob (sha256:...)")
    p.add_argument("--watch", action="store_true", help="redraw every second until all are finished")
    p.set_defaults(func=cmd_transfers)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def render(t: dict[str, Any]) -> str:
    """One line: digest prefix, bar, percent, bytes, rate, ETA, phase."""
    total = t["total_bytes"] or 1
    frac = min(t["done_bytes"] / total, 1.0)
    filled = int(frac * BAR)
    eta = "" if t["eta_s"] is None else f" ETA {t['eta_s']:.0f}s"
    err = f" ({t['error']})" if t.get("error") else ""
    return (f"{t['digest'][7:19]} [{'#' * filled}{'.' * (BAR - filled)}] {frac * 100:5.1f}% "
            f"{_size(t['done_bytes'])}/{_size(t['total_bytes'])} {_size(t['rate_bytes_per_s'])}/s{eta} "
            f"{t['phase']}{err}")


def cmd_transfers(args: argparse.Namespace) -> int:
    from node.api.client import ApiClient

    client = ApiClient(args.data_dir)
    while True:
        if args.digest:
            items = [client.get(f"/v1/transfers/{args.digest}")]
        else:
            items = client.get("/v1/transfers")["transfers"]
        if args.json:
            print(json.dumps(items, indent=2))
            return 0
        if not items:
            print("no transfers")
        for t in items:
            print(render(t))
        running = [t for t in items if t["phase"] not in ("done", "failed", "deduplicated")]
        if not args.watch or not running:
            return 0
        time.sleep(1)
        print(f"\x1b[{len(items)}A", end="")
