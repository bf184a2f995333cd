"""A submitted job's live companions: its event log and its log lines, bounded.

A provider decides how many log lines it sends, so a malicious one could
fill the submitter's memory with an endless log.  :class:`LogSpool` keeps
only the first ``memory_lines`` lines in memory and appends every line to a
file under the data dir (``logs/<run id>.log``), up to ``max_bytes``; past
that, one marker line says the rest was dropped (the verified log still
arrives with the Result and is written to the run's output dir).  Readers
(``cpn job logs``, ``submit --follow``) read the file from their own offset,
so the whole spooled log is shown however long it is.  :class:`Pace` bounds the
rate at which a watch stream is read at all.

In the event log, log lines appear as one *marker* per run of consecutive
lines (``{"event": "log", "from": i, "to": j}``, extended while lines keep
coming), so log lines cost no memory per line there either; :meth:`Live.events`
expands markers into one ``log`` event per line for the API.  Progress events
replace the previous one when nothing happened in between, so neither can a
stream of progress updates grow the event log.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import trio

__all__ = ["LogSpool", "Live", "Pace", "MAX_EVENTS", "saved_log"]

MAX_EVENTS = 50_000  #: events kept per run (log markers and coalesced progress included)
READ_BATCH = 1000  #: lines a reader takes from the file per worker-thread call


class LogSpool:
    """The first ``memory_lines`` lines in memory, every line (up to ``max_bytes``) in ``path``."""

    def __init__(self, path: Path | None, *, memory_lines: int = 2000, max_bytes: int = 64 << 20) -> None:
        self.path = path
        self.memory_lines = memory_lines
        self.max_bytes = max_bytes
        self.lines: list[str] = []  #: the first ``memory_lines`` lines
        self.count = 0  #: lines in the file (the marker line included)
        self.bytes = 0
        self.dropped = 0  #: lines not kept: the file reached ``max_bytes``
        self._file: BinaryIO | None = None

    def _open(self) -> BinaryIO | None:
        if self._file is None and self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._file = self.path.open("wb")  # a new life starts the log again (the watch re-sends it)
        return self._file

    def append(self, new: Sequence[str]) -> None:
        """Keep ``new`` lines (newlines inside a line become spaces)."""
        if self.dropped:
            self.dropped += len(new)
            return
        clean = [line.replace("\n", " ").replace("\r", " ") for line in new]
        room = self.memory_lines - len(self.lines)
        if room > 0:
            self.lines.extend(clean[:room])
        out = bytearray()
        for i, line in enumerate(clean):
            data = line.encode(errors="replace") + b"\n"
            if self.bytes + len(out) + len(data) > self.max_bytes:
                self.dropped = len(clean) - i
                out += (f"[cpn: live log over {self.max_bytes >> 20} MiB: later lines are not kept here; "
                        "the verified log comes with the result]\n").encode()
                self.count += 1
                break
            out += data
            self.count += 1
        f = self._open()
        if f is not None and out:
            f.write(out)
            f.flush()
        self.bytes += len(out)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Pace:
    """Read at most ``rate`` bytes a second from one peer (a token bucket, one second
    of burst).  Waiting here leaves the bytes in the stream's flow-control window,
    so a provider that floods the watch stream is slowed down at its end and costs
    this node a bounded share of its CPU."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.allowance = float(rate)
        self.at = trio.current_time()

    async def take(self, n: int) -> None:
        now = trio.current_time()
        self.allowance = min(float(self.rate), self.allowance + (now - self.at) * self.rate) - n
        self.at = now
        if self.allowance < 0:
            await trio.sleep(-self.allowance / self.rate)


class _Reader:
    """One reader's position in a spool file (readers only move forward)."""

    def __init__(self, spool: LogSpool) -> None:
        self.spool = spool
        self.line = 0
        self.offset = 0

    def _read(self, n: int) -> list[bytes]:
        assert self.spool.path is not None
        with self.spool.path.open("rb") as f:
            f.seek(self.offset)
            out = []
            for _ in range(n):
                raw = f.readline()
                if not raw.endswith(b"\n"):
                    break
                out.append(raw)
            return out

    async def until(self, stop: int) -> AsyncIterator[str]:
        """Lines from the reader's position up to line ``stop`` (exclusive)."""
        if self.spool.path is None:  # no file: what memory holds
            while self.line < min(stop, len(self.spool.lines)):
                self.line += 1
                yield self.spool.lines[self.line - 1]
            return
        while self.line < stop:
            got = await trio.to_thread.run_sync(self._read, min(READ_BATCH, stop - self.line))
            if not got:
                return
            for raw in got:
                self.line += 1
                self.offset += len(raw)
                yield raw[:-1].decode(errors="replace")


@dataclass(eq=False)
class Live:
    """In-memory companions of a run: its event log (for --follow) and its log spool."""

    log: LogSpool = field(default_factory=lambda: LogSpool(None))
    events: list[dict[str, Any]] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope | None = None

    @property
    def lines(self) -> list[str]:
        """The first log lines (the spool keeps them all)."""
        return self.log.lines

    def touch(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def add(self, event: dict[str, Any]) -> None:
        last = self.events[-1] if self.events else None
        if event["event"] == "progress" and last is not None and last["event"] == "progress":
            self.events[-1] = event  # nothing happened in between: the newer count replaces it
        elif len(self.events) < MAX_EVENTS:
            self.events.append(event)
        self.touch()

    def add_lines(self, run_id: str, at: int, new: Sequence[str]) -> None:
        if not new:
            return
        start = self.log.count
        self.log.append(new)
        last = self.events[-1] if self.events else None
        if last is not None and last["event"] == "log":
            last["to"] = self.log.count
            self.touch()
        else:
            self.add({"event": "log", "run": run_id, "at": at, "from": start, "to": self.log.count})

    async def stream(self, run_id: str, follow: bool, only: str | None) -> AsyncIterator[dict[str, Any]]:
        """The run's events from the start, log markers expanded; with ``follow``, until done."""
        reader = _Reader(self.log)
        i = 0
        while True:
            changed = self.changed
            while i < len(self.events):
                ev = self.events[i]
                if ev["event"] == "log":
                    while only in (None, "log") and reader.line < ev["to"]:  # it may grow meanwhile
                        before = reader.line
                        async for line in reader.until(ev["to"]):
                            yield {"event": "log", "run": run_id, "line": line}
                        if reader.line == before:
                            break  # the file holds fewer lines than counted: show what there is
                    if i == len(self.events) - 1 and not self.done.is_set():
                        break  # the last marker may still grow
                elif only is None or ev["event"] == only:
                    yield ev
                i += 1
            if not follow or self.done.is_set():
                return
            await changed.wait()


async def saved_log(run_id: str, output_dir: str, live: Live) -> AsyncIterator[dict[str, Any]]:
    """A finished run's log after a restart: the verified log file, else the spool."""
    path = Path(output_dir) / "log.txt" if output_dir else None
    if path is None or not path.is_file():
        path = live.log.path
    if path is None or not path.is_file():
        return
    async with await trio.open_file(path, "rb") as f:
        async for raw in f:
            yield {"event": "log", "run": run_id, "line": raw.rstrip(b"\n").decode(errors="replace")}
