"""Benchmark: findability after a mass start, joins, `cpn find` latency, idle CPU of a testnet.

For each network size N (``--sizes``), starts N daemons in separate processes
at once (``tools/testnet up -n N``, fake GPU mix) and measures, in order:

1. **Mass-start findability curve.**  From the moment ``up`` returns, every
   ``--every`` seconds for ``--curve-s`` seconds, finds each class through
   the daemon API of a different node (``--limit 1000``, as ``cpn find``
   does) and records the share of the *matching* providers it returned:
   ``cpu`` (``--id cpn:cpu``: every node) and ``2xh100`` (``--gpus 2
   --gpu-model h100``: the nodes with two or more H100s).  The daemons' CPU
   between checks is recorded too, and for a check that missed providers,
   why (``not_found``: no lookup named it; else its candidate status).  Reported: the share at the first check
   at or after 60 s, the worst share at any check from 60 s on, and the time
   from which every check found 100 %.
2. **Idle CPU**: the sum of all daemons' CPU over ``--idle-s`` seconds with
   nobody using the testnet (in % of one core), and the busiest second.  The
   default window, 300 s, is one advert refresh period (half the default
   600 s lifetime), so it holds every daemon's periodic refresh.
3. **Settled finds**: ``--queries`` finds from random nodes (a rotation of
   four requirements, ``--limit 10``): daemon-side time (lookup, verification,
   matching), client-side time (adds the API round trip), hops.
4. **Joins**: ``--joins`` times, one more node (two fake H100s) joins the
   settled network; the time from its ready line until a find from another
   node returns it (finds every 0.5 s), then it stops again.

``load_1m`` is the 1-minute load average (before start-up / after the curve /
at the end): this machine is shared, so read every number with it.  Log lines
at WARNING or above in all daemon logs are counted by logger.

    .venv/bin/python bench/find_latency.py [--sizes 60] [--curve-s 600] [--every 5]
        [--idle-s 300] [--queries 60] [--joins 10] [--json]

Targets (issue 14, N=60): 100 % findable 60 s after ``up`` returns and at
every check for 10 minutes; a joining node findable p99 <= 10 s; settled find
p50 <= 100 ms, p99 <= 300 ms; the idle testnet under 10 % of one core, no
burst that saturates the machine.  A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import testnet  # noqa: E402  (tools/testnet.py)

from node.api.client import ApiClient  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
QUERIES = [
    {"gpus": 1, "gpu_model": ["h100"]},
    {"gpus": 4, "gpu_model": ["l4"]},
    {"gpus": 1},
    {"gpus": 2, "gpu_mem": "40GiB"},
]
JOINER = "h100:2"
FIND_TIMEOUT = 10.0
PEER_ID = re.compile(r"12D3KooW\w+")  #: peer IDs in reasons, so that equal reasons count together


def h100s(spec: str) -> int:
    """H100s in a fake-GPU spec such as ``h100:1,a100-80g:1``."""
    return sum(int(n) for model, n in re.findall(r"([\w-]+):(\d+)", spec) if model == "h100")


#: class name -> (find body, does a node with this fake spec match?)
CLASSES: dict[str, tuple[dict[str, Any], Any]] = {
    "cpu": ({"id": "cpn:cpu"}, lambda spec: True),
    "2xh100": ({"gpus": 2, "gpu_model": ["h100"]}, lambda spec: h100s(spec) >= 2),
}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def find(node: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    client = ApiClient(socket_path=node["api"], timeout=FIND_TIMEOUT + 30)
    return client.post("/v1/find", {**body, "timeout": FIND_TIMEOUT})  # type: ignore[no-any-return]


def curve(nodes: list[dict[str, Any]], seconds: float, every: float) -> dict[str, Any]:
    """Findability of each class against time since ``up`` returned."""
    pids = [n["pid"] for n in nodes]
    t0 = time.monotonic()
    cpu0, at0, checks, k = cpu_seconds(pids), t0, [], 0
    while True:
        due = t0 + k * every
        if due - t0 > seconds:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        row: dict[str, Any] = {"t": round(time.monotonic() - t0, 1)}
        for c, (name, (body, matches)) in enumerate(CLASSES.items()):
            asker = nodes[(k * len(CLASSES) + c) % len(nodes)]
            expected = {n["peer_id"] for n in nodes if matches(n["fake_gpus"])}
            res = find(asker, {**body, "limit": 1000})
            got = {o["peer_id"] for o in res["offers"]} & expected
            row[name] = round(100 * len(got) / len(expected), 1) if expected else None
            row[name + "_ms"] = res["elapsed_ms"]
            if got != expected:  # why: never nominated by the lookup, or how verification went
                status = {c["peer_id"]: c["status"] for c in res["candidates"]}
                row[name + "_missing"] = dict(
                    Counter(status.get(p, "not_found") for p in expected - got),
                    timed_out=res["timed_out"],
                )
                reason = {c["peer_id"]: PEER_ID.sub("<peer>", c["reason"])[:90] for c in res["candidates"]}
                row[name + "_why"] = dict(
                    Counter(reason[p] for p in expected - got if p in reason).most_common(3)
                )
        cpu1, at1 = cpu_seconds(pids), time.monotonic()
        row["cpu_pct"] = round(100 * (cpu1 - cpu0) / max(at1 - at0, 1e-9), 1)  # since the last check
        row["load_1m"] = round(os.getloadavg()[0], 1)
        cpu0, at0 = cpu1, at1
        checks.append(row)
        print(f"curve: {row}", file=sys.stderr)
        k = max(k + 1, int((at1 - t0) / every) + 1)  # a check that ran long skips the slots it took
    out: dict[str, Any] = {"checks": checks}
    for name in CLASSES:
        at60 = next((r[name] for r in checks if r["t"] >= 60), None)
        later = [r[name] for r in checks if r["t"] >= 60 and r[name] is not None]
        bad = [r["t"] for r in checks if r[name] is not None and r[name] < 100]
        out[name] = {
            "at_60s_pct": at60,
            "min_after_60s_pct": min(later) if later else None,
            "checks_after_60s": len(later),
            "all_100_from_s": (
                next((r["t"] for r in checks if r["t"] > max(bad)), None) if bad else 0.0
            ),
        }
    return out


def idle_cpu(nodes: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """Sum of daemon CPU, per second, with nobody using the testnet."""
    pids = [n["pid"] for n in nodes]
    per_s: list[float] = []
    prev = cpu_seconds(pids)
    for _ in range(int(seconds)):
        time.sleep(1.0)
        now = cpu_seconds(pids)
        per_s.append(now - prev)
        prev = now
    return {
        "idle_cpu_pct": round(100 * sum(per_s) / len(per_s), 2),
        "idle_max_1s_pct": round(100 * max(per_s), 1),
        "idle_p95_1s_pct": round(100 * pct(per_s, 95), 1),
        "idle_s": len(per_s),
        "idle_load_1m": round(os.getloadavg()[0], 1),
    }


def settled_finds(nodes: list[dict[str, Any]], queries: int, rng: random.Random) -> dict[str, Any]:
    daemon_ms: list[float] = []
    client_ms: list[float] = []
    lookup_ms: list[float] = []
    hops: list[int] = []
    offers: list[int] = []
    pids = [n["pid"] for n in nodes]
    cpu0, wall0 = cpu_seconds(pids), time.monotonic()
    for i in range(queries):
        node = rng.choice(nodes)
        body = dict(QUERIES[i % len(QUERIES)], limit=10)
        c0 = time.perf_counter()
        res = find(node, body)
        client_ms.append((time.perf_counter() - c0) * 1000)
        daemon_ms.append(res["elapsed_ms"])
        lookup_ms.append(res["lookup_ms"] or 0)
        hops.append(res["hops"])
        offers.append(len(res["offers"]))
    # the daemons' CPU while the finds ran (theirs included): a find that meets a
    # refresh wave waits for busy peers
    finds_cpu = 100 * (cpu_seconds(pids) - cpu0) / (time.monotonic() - wall0)
    return {
        "queries": queries,
        "finds_cpu_pct": round(finds_cpu, 1),
        "find_p25_ms": round(pct(daemon_ms, 25), 1),
        "find_p50_ms": round(pct(daemon_ms, 50), 1),
        "find_p75_ms": round(pct(daemon_ms, 75), 1),
        "find_p99_ms": round(pct(daemon_ms, 99), 1),
        "find_max_ms": round(max(daemon_ms), 1),
        "lookup_p50_ms": round(pct(lookup_ms, 50), 1),
        "client_p50_ms": round(pct(client_ms, 50), 1),
        "client_p99_ms": round(pct(client_ms, 99), 1),
        "hops_median": statistics.median(hops),
        "offers_mean": round(statistics.mean(offers), 1),
    }


def joins(nodes: list[dict[str, Any]], count: int, rng: random.Random) -> dict[str, Any]:
    """Time from a joining node's ready line until another node finds it."""
    times: list[float] = []
    seeds = [n["addr"] for n in nodes[:2]]
    body = {**CLASSES["2xh100"][0], "limit": 1000}
    extra: list[dict[str, Any]] = []
    for j in range(count):
        node = testnet._start(len(nodes) + j, seeds, JOINER, "warning")
        extra.append(node)
        testnet._save(nodes + extra)
        testnet._wait_ready([node], 120)
        t_ready = time.monotonic()  # within 0.1 s of its ready line (testnet polls at 10 Hz)
        deadline = t_ready + 60
        found_after: float | None = None
        while time.monotonic() < deadline:
            res = find(rng.choice(nodes), body)
            if any(o["peer_id"] == node["peer_id"] for o in res["offers"]):
                found_after = time.monotonic() - t_ready
                break
            time.sleep(0.5)
        print(f"join {j}: findable after {found_after} s", file=sys.stderr)
        if found_after is not None:
            times.append(found_after)
        proc = testnet._PROCS[node["pid"]]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    return {
        "joins": count,
        "joins_found": len(times),
        "join_p50_s": round(pct(times, 50), 2) if times else None,
        "join_p99_s": round(pct(times, 99), 2) if times else None,
        "join_max_s": round(max(times), 2) if times else None,
    }


def log_counts() -> dict[str, int]:
    """WARNING-or-worse lines in every daemon log, by level and logger."""
    counts: Counter[str] = Counter()
    for log in testnet.STATE_DIR.glob("*/node.log"):
        for line in log.read_text(errors="replace").splitlines():
            parts = line.split(maxsplit=4)
            if len(parts) >= 4 and parts[2] in ("WARNING", "ERROR", "CRITICAL"):
                counts[f"{parts[2]} {parts[3].rstrip(':')}"] += 1
    return dict(counts.most_common())


def run_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    nodes = testnet.up(n, "mix", log_level="warning", timeout=900, announced=False)
    try:
        row: dict[str, Any] = {"n": n, "start_s": round(time.monotonic() - t0, 1)}
        if args.curve_s > 0:
            row["curve"] = curve(nodes, args.curve_s, args.every)
        load_curve = os.getloadavg()[0]
        if args.idle_s > 0:
            time.sleep(args.idle_wait_s)
            row.update(idle_cpu(nodes, args.idle_s))
        if args.queries > 0:
            row.update(settled_finds(nodes, args.queries, rng))
        if args.joins > 0:
            row.update(joins(nodes, args.joins, rng))
        row["load_1m"] = f"{load_before:.1f}/{load_curve:.1f}/{os.getloadavg()[0]:.1f}"
        row["log_lines"] = log_counts()
        if args.keep_logs:
            keep = Path(args.keep_logs) / f"n{n}"
            keep.mkdir(parents=True, exist_ok=True)
            for log in testnet.STATE_DIR.glob("*/node.log"):
                (keep / f"{log.parent.name}.log").write_bytes(log.read_bytes())
    finally:
        testnet.down()
    return row


def table(rows: list[dict[str, Any]]) -> str:
    flat = []
    for r in rows:
        f = {k: v for k, v in r.items() if k not in ("curve", "log_lines")}
        for name in CLASSES:
            c = r.get("curve", {}).get(name, {})
            f[f"{name}@60s"] = c.get("at_60s_pct")
            f[f"{name}_min"] = c.get("min_after_60s_pct")
            f[f"{name}_100%_from_s"] = c.get("all_100_from_s")
        flat.append(f)
    cols = list(dict.fromkeys(k for f in flat for k in f))
    lines = []
    for col in cols:
        lines.append(f"{col:>22}  " + "  ".join(str(f.get(col, "-")) for f in flat))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="60", help="network sizes, comma-separated (default 60)")
    p.add_argument("--curve-s", type=float, default=600, help="findability curve length (0: skip)")
    p.add_argument("--every", type=float, default=5, help="seconds between curve checks")
    p.add_argument("--idle-s", type=float, default=300,
                   help="idle CPU window (0: skip; default: one advert refresh period)")
    p.add_argument("--idle-wait-s", type=float, default=0,
                   help="wait this long before the idle window (with --curve-s 0: settle after up)")
    p.add_argument("--queries", type=int, default=60, help="settled finds (0: skip)")
    p.add_argument("--joins", type=int, default=10, help="joining nodes timed (0: skip)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep-logs", metavar="DIR", help="copy every daemon log here before `down`")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rows = [run_size(int(n), args) for n in args.sizes.split(",")]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(table(rows))
        for r in rows:
            print(f"N={r['n']} log lines: {r['log_lines']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
