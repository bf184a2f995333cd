"""One container run, driven from trio: start, log, limits, timeout, cancel, outcome.

Facts this module is built around (docs/FIELD-NOTES "Containers"):

* killing the ``podman run`` client leaves the container running, so timeout,
  cancel and crash recovery always end with ``podman rm -f -t 0 NAME``;
* ``State.OOMKilled`` stays false on this kernel: exit status 137 with a
  memory limit set (and not killed by us) is reported as OOM.

Metering (CPU time, peak memory) comes from the run's cgroups
(:class:`node.execute.cgroups.CgroupMeter`).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from node.execute.cgroups import CgroupMeter
from node.execute.podman import PODMAN_ERROR, ContainerSpec, Podman, run_args
from protocol.jobflow import MAX_LINE

__all__ = ["ContainerRun", "LogStream", "RunOutcome", "MAX_LINE_BYTES"]

log = logging.getLogger("cpn.runtime")

#: longest log line kept whole, in bytes (the job flow cuts lines at MAX_LINE characters anyway)
MAX_LINE_BYTES = MAX_LINE


class LogStream:
    """The combined stdout/stderr of a run: written to a file, followable live.

    ``follow()`` yields every line from the start and then new lines as they
    arrive, ending when the run's output ends, so a late subscriber (``cpn job
    logs --follow``) sees the same log as an early one.  Memory holds at most
    ``max_bytes`` of lines; beyond that lines go only to the file and the
    file itself stops at ``max_bytes`` with a truncation marker.

    A line longer than ``max_line`` bytes is cut there (a newline is inserted,
    in the file too): output without newlines must not grow one partial line
    that every read copies again (issue 12: 60 MB of stdout without a newline
    stalled the event loop for a minute).  :meth:`feed` does work in
    proportion to the bytes it is given, and none once the log is truncated.
    """

    def __init__(self, path: Path, max_bytes: int = 16 << 20, max_line: int = MAX_LINE_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_line = max_line
        self._file = path.open("wb")
        self._lines: list[bytes] = []
        self._partial = bytearray()
        self._size = 0
        self.truncated = False
        self.closed = False
        self._changed = trio.Event()

    def feed(self, data: bytes) -> None:
        if self.closed or self.truncated or not data:
            return
        start, end, partial = 0, len(data), self._partial
        while start < end and not self.truncated:  # each turn consumes >= 1 byte of data
            room = self.max_line - len(partial)
            nl = data.find(b"\n", start, start + room)
            if nl >= 0:
                partial += data[start : nl + 1]
                start = nl + 1
                self._add(bytes(partial))
                partial.clear()
                continue
            piece = data[start : start + room]
            partial += piece
            start += len(piece)
            if len(partial) >= self.max_line:  # a whole max_line without a newline: cut here
                self._add(bytes(partial) + b"\n")
                partial.clear()

    def _add(self, line: bytes) -> None:
        if self.truncated:
            return  # a log with holes would mislead: everything after the cut is dropped
        if self._size + len(line) > self.max_bytes:
            if not self.truncated:
                self.truncated = True
                marker = b"[cpn: log truncated]\n"
                self._file.write(marker)
                self._lines.append(marker)
            return
        self._size += len(line)
        self._file.write(line)
        self._lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    def close(self) -> None:
        if self.closed:
            return
        if self._partial and not self.truncated:
            self._add(bytes(self._partial))
        self._partial.clear()
        self.closed = True
        self._file.close()
        self._changed.set()

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.closed else self._size

    def lines(self) -> list[bytes]:
        return list(self._lines)

    async def follow(self) -> AsyncIterator[bytes]:
        i = 0
        while True:
            while i < len(self._lines):
                yield self._lines[i]
                i += 1
            if self.closed:
                return
            await self._changed.wait()


# --------------------------------------------------------------------------- runs


@dataclass
class RunOutcome:
    """How a container run ended, with its metering."""

    status: str  #: "exited" | "oom" | "timeout" | "cancelled" | "failed"
    exit_code: int | None
    started_at: int  #: unix seconds
    finished_at: int
    wall_ms: int
    cpu_ms: int
    peak_memory_bytes: int
    detail: str = ""


class ContainerRun:
    """One container run: ``await run.run(timeout_s=...)``; ``run.cancel()``
    from elsewhere ends it with status "cancelled"; ``run.logs.follow()``
    streams its output; ``run.running`` is set when the container's first
    output arrives or it exits (what the dispatch benchmark measures)."""

    def __init__(
        self,
        podman: Podman,
        spec: ContainerSpec,
        log_path: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.podman = podman
        self.spec = spec
        self.logs = LogStream(log_path)
        # podman's working directory: conmon drops an "oom" file into it when
        # the kernel OOM-kills the container (a second OOM signal, and litter
        # that must not land in the daemon's cwd).
        self._cwd = Path(tempfile.mkdtemp(prefix=".podman-", dir=log_path.parent))
        self.running = trio.Event()
        self._clock = clock
        self._scope: trio.CancelScope | None = None
        self._cancelled = False
        self.outcome: RunOutcome | None = None

    def cancel(self) -> None:
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, *, timeout_s: float) -> RunOutcome:
        name = self.spec.name()
        argv = self.podman.cmd(*run_args(self.podman, self.spec))
        meter = CgroupMeter(self.podman.settings.cgroup_root, self.podman.settings.node_label, name)
        started_wall = self._clock()
        started = trio.current_time()
        code: int | None = None
        timed_out = False
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self._cancelled:
                    scope.cancel()
                scope.deadline = started + timeout_s
                code = await self._attach(argv, meter)
            timed_out = scope.cancelled_caught and not self._cancelled
        finally:
            # Whatever ended the wait (exit, timeout, cancel, an outer
            # cancellation, a crash of our side), the container must be gone.
            if code is None:
                await self.podman.remove(name)
            self.logs.close()
            self.running.set()
        wall_ms = int((trio.current_time() - started) * 1000)
        peak, cpu = meter.peak_memory_bytes(), meter.cpu_ms()
        conmon_saw_oom = (self._cwd / "oom").exists()
        shutil.rmtree(self._cwd, ignore_errors=True)
        if not meter.remove():
            log.debug("cgroup of %s still busy; reaped at next start", name)
        status, detail = self._classify(code, timed_out, peak, conmon_saw_oom)
        self.outcome = RunOutcome(
            status=status,
            exit_code=code if status in ("exited", "oom") else None,
            started_at=int(started_wall),
            finished_at=int(max(started_wall, self._clock())),
            wall_ms=wall_ms,
            cpu_ms=cpu,
            peak_memory_bytes=peak,
            detail=detail,
        )
        return self.outcome

    def _classify(self, code: int | None, timed_out: bool, peak: int, oom_file: bool) -> tuple[str, str]:
        if self._cancelled:
            return "cancelled", "cancelled"
        if timed_out:
            return "timeout", "run timeout reached"
        if code == PODMAN_ERROR:
            tail = b"".join(self.logs.lines()[-5:]).decode(errors="replace").strip()
            return "failed", f"podman could not run the container: {tail[-400:]}"
        limit = self.spec.memory_mib << 20
        if code == 137 and limit:
            # runc/kernel here never set OOMKilled; 137 = SIGKILL, and nobody
            # but the OOM killer sends SIGKILL to a job we did not stop --
            # unless the job killed itself: then the metered peak stays far
            # below the limit (the peak is never under-estimated, see CgroupMeter).
            if peak and peak < limit // 2 and not oom_file:
                return "exited", "killed by SIGKILL well below the memory limit (not an OOM kill)"
            return "oom", f"killed by the OOM killer (memory limit {self.spec.memory_mib} MiB)"
        assert code is not None
        return "exited", ""

    async def _attach(self, argv: list[str], meter: CgroupMeter) -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(meter.watch)
            proc: trio.Process = await nursery.start(
                _run_process_started, argv, self._stop, self._cwd,
            )
            assert proc.stdout is not None
            async with proc.stdout:
                while True:
                    data = await proc.stdout.receive_some(65536)
                    if not data:
                        break
                    self.running.set()
                    self.logs.feed(data)
            code = await proc.wait()
            nursery.cancel_scope.cancel()
        return code


    async def _stop(self, proc: trio.Process) -> None:
        """How a cancelled ``podman run`` is stopped: the client ignores SIGTERM
        and killing it leaves the container running, so remove the container
        first (the client then exits by itself) and kill the client after."""
        await self.podman.remove(self.spec.name())
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()


async def _run_process_started(
    argv: list[str], stop: Callable[[trio.Process], Any], cwd: Path,
    *, task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    await trio.run_process(
        argv, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, deliver_cancel=stop, cwd=cwd, task_status=task_status,
    )
