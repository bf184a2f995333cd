"""`cpn` as a user runs it: the CLI in a subprocess, and `cpn node run` daemons
in the background (yielding their "ready" line), for end-to-end tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CPN = str(Path(sys.executable).parent / "cpn")
LOOP = "/ip4/127.0.0.1/tcp/0"


def cpn(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CPN, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@contextmanager
def daemon(
    data_dir: Path, *extra: str, listen: str | None = LOOP, prefix: tuple[str, ...] = (),
    global_first: bool = False,
) -> Iterator[dict[str, Any]]:
    """`cpn node run` in the background until the block ends (SIGTERM); yields its "ready" line.
    ``global_first``: write ``--data-dir`` before the command (``cpn --data-dir D node run``)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    where = ["--data-dir", str(data_dir)]
    cmd = [*prefix, CPN, *(where if global_first else []), "node", "run", *([] if global_first else where),
           *(["--listen", listen] if listen else []), *extra]
    with open(data_dir.parent / f"{data_dir.name}.log", "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the "ready" line (or exit)
        assert line, (data_dir.parent / f"{data_dir.name}.log").read_text()[-3000:]
        ready = json.loads(line)
        assert ready["event"] == "ready"
        yield ready
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()


@dataclass
class Testnet:
    """Daemons started by :func:`run_testnet`: node ``i`` has ``dirs[i]`` and ``ready[i]``."""

    __test__ = False  # not a test class
    dirs: list[Path]
    ready: list[dict[str, Any]]

    def cpn(self, i: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``cpn ARGS --data-dir <node i>``."""
        return cpn(*args, "--data-dir", str(self.dirs[i]), timeout=timeout)

    def addr(self, i: int) -> str:
        return str(self.ready[i]["addrs"][0])


@contextmanager
def run_testnet(base: Path, *nodes: tuple[str, ...], global_first: bool = False) -> Iterator[Testnet]:
    """One ``cpn node run`` per entry of ``nodes`` (its extra flags), on 127.0.0.1;
    every node after the first bootstraps from the first.  Stopped (SIGTERM) at the end.
    ``global_first``: node 0 is started as ``cpn --data-dir D node run``."""
    net = Testnet([], [])
    with ExitStack() as stack:
        for i, extra in enumerate(nodes):
            boot = ("--bootstrap", net.addr(0)) if i else ()
            d = base / f"node{i}"
            net.ready.append(stack.enter_context(daemon(d, *boot, *extra, global_first=global_first and not i)))
            net.dirs.append(d)
        yield net
