"""An idle daemon sleeps: timers that woke it with nothing to do (node/p2p/tuning.py, paths.py, nat.py).

With 60 daemons on two cores, every wake-up of a daemon costs about what a small
request costs; an idle 60-node testnet was woken some 200 times a second by
timers alone: py-libp2p's per-connection stale-stream sweeper (each connection
every 30 s), the hole-punch loop (every 2 s, with nothing relayed to punch).
Real hosts on 127.0.0.1 under a :class:`trio.testing.MockClock` that only
moves when a test jumps it; a trio instrument counts which tasks ran.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux import yamux as _yamux

from node.p2p import P2PHost, open_host, paths, tuning

LOOP = "/ip4/127.0.0.1/tcp/0"


class Woken(trio.abc.Instrument):
    """Counts task steps, and the tasks that ran, by the functions each task
    was suspended in."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()
        self.tasks: defaultdict[str, set[trio.lowlevel.Task]] = defaultdict(set)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        coro: Any = task.coro
        while coro is not None and hasattr(coro, "cr_code"):
            self.steps[coro.cr_code.co_name] += 1
            self.tasks[coro.cr_code.co_name].add(task)
            coro = coro.cr_await


@asynccontextmanager
async def mesh(n: int) -> AsyncIterator[list[P2PHost]]:
    """``n`` hosts, the first connected to all others."""
    async with AsyncExitStack() as stack:
        hosts = [await stack.enter_async_context(open_host(Ed25519PrivateKey.generate(), [LOOP]))
                 for _ in range(n)]
        for other in hosts[1:]:
            await hosts[0].connect(other.peer_id, other.listen_addrs)
        yield hosts


def muxers_of(task: trio.lowlevel.Task) -> list[Any]:
    """The ``self`` of each :func:`tuning._shared_sweeper` in ``task``'s await chain."""
    out, coro = [], task.coro
    while coro is not None and hasattr(coro, "cr_code"):
        if coro.cr_code.co_name == "_shared_sweeper" and coro.cr_frame is not None:
            out.append(coro.cr_frame.f_locals["self"])
        coro = coro.cr_await
    return out


def muxers(host: P2PHost) -> list[_yamux.Yamux]:
    return [c.muxed_conn for cs in host._host.get_network().connections.values() for c in cs]


async def test_one_timer_sweeps_every_connection(
    mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    swept: list[_yamux.Yamux] = []
    sweep = _yamux.Yamux._sweep_stale_streams

    def recording(self: _yamux.Yamux, now: float | None = None) -> int:
        swept.append(self)
        return sweep(self, now)

    monkeypatch.setattr(_yamux.Yamux, "_sweep_stale_streams", recording)
    async with mesh(4) as hosts:
        mock_clock.jump(_yamux._STALE_STREAM_SWEEP_INTERVAL - 1)  # what else runs by then, runs
        await trio.testing.wait_all_tasks_blocked()
        assert swept == []
        before = [m for h in hosts for m in muxers(h)]
        woken = Woken()
        trio.lowlevel.add_instrument(woken)
        try:
            mock_clock.jump(2)
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(woken)
        live = [m for h in hosts for m in muxers(h)]
        assert len(live) >= 4  # both ends of the connections (all in this process; a dial-back may replace one)
        assert len(set(map(id, swept))) == len(swept)  # none twice
        assert set(map(id, live)) <= set(map(id, swept))  # every live one
        assert len(woken.tasks["_sweep_loop"]) == 1  # by one task
        assert woken.steps["_stale_stream_sweeper"] == 0
        # no connection's own task woke (one that opened or closed meanwhile would)
        ran = {id(m) for t in woken.tasks["_shared_sweeper"] for m in muxers_of(t)}
        assert not ran & set(map(id, live)) & set(map(id, before))


async def test_a_closed_connection_leaves_the_sweeps() -> None:
    async with mesh(2) as (a, b):
        (mux,) = muxers(a)
        assert mux in tuning._SWEPT.get()
        await a._host.disconnect(b._host.get_id())
        await trio.testing.wait_all_tasks_blocked()
        assert mux.event_shutting_down.is_set()
        assert mux not in tuning._SWEPT.get()


async def test_a_busy_connection_is_swept_next_time(mock_clock: trio.testing.MockClock) -> None:
    async with mesh(2) as (a, _b):
        (mux,) = muxers(a)
        done: list[int] = []

        async def sweep() -> None:
            done.append(await tuning.sweep_one(mux))

        async with mux.streams_lock, trio.open_nursery() as nursery:  # (a task holds it)
            nursery.start_soon(sweep)
            await trio.testing.wait_all_tasks_blocked()
            assert done == []  # the sweep waits for the lock ...
            mock_clock.jump(tuning.SWEEP_WAIT_S)
            await trio.testing.wait_all_tasks_blocked()
            assert done == [0]  # ... not for ever
            assert mux.streams_lock.locked()  # (and never took it from its holder)


async def test_the_hole_punch_loop_sleeps_with_nothing_relayed(
    mock_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    kicked: list[ID] = []
    monkeypatch.setattr(paths.HolePunch, "kick", lambda self, peer: kicked.append(peer))
    async with mesh(2) as (a, b):
        punch = a.nat.punch
        woken = Woken()
        trio.lowlevel.add_instrument(woken)
        try:
            for _ in range(5):
                mock_clock.jump(paths.AUTO_DRIVE_S)
                await trio.testing.wait_all_tasks_blocked()
            assert woken.steps["_auto_drive_loop"] == 0
            punch.add_relayed(object(), b._host.get_id())  # (a relayed connection opened)
            await trio.testing.wait_all_tasks_blocked()
            mock_clock.jump(paths.AUTO_DRIVE_S)
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(woken)
        assert woken.steps["_auto_drive_loop"] >= 2
        assert kicked == [b._host.get_id()]


async def test_autonat_servers_come_without_decoding_peer_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    async with mesh(3) as hosts:

        def decode(text: str) -> ID:
            raise AssertionError("a peer ID decoded from text")

        monkeypatch.setattr(ID, "from_base58", decode)
        assert sorted(hosts[0].nat._servers()) == sorted(str(h.peer_id) for h in hosts[1:])


def test_yamux_tuning_variables_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PY_YAMUX_CPN_TEST", "first")
    assert _yamux._py_yamux_env("CPN_TEST", "x") == "first"
    monkeypatch.setenv("PY_YAMUX_CPN_TEST", "second")
    assert os.environ["PY_YAMUX_CPN_TEST"] == "second"
    assert _yamux._py_yamux_env("CPN_TEST", "x") == "first"


async def test_a_signed_peer_record_is_verified_once_per_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kad request carries the sender's signed peer record: the server
    (py-libp2p's kad handler) checked it at every request, and an advert
    refresh wave is mostly such requests.  Now each host checks a record once."""
    checked: Counter[tuple[str, bytes]] = Counter()
    real = tuning.maybe_consume_signed_record

    def counting(msg: Any, host: Any, peer_id: ID | None = None) -> bool:
        record = msg.senderRecord if msg.HasField("senderRecord") else b""
        checked[(str(host.get_id()), bytes(record))] += 1
        return real(msg, host, peer_id)

    monkeypatch.setattr(tuning, "maybe_consume_signed_record", counting)
    async with mesh(3) as (a, b, c):
        for i in range(5):
            await a.find_providers(b"\x01\x55\x12\x20" + bytes([i]) * 32)
        for server in (b, c):  # each host checks a's record itself, once (the memo is per host)
            at = {rec: n for (host, rec), n in checked.items() if host == str(server.peer_id) and rec}
            assert at and all(n == 1 for n in at.values()), at
