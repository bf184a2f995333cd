"""A run's live log and events: bounded in memory and on disk, every kept line shown."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from node.jobs.live import MAX_EVENTS, Live, LogSpool, Pace


async def drain(live: Live, only: str | None = None) -> list[dict[str, object]]:
    return [ev async for ev in live.stream("r", False, only)]


async def test_lines_bounded_in_memory_all_in_the_file(tmp_path: Path) -> None:
    live = Live(log=LogSpool(tmp_path / "r.log", memory_lines=3, max_bytes=1 << 20))
    live.add({"event": "phase", "phase": "running"})
    live.add_lines("r", 0, [f"line {i}" for i in range(5)])
    live.add_lines("r", 0, ["with\nnewline", "last"])  # coalesced into the same marker
    live.add({"event": "result"})
    assert live.lines == ["line 0", "line 1", "line 2"]
    assert [e["event"] for e in live.events] == ["phase", "log", "result"]
    lines = [e["line"] for e in await drain(live, "log")]
    assert lines == [f"line {i}" for i in range(5)] + ["with newline", "last"]
    assert [e["event"] for e in await drain(live)] == ["phase"] + ["log"] * 7 + ["result"]


async def test_the_file_is_bounded_and_says_so(tmp_path: Path) -> None:
    spool = LogSpool(tmp_path / "r.log", memory_lines=10, max_bytes=1 << 20)
    live = Live(log=spool)
    for _ in range(50):
        live.add_lines("r", 0, ["y" * 1000] * 100)  # 5 MB offered
    assert spool.bytes <= (1 << 20) + 200 and (tmp_path / "r.log").stat().st_size == spool.bytes
    assert spool.dropped > 0
    lines = [e["line"] for e in await drain(live, "log")]
    assert len(lines) == spool.count and "later lines are not kept" in lines[-1]


async def test_progress_events_coalesce_and_events_are_capped() -> None:
    live = Live()
    for i in range(MAX_EVENTS + 10):
        live.add({"event": "progress", "done": i})
    assert len(live.events) == 1 and live.events[0]["done"] == MAX_EVENTS + 9
    for i in range(MAX_EVENTS + 10):
        live.add({"event": "phase", "n": i})
    assert len(live.events) == MAX_EVENTS


async def test_follow_sees_lines_added_later(tmp_path: Path) -> None:
    live = Live(log=LogSpool(tmp_path / "r.log", memory_lines=1, max_bytes=1 << 20))
    live.add_lines("r", 0, ["a"])
    got: list[str] = []

    async def follow() -> None:
        async for ev in live.stream("r", True, "log"):
            got.append(str(ev["line"]))

    async with trio.open_nursery() as n:
        n.start_soon(follow)
        await trio.testing.wait_all_tasks_blocked()
        live.add_lines("r", 0, ["b", "c"])
        await trio.testing.wait_all_tasks_blocked()
        live.done.set()
        live.touch()
    assert got == ["a", "b", "c"]


async def test_pace_reads_at_most_rate_bytes_a_second(autojump_clock: trio.testing.MockClock) -> None:
    pace = Pace(1000)
    t0 = trio.current_time()
    for _ in range(10):
        await pace.take(500)  # 5000 bytes: one second of burst, then 4 s of pacing
    assert trio.current_time() - t0 == 4.0
