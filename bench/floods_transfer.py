"""Floods against the data plane and the executor: an honest peer's time alone and under each.

    .venv/bin/python bench/floods_transfer.py [--runs 3] [--size-mib 32] [--json]

Rows (issue 12; every flood is one the node now bounds):

* ``silent-data-connections``: 200 TCP connections from 127.0.0.2 to the data
  port that never send a preamble, reopened as soon as the server closes one
  (it refuses all but ``data_conns_per_addr`` at once and closes the rest
  after ``data_handshake_s``).  Honest: a fresh blob of ``--size-mib`` fetched
  from the same server.  Before the fix: 0 % progress in 95 s (issue 12).
* ``non-reading-receivers``: an authorised peer takes 48 tickets, asks each
  connection for 16 MiB and never reads (``data_conns_per_peer`` admitted,
  each stalled until ``data_stall_s``).  Honest: the same fetch.  Before:
  59.8 s instead of 4.9 s for an honest job.
* ``log-flood-no-newlines``: a container writing stdout without a newline,
  endlessly, beside an honest job (``echo``, outputs stored in a blob store),
  in podman's private test storage.  Before: 54 s instead of 0.7 s.  Skipped
  without podman.

Each row gives the honest peer's median wall time over ``--runs`` runs alone
and under the flood, and their ratio.  In-process (like the tests), on
127.0.0.1; numbers depend on the machine's load: compare rows of one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support.transfer import transfer_services  # noqa: E402

from node.transfer.service import TransferService  # noqa: E402
from protocol.transfer import (  # noqa: E402
    ChunkRange,
    Direction,
    FrameSealer,
    FrameType,
    Request,
    Ticket,
    TicketRequest,
    derive_keys,
    encode_preamble,
)

CS = 64 << 10
ATTACKER = "127.0.0.2"


async def _timed(fn: Callable[[], Awaitable[Any]], runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = trio.current_time()
        await fn()
        times.append(trio.current_time() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------- transfer floods


def _honest_fetch(a: TransferService, b: TransferService, size: int) -> Callable[[], Awaitable[Any]]:
    async def fetch() -> None:
        meta = await trio.to_thread.run_sync(functools.partial(a.store.import_bytes, os.urandom(size), chunk_size=CS))
        a.grant(b.peer_id, meta.digest, Direction.FETCH)
        with trio.fail_after(600):
            await b.fetch(meta, [a.peer_id])

    return fetch


async def _silent_flood(port: int, n: int, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Keep ``n`` silent connections open, reopening each as soon as the server closes it."""

    async def one(ready: trio.Event) -> None:
        while True:
            s = trio.socket.socket()
            try:
                await s.bind((ATTACKER, 0))
                await s.connect(("127.0.0.1", port))
                ready.set()
                while await s.recv(4096):  # the server never sends: EOF when it closes us
                    pass
            except OSError:
                ready.set()
                await trio.sleep(0.01)
            finally:
                s.close()

    async with trio.open_nursery() as nursery:
        events = [trio.Event() for _ in range(n)]
        for ev in events:
            nursery.start_soon(one, ev)
        for ev in events:
            await ev.wait()
        task_status.started()


async def _non_readers(attacker: TransferService, server: TransferService, n: int) -> list[socket.socket]:
    meta = await trio.to_thread.run_sync(
        functools.partial(server.store.import_bytes, os.urandom(256 * CS), chunk_size=CS))
    server.grant(attacker.peer_id, meta.digest, Direction.FETCH)
    stream = await attacker.open_stream(server.peer_id)
    tickets: list[Ticket] = [await attacker.ask(stream, TicketRequest(digest=meta.digest), Ticket) for _ in range(n)]
    await stream.close()
    socks = []
    for t in tickets:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.bind((ATTACKER, 0))
        await trio.to_thread.run_sync(s.connect, ("127.0.0.1", server.dataplane.port))
        c2s, _ = derive_keys(t.secret, t.ticket_id)
        header, ct = FrameSealer(c2s).seal(FrameType.REQUEST, 0,
                                          Request(ranges=(ChunkRange(start=0, end=256),)).encode())
        s.sendall(encode_preamble(t.ticket_id) + header + ct)
        socks.append(s)
    return socks


async def bench_transfer_floods(tmp: Path, size: int, runs: int) -> list[dict[str, Any]]:
    rows = []
    async with transfer_services(tmp, 3) as (a, b, c):
        honest = _honest_fetch(a, b, size)
        await honest()  # warm up
        alone = await _timed(honest, runs)
        async with trio.open_nursery() as nursery:
            await nursery.start(_silent_flood, a.dataplane.port, 200)
            flooded = await _timed(honest, runs)
            refused = a.dataplane.stats.get("refused_busy", 0)
            nursery.cancel_scope.cancel()
        rows.append(_row("silent-data-connections", f"fetch {size >> 20} MiB", alone, flooded,
                         f"200 silent from {ATTACKER}, {refused} refused at accept"))
        alone = await _timed(honest, runs)
        socks = await _non_readers(c, a, 48)
        flooded = await _timed(honest, runs)
        limits = getattr(a.dataplane, "limits", None)  # (absent before issue 12: every connection admitted)
        admitted = limits.conns_per_peer if limits is not None else 48
        rows.append(_row("non-reading-receivers", f"fetch {size >> 20} MiB", alone, flooded,
                         f"48 ticketed x 16 MiB unread, {admitted} admitted"))
        for s in socks:
            s.close()
    return rows


# --------------------------------------------------------------------------- log flood


async def bench_log_flood(tmp: Path, runs: int) -> dict[str, Any] | None:
    if shutil.which("podman") is None or os.geteuid() != 0:
        return None
    from support.podman import job_for, shared_env

    from node.execute.executor import Executor
    from node.execute.selftest import self_test
    from node.transfer.blobstore import BlobStore

    env = await trio.to_thread.run_sync(shared_env)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from protocol.envelope import public_key_proto_of
    from protocol.identity import peer_id_from_proto_key

    key = Ed25519PrivateKey.generate()
    me = peer_id_from_proto_key(public_key_proto_of(key))
    ex = Executor(env.settings, tmp / "runs", key, me)
    (tmp / "st").mkdir(parents=True)
    ex.capability = await self_test(env.settings, env.image.image_id, tmp / "st")
    store = BlobStore(tmp / "store")
    counter = iter(range(1, 1 << 30))

    async def honest() -> None:
        job = job_for(env.image, ("/bin/sh", "-c", "echo fine > /out/ok"), outputs=("/out",), disk_mib=1)
        r = await ex.execute(job, agreement_id=next(counter).to_bytes(16, "big"), job_digest=bytes(32),
                             submitter=me, blob_path=env.image.blob_path, store_output=store.import_file)
        assert r.result.message.exit_code == 0, r.result.message.detail

    await honest()
    alone = await _timed(honest, runs)
    flood = job_for(env.image, ("/bin/sh", "-c", "while :; do head -c 1000000 /dev/zero | tr '\\0' x; done"),
                    run_s=600)
    send, receive = trio.open_memory_channel[Any](1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(
            ex.execute, flood, agreement_id=bytes(16), job_digest=bytes(32), submitter=me,
            blob_path=env.image.blob_path, store_output=store.import_file, on_running=send.send_nowait))
        run = await receive.receive()
        async for _ in run.logs.follow():  # until the flood has filled the log (then it is cut)
            if run.logs.truncated:
                break
        flooded = await _timed(honest, runs)
        ex.cancel(bytes(16).hex())
    store.close()
    return _row("log-flood-no-newlines", "job echo > /out", alone, flooded, "endless stdout without newline")


def _row(case: str, honest: str, alone: float, flooded: float, flood: str) -> dict[str, Any]:
    return {"case": case, "honest": honest, "alone_s": round(alone, 3), "under_flood_s": round(flooded, 3),
            "ratio": round(flooded / alone, 2) if alone else None, "flood": flood,
            "load1": round(os.getloadavg()[0], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="honest runs per measurement (median)")
    ap.add_argument("--size-mib", type=int, default=32, help="honest blob size")
    ap.add_argument("--skip-log-flood", action="store_true", help="only the data-plane rows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    async def run() -> list[dict[str, Any]]:
        with tempfile.TemporaryDirectory(prefix="cpn-floods-") as name:
            tmp = Path(name)
            rows = await bench_transfer_floods(tmp / "t", args.size_mib << 20, args.runs)
            log_row = None if args.skip_log_flood else await bench_log_flood(tmp / "x", args.runs)
            return rows + ([log_row] if log_row else [])

    rows = trio.run(run)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    cols = ["case", "honest", "alone_s", "under_flood_s", "ratio", "load1", "flood"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r[c]).ljust(w) for c, w in zip(cols, widths, strict=True)))


if __name__ == "__main__":
    main()
