#!/usr/bin/env python3
"""CLI start-up: what one `cpn` command costs before it talks to the daemon.

    .venv/bin/python bench/cli_startup.py [-n 30] [--tree DIR ...] [--json]

Each row runs one command ``-n`` times in a fresh interpreter, as a script
does, and reports the wall time (min and median) and the CPU time the child
used (user + system, median: steadier than wall time on a busy machine).  No
daemon is running: ``cpn jobs`` stops at "the daemon is not running" (exit 7)
after importing everything it would use, and ``cpn submit`` after reading and
hashing the job file, which is the part of submitting that runs before the
daemon is asked.  The job is the tiny busybox job (a 1.1 MB image of three
blobs), and a job whose image carries ``--big-mib`` MiB more (as bench/e2e.py):
*cold* has no blob-hash cache, *warm* has it (the same job submitted again).

``--tree DIR`` (repeatable) measures another checkout's ``node/`` and
``protocol/`` (e.g. ``git archive <commit> node protocol | tar -x -C DIR``)
beside this one, through the same interpreter: before/after comparisons.

Bytecode is cached as on any normal install (the two warm-up runs write it,
under a temporary ``PYTHONPYCACHEPREFIX``, so nothing lands in the trees);
``--no-bytecode-cache`` measures with ``PYTHONDONTWRITEBYTECODE=1`` (as some
sandboxes and containers set it) and the trees' sources never compiled ahead:
every command then compiles every module of ours it imports.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MAIN = "import sys; from node.cli import main; sys.exit(main(sys.argv[1:]))"
JOB = """name = "hello"
image = "img"
command = ["/bin/sh", "-c"]
args = ["echo hello > /out/greeting.txt"]
outputs = ["/out"]
max_price = 100000
[resources]
cpus = 0.5
memory_mib = 64
disk_mib = 16
"""


def _once(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall * 1000, cpu * 1000


def measure(name: str, cmd: list[str], env: dict[str, str], cwd: Path, n: int,
            prepare: Any = None) -> dict[str, Any]:
    walls, cpus = [], []
    for i in range(n + 2):
        if prepare is not None:
            prepare()
        wall, cpu = _once(cmd, env, cwd)
        if i >= 2:  # two warm-up runs: the page cache holds the interpreter and the sources
            walls.append(wall)
            cpus.append(cpu)
    return {"command": name, "runs": n, "wall_min_ms": round(min(walls), 1),
            "wall_median_ms": round(statistics.median(walls), 1), "cpu_median_ms": round(statistics.median(cpus), 1)}


def _env(work: Path, bytecode: bool, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")}
    if bytecode:
        env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    else:  # the standard library keeps its installed bytecode; node/ and protocol/ compile each run
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    return {**env, **extra}


def rows_for(tree: Path, label: str, work: Path, n: int, bytecode: bool) -> list[dict[str, Any]]:
    env = _env(work, bytecode, PYTHONPATH=str(tree))
    py = [sys.executable, "-c", MAIN]
    data = work / "data"
    cache = data / "hash-cache.json"
    out = []
    forget = lambda: cache.unlink(missing_ok=True)  # noqa: E731
    cases: list[tuple[str, list[str], Any]] = [
        ("cpn --version", ["--version"], None),
        ("cpn jobs (no daemon)", ["jobs", "--data-dir", str(data)], None),
        ("cpn submit, cold (no hash cache)", ["submit", "job.toml", "--data-dir", str(data)], forget),
        ("cpn submit, warm (hash cache)", ["submit", "job.toml", "--data-dir", str(data)], None),
    ]
    if (work / "big.toml").exists():
        big = ["submit", "big.toml", "--data-dir", str(data)]
        cases += [("cpn submit big image, cold", big, forget), ("cpn submit big image, warm", big, None)]
    for name, args, prepare in cases:
        if name.startswith("cpn --version") and not (tree / "node" / "cli" / "__init__.py").read_text().count(
                "--version"):
            continue  # that checkout has no --version
        row = measure(name, [*py, *args], env, work, n, prepare)
        row["tree"] = label
        out.append(row)
    return out


def _big_image(work: Path, mib: int) -> None:
    """The busybox image plus a layer of ``mib`` MiB of incompressible bytes, as bench/e2e.py."""
    import random

    from node.execute.oci_pack import pack_image
    from node.execute.selftest_image import busybox_rootfs

    (work / "rootfs").mkdir()
    busybox_rootfs(work / "rootfs")
    (work / "bulk").mkdir()
    rng = random.Random(7)
    with (work / "bulk" / "data.bin").open("wb") as f:
        for _ in range(mib):
            f.write(rng.randbytes(1 << 20))
    pack_image([work / "rootfs", work / "bulk"], work / "bigimg", cmd=["/bin/sh"], env=["PATH=/bin"])
    (work / "big.toml").write_text(JOB.replace('image = "img"', 'image = "bigimg"'))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="runs per command (default 30)")
    parser.add_argument("--tree", action="append", default=[], type=Path, help="another checkout to measure")
    parser.add_argument("--big-mib", type=int, default=100,
                        help="also submit a job with an image this big, cold and warm (0: skip; default 100)")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="compile every module on every run")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    bytecode = not args.no_bytecode_cache
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        from node.execute.selftest_image import build_busybox_image

        build_busybox_image(work / "img")
        (work / "job.toml").write_text(JOB)
        if args.big_mib:
            _big_image(work, args.big_mib)
        (work / "data").mkdir()
        rows = [measure("python -c pass", [sys.executable, "-c", "pass"], _env(work, bytecode), work, args.n)]
        rows[0]["tree"] = "-"
        for tree in args.tree:
            rows += rows_for(tree.resolve(), str(tree), work, args.n, bytecode)
        rows += rows_for(ROOT, "this checkout", work, args.n, bytecode)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cache = "bytecode cached" if bytecode else "no bytecode cache"
    print(f"{'tree':<16} {'command':<34} {'wall min':>9} {'wall med':>9} {'cpu med':>8}  (ms, {args.n} runs, {cache})")
    for r in rows:
        print(f"{r['tree']:<16} {r['command']:<34} {r['wall_min_ms']:>9} {r['wall_median_ms']:>9} "
              f"{r['cpu_median_ms']:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
