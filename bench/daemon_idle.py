#!/usr/bin/env python3
"""Idle cost of one daemon: resident memory and CPU while it serves nobody.

    .venv/bin/python bench/daemon_idle.py [--seconds 20] [--interval 1] [--fake-gpus h100:8]
                                          [--bootstrap MULTIADDR] [--json]

Starts ``cpn node run`` in a fresh temp data dir on 127.0.0.1 (by default an
isolated node, so the numbers are the daemon's own floor: timers, advert
refresh; ``--bootstrap`` joins a network to include DHT upkeep), waits for its JSON "ready" line, then samples
``/proc/<pid>/status`` (VmRSS, VmHWM, threads) and ``/proc/<pid>/stat``
(utime + stime) every ``--interval`` seconds for ``--seconds``.  It then stops
the daemon with SIGTERM and reports how long the clean shutdown took.  The
temp dir is removed at the end.  A benchmark, not a test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def cpn_command() -> list[str]:
    venv = ROOT / ".venv" / "bin" / "cpn"
    if venv.exists():
        return [str(venv)]
    found = shutil.which("cpn")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from node.cli import main; sys.exit(main())"]


def read_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB and the thread count, from /proc/<pid>/status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def wait_ready(proc: subprocess.Popen[bytes], stdout: Path, timeout: float) -> dict[str, Any]:
    """The daemon's JSON ready line (it prints exactly one, to ``stdout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in stdout.read_text().splitlines():
            if line.startswith("{") and json.loads(line).get("event") == "ready":
                return dict(json.loads(line))
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited with status {proc.returncode} before it was ready")
        time.sleep(0.05)
    raise RuntimeError(f"daemon not ready after {timeout:g} s")


def measure(
    seconds: float, interval: float, fake_gpus: str | None, bootstrap: list[str]
) -> dict[str, Any]:
    data_dir = Path(tempfile.mkdtemp(prefix="cpn-idle-bench-"))
    cmd = [*cpn_command(), "node", "run", "--data-dir", str(data_dir),
           "--listen", "/ip4/127.0.0.1/tcp/0", "--log-level", "warning"]  # fmt: skip
    if fake_gpus:
        cmd += ["--fake-gpus", fake_gpus]
    for addr in bootstrap:
        cmd += ["--bootstrap", addr]
    log_path, out_path = data_dir / "daemon.log", data_dir / "stdout.log"
    t0 = time.monotonic()
    with log_path.open("wb") as log, out_path.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=log, stdin=subprocess.DEVNULL)
    try:
        try:
            ready = wait_ready(proc, out_path, READY_TIMEOUT_S)
        except RuntimeError as exc:
            raise SystemExit(f"daemon_idle: {exc}\n{log_path.read_text()[-2000:]}") from None
        startup_s = time.monotonic() - t0
        cpu_at_ready = cpu_seconds(proc.pid)
        rss_at_ready = read_status(proc.pid)["VmRSS"]
        samples = []
        start_cpu, start = cpu_at_ready, time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(interval)
            st = read_status(proc.pid)
            samples.append({"t_s": round(time.monotonic() - start, 2), "rss_kib": st["VmRSS"],
                            "cpu_s": cpu_seconds(proc.pid), "threads": st["Threads"]})  # fmt: skip
        window = time.monotonic() - start
        idle_cpu = samples[-1]["cpu_s"] - start_cpu
        hwm = read_status(proc.pid)["VmHWM"]
        fds = len(os.listdir(f"/proc/{proc.pid}/fd"))
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            rc: int | None = proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            rc = None
        stop_s = time.monotonic() - t_stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(data_dir, ignore_errors=True)
    rss = [s["rss_kib"] for s in samples]
    return {
        "peer_id": ready["peer_id"],
        "fake_gpus": fake_gpus or "",
        "bootstrap": bootstrap,
        "startup_to_ready_s": round(startup_s, 2),
        "cpu_to_ready_s": round(cpu_at_ready, 2),
        "rss_at_ready_mib": round(rss_at_ready / 1024, 1),
        "window_s": round(window, 1),
        "rss_median_mib": round(statistics.median(rss) / 1024, 1),
        "rss_max_mib": round(max(rss) / 1024, 1),
        "rss_peak_hwm_mib": round(hwm / 1024, 1),
        "idle_cpu_s": round(idle_cpu, 3),
        "idle_cpu_pct": round(100 * idle_cpu / window, 2),
        "threads": samples[-1]["threads"],
        "open_fds": fds,
        "sigterm_to_exit_s": round(stop_s, 2),
        "exit_status": rc,  # None: needed SIGKILL
        "samples": samples,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="sampling window (default 20)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--fake-gpus", help="fake NVML inventory for the daemon, e.g. h100:8")
    parser.add_argument("--bootstrap", action="append", default=[], metavar="MULTIADDR",
                        help="join a network (e.g. a tools/testnet node) instead of idling alone")
    parser.add_argument("--json", action="store_true", help="print JSON (with every sample)")
    args = parser.parse_args()
    if args.seconds <= 0 or args.interval <= 0:
        parser.error("--seconds and --interval must be positive")
    result = measure(args.seconds, args.interval, args.fake_gpus, args.bootstrap)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = [
        ("start-up to ready line", f"{result['startup_to_ready_s']} s"),
        ("CPU used to get ready", f"{result['cpu_to_ready_s']} s"),
        ("RSS at ready", f"{result['rss_at_ready_mib']} MiB"),
        (f"RSS median over {result['window_s']} s idle", f"{result['rss_median_mib']} MiB"),
        ("RSS max while idle", f"{result['rss_max_mib']} MiB"),
        ("RSS peak (VmHWM, incl. start-up)", f"{result['rss_peak_hwm_mib']} MiB"),
        ("idle CPU (utime+stime)",
         f"{result['idle_cpu_s']} s = {result['idle_cpu_pct']} % of one core "
         f"(resolution {1000 // CLK_TCK} ms)"),
        ("threads / open fds", f"{result['threads']} / {result['open_fds']}"),
        ("SIGTERM to exit", f"{result['sigterm_to_exit_s']} s (status {result['exit_status']})"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"idle daemon {result['peer_id']}" + (f" (fake GPUs {args.fake_gpus})" if args.fake_gpus else ""))
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
