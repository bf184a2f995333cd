"""`cpn` as a user runs it: the CLI in a subprocess, and `cpn node run` daemons
in the background (yielding their "ready" line), for end-to-end tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CPN = str(Path(sys.executable).parent / "cpn")
LOOP = "/ip4/127.0.0.1/tcp/0"



def cpn(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CPN, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@contextmanager
def daemon(
    data_dir: Path, *extra: str, listen: str | None = LOOP, prefix: tuple[str, ...] = ()
) -> Iterator[dict[str, Any]]:
    """`cpn node run` in the background until the block ends (SIGTERM); yields its "ready" line."""
    data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [*prefix, CPN, "node", "run", "--data-dir", str(data_dir), *(["--listen", listen] if listen else []), *extra]
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
