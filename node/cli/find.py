"""``cpn find``: live providers matching a requirement, ranked (asks the local daemon)."""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from node.cli import int_range, number_range
from node.errors import ExitCode

#: Request and requirement fields the daemon may name in an error -> the flag to name instead.
FLAG_OF = {
    "gpus": "--gpus", "count": "--gpus", "gpu_mem": "--gpu-mem", "min_memory_mib": "--gpu-mem",
    "gpu_model": "--gpu-model", "models": "--gpu-model", "vendor": "--vendor", "cc": "--cc",
    "min_compute_capability": "--cc", "cpus": "--cpus", "cpu_millis": "--cpus", "mem": "--mem",
    "memory_mib": "--mem", "disk": "--disk", "disk_mib": "--disk", "id": "--id", "limit": "--limit",
    "timeout": "--timeout",
}  # fmt: skip

#: Marks a fake GPU's name (node/find/nvml.py FAKE_MARK); kept here so the CLI loads no NVML code.
FAKE_MARK = " (fake)"


def register(sub: Any) -> None:
    p = sub.add_parser("find", help="find live providers matching a resource requirement",
                       description="Exit status 0 with offers, 3 when no provider matched.")
    p.add_argument("--gpus", type=int_range(0, 1024), metavar="N", help="number of GPUs")
    p.add_argument("--gpu-mem", metavar="SIZE", help="minimum memory per GPU, e.g. 40GiB")
    p.add_argument("--gpu-model", action="append", metavar="MODEL",
                   help="GPU model as you see it: h100, 'rtx 4090', a100-40g (repeatable)")
    p.add_argument("--vendor", help="GPU vendor: nvidia, amd, intel")
    p.add_argument("--cc", help="minimum CUDA compute capability, e.g. 9.0")
    p.add_argument("--cpus", type=number_range(0, 65536, above=True), metavar="N", help="CPU cores")
    p.add_argument("--mem", metavar="SIZE", help="memory, e.g. 16GiB")
    p.add_argument("--disk", metavar="SIZE", help="scratch disk, e.g. 100GiB")
    p.add_argument("--id", help="look up this one compute identifier instead (e.g. cpn:gpu/nvidia)")
    p.add_argument("--limit", type=int_range(1, 1000), default=10, metavar="K",
                   help="at most K offers (default 10)")
    p.add_argument("--timeout", type=number_range(0.1, 120), default=5.0, metavar="S",
                   help="seconds to search (default 5)")
    p.set_defaults(func=cmd_find)


def flag_error(exc: Any) -> Any:
    """A daemon's 400 answer that names a request field, re-worded to name the flag."""
    from node.cli import CliError
    from node.errors import ApiAnswerError

    if not isinstance(exc, ApiAnswerError) or exc.status != 400:
        return exc
    m = re.match(r"([a-z_.]+):\s*(.*)", exc.detail, re.S)
    field = m.group(1).rsplit(".", 1)[-1] if m else ""
    if m is None or field not in FLAG_OF:
        return exc
    return CliError(f"{FLAG_OF[field]}: {m.group(2)}", ExitCode.BAD_INPUT)


def cmd_find(args: argparse.Namespace) -> int:
    from node.api.client import ApiClient
    from node.errors import ApiAnswerError

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
    try:
        result = client.post("/v1/find", body)
    except ApiAnswerError as exc:
        raise flag_error(exc) from None
    code = ExitCode.OK if result["offers"] else ExitCode.NO_PROVIDER
    if args.json:
        print(json.dumps(result, indent=2))
        return code
    print_result(result)
    return code


def gpus_shown(offer: dict[str, Any]) -> str:
    """The GPUS column: ``2xh100-80g``, marked ``(fake)`` when the provider's
    GPUs come from a fake NVML inventory (a testnet), so nobody mistakes them."""
    summary = str(offer["gpu_summary"])
    names = offer.get("gpu_names") or []
    if any(str(n).endswith(FAKE_MARK) for n in names):
        return f"{summary} (fake)"
    return summary


def print_result(result: dict[str, Any]) -> None:
    from node.cli.units import units

    offers = result["offers"]
    print(
        f"looked up: {', '.join(result['identifiers'])}  ({result['elapsed_ms']} ms, "
        f"{result['hops']} hops)"
    )
    if offers:
        rows = [("#", "PEER", "GPUS", "CPU", "MEM", "FIT", "RTT", "PRICE (units/h)")]
        for i, o in enumerate(offers, 1):
            rtt = f"{o['rtt_ms']} ms" if o["rtt_ms"] is not None else "-"
            rows.append(
                (
                    str(i),
                    o["peer_id"],
                    gpus_shown(o),
                    str(o["cpu_cores"]),
                    f"{o['memory_mib'] // 1024}G",
                    f"{o['fit_pct']}%",
                    rtt,
                    units(o["hourly_cost"]),
                )
            )
        widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
        for r in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
        if any(gpus_shown(o).endswith("(fake)") for o in offers):
            print("(fake): a testnet's fake NVML inventory; those GPUs cannot run GPU containers")
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
