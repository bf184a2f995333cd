"""Transfer benchmark: raw TCP vs a libp2p stream vs a CPN blob transfer, separate processes.

    .venv/bin/python bench/transfer.py [--sizes 256,1024] [--sources 1,2,3] [--json]

Every row runs sender(s) and receiver as separate OS processes on 127.0.0.1:

* ``raw-tcp``: trio TCP, sender writes 1 MiB buffers from memory, receiver
  ``recv_into`` one reused 1 MiB buffer and discards (the ceiling of the
  machine's loopback through trio; no disk).  Every "vs raw" divides by this;
* ``raw-tcp-64k``: the same with the receiver on trio's documented stream API,
  ``SocketStream.receive_some()`` (64 KiB reads, a new bytes object each): what
  "raw trio TCP" gives an application that does not tune it;
* ``raw-tcp-disk``: the same sender; the receiver writes every MiB to a file
  (O_DIRECT from page-aligned buffers where the file system allows, as the
  blob store does; one writer thread overlapping the receive) and fsyncs at
  the end: the ceiling of "loopback into this disk", no crypto, no hashing;
* ``floor``: the work no verified, encrypted transfer can skip, and nothing
  else: the sender AES-GCM-seals 1 MiB frames from a mapping of the blob and
  sends them; the receiver receives, decrypts and SHA-256-hashes each in two
  threads (no protocol, no headers, no disk, no event loop).  On two cores
  this bounds what any design in Python could reach;
* ``libp2p``: one py-libp2p Noise+yamux stream (node.p2p), 1 MiB frames;
* ``cpn-transfer``: ``TransferService.fetch`` of a blob imported in the
  sender's store: ticket over the signed libp2p control stream, AES-256-GCM
  data plane, every chunk verified against the chained chunk list (one
  SHA-256 pass, which is also the whole-blob check) and written, fsync and
  rename -- i.e. disk to disk, verified and encrypted;
* ``cpn-no-disk``: the same fetch with the receiver's chunk write and final
  fsync/rename skipped (network + AEAD + SHA-256 verification, nothing
  written), to separate the protocol's cost from the disk's.

Reported: MiB/s, CPU milliseconds per MiB of receiver and sender(s)
together (user + system, all threads; the sender's blob import excluded), the
receiver's peak RSS (ru_maxrss) and the 1-minute load average.  CPU per MiB
barely moves with the machine's load and bounds the rate: with C cores to
itself a row can reach at most C * 1000 / (CPU ms/MiB) MiB/s.  Every CPN row (and ``raw-tcp-disk``) is compared with a ``raw-tcp``
run made immediately before it ("raw before"), because on a shared machine a
baseline taken a minute earlier may have met a different load.  Not a test:
numbers depend on the machine and its load; compare rows of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

MiB = 1 << 20
FLOOR_KEY = bytes(32)  #: the floor rows need no secret: they measure cost, not security


def _emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def _cpu_s() -> float:
    """CPU seconds of this process, all threads, user + system (less load-sensitive than MiB/s)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- roles (child processes)


async def role_raw_recv(size: int, mode: str = "tuned") -> None:
    import trio

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    _emit({"port": listeners[0].socket.getsockname()[1]})
    stream = await listeners[0].accept()
    buf = bytearray(MiB)
    view = memoryview(buf)
    got = 0
    t0 = None
    while got < size:
        if mode == "default":  # trio's SocketStream API as documented: receive_some() (64 KiB)
            n = len(await stream.receive_some())
        else:  # into one reused 1 MiB buffer: the most trio can move
            n = await stream.socket.recv_into(view)
        if n == 0:
            break
        if t0 is None:
            t0, c0 = time.perf_counter(), _cpu_s()
        got += n
    dt = time.perf_counter() - (t0 or time.perf_counter())
    _emit({"bytes": got, "seconds": dt, "rss_mib": _rss_mib(), "cpu_s": _cpu_s() - c0})


async def role_raw_disk_recv(size: int, path: str) -> None:
    import concurrent.futures
    import mmap
    import socket

    import trio

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    _emit({"port": listeners[0].socket.getsockname()[1]})
    stream = await listeners[0].accept()
    sock = socket.socket(fileno=stream.socket.detach())
    sock.setblocking(True)

    def run() -> tuple[int, float]:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            dfd = os.open(path, os.O_WRONLY | getattr(os, "O_DIRECT", 0))
        except OSError:
            dfd = fd
        bufs = [memoryview(mmap.mmap(-1, MiB)) for _ in range(2)]
        got, k, t0, c0 = 0, 0, 0.0, 0.0
        fut: concurrent.futures.Future[int] | None = None
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            while got < size:
                view, n = bufs[k % 2], 0
                while n < MiB and got + n < size:
                    r = sock.recv_into(view[n:], MiB - n, socket.MSG_WAITALL)
                    if r == 0:
                        break
                    n += r
                if n == 0:
                    break
                if not t0:
                    t0, c0 = time.perf_counter(), _cpu_s()
                if fut is not None:
                    fut.result()
                fut = pool.submit(os.pwrite, dfd if n == MiB else fd, view[:n], got)
                got, k = got + n, k + 1
            if fut is not None:
                fut.result()
        os.fsync(fd)
        for f in {fd, dfd}:
            os.close(f)
        return got, time.perf_counter() - t0, _cpu_s() - c0

    got, dt, cpu = await trio.to_thread.run_sync(run)
    sock.close()
    os.unlink(path)
    _emit({"bytes": got, "seconds": dt, "rss_mib": _rss_mib(), "cpu_s": cpu})


async def role_raw_send(port: int, size: int) -> None:
    import trio

    stream = await trio.open_tcp_stream("127.0.0.1", port)
    data = os.urandom(MiB)
    c0 = _cpu_s()
    for _ in range(size // MiB):
        await stream.send_all(data)
    await stream.aclose()
    _emit({"cpu_s": _cpu_s() - c0})


def role_floor_recv(size: int) -> None:
    """The floor: receive sealed 1 MiB frames, decrypt + SHA-256 each in two
    worker threads; no protocol, no framing, no disk, no event loop."""
    import concurrent.futures
    import hashlib
    import mmap
    import socket

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    ls = socket.create_server(("127.0.0.1", 0))
    _emit({"port": ls.getsockname()[1]})
    conn, _ = ls.accept()
    aead = AESGCM(FLOOR_KEY)
    slots = 12
    cipher = [memoryview(bytearray(MiB + 16)) for _ in range(slots)]
    plain = [memoryview(mmap.mmap(-1, MiB)) for _ in range(slots)]
    jobs: list = [None] * slots

    def work(i: int, slot: int) -> None:
        aead.decrypt_into(i.to_bytes(12, "big"), cipher[slot], b"", plain[slot])
        hashlib.sha256(plain[slot]).digest()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        t0, c0 = time.perf_counter(), _cpu_s()
        for i in range(size // MiB):
            slot = i % slots
            if jobs[slot] is not None:
                jobs[slot].result()
            view, got = cipher[slot], 0
            while got < len(view):
                n = conn.recv_into(view[got:], len(view) - got, socket.MSG_WAITALL)
                if n == 0:
                    raise ConnectionError("sender went away")
                got += n
            jobs[slot] = pool.submit(work, i, slot)
        for job in jobs:
            if job is not None:
                job.result()
    _emit({"bytes": size, "seconds": time.perf_counter() - t0, "rss_mib": _rss_mib(), "cpu_s": _cpu_s() - c0})


def role_floor_send(port: int, path: str) -> None:
    """The floor's sender: AES-GCM seal from a read-only mapping of the blob, send."""
    import collections
    import concurrent.futures
    import mmap
    import socket

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size
    blob = memoryview(mmap.mmap(fd, size, prot=mmap.PROT_READ))
    conn = socket.create_connection(("127.0.0.1", port))
    aead = AESGCM(FLOOR_KEY)
    frames = [memoryview(bytearray(MiB + 16)) for _ in range(8)]

    def seal(i: int) -> memoryview:
        frame = frames[i % 8]
        aead.encrypt_into(i.to_bytes(12, "big"), blob[i * MiB : (i + 1) * MiB], b"", frame)
        return frame

    c0 = _cpu_s()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending: collections.deque = collections.deque()
        for i in range(size // MiB):
            if len(pending) == 8:
                conn.sendall(pending.popleft().result())
            pending.append(pool.submit(seal, i))
        while pending:
            conn.sendall(pending.popleft().result())
    conn.close()
    _emit({"cpu_s": _cpu_s() - c0})


def _key(seed_hex: str):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_hex))


async def role_p2p_recv(seed: str, size: int) -> None:
    import trio

    from node.p2p import open_host

    done = trio.Event()
    result: dict = {}

    async def handler(stream) -> None:  # type: ignore[no-untyped-def]
        got = 0
        t0, c0 = time.perf_counter(), _cpu_s()
        while got < size:
            got += len(await stream.receive_frame(2 * MiB))
        result.update(bytes=got, seconds=time.perf_counter() - t0, cpu_s=_cpu_s() - c0)
        await stream.send_frame(b"ok")
        done.set()

    async with open_host(_key(seed), ["/ip4/127.0.0.1/tcp/0"]) as host:
        host.set_stream_handler("/cpn/bench/0", handler)
        _emit({"peer_id": host.peer_id, "addrs": host.listen_addrs})
        await done.wait()
        await trio.sleep(0.2)
        _emit({**result, "rss_mib": _rss_mib()})


async def role_p2p_send(seed: str, peer: str, addrs: str, size: int) -> None:
    from node.p2p import open_host

    async with open_host(_key(seed), ["/ip4/127.0.0.1/tcp/0"]) as host:
        await host.connect(peer, addrs.split(","))
        stream = await host.open_stream(peer, "/cpn/bench/0")
        data = os.urandom(MiB)
        c0 = _cpu_s()
        for _ in range(size // MiB):
            await stream.send_frame(data)
        await stream.receive_frame(16)
        _emit({"cpu_s": _cpu_s() - c0})


async def role_cpn_serve(seed: str, data_dir: str, blob: str, client: str) -> None:
    import trio
    from support.transfer import transfer_service

    from node.p2p import open_host
    from protocol.transfer import Direction

    key = _key(seed)
    async with open_host(key, ["/ip4/127.0.0.1/tcp/0"]) as host:
        async with transfer_service(host, key, Path(data_dir)) as svc:
            meta = await trio.to_thread.run_sync(svc.store.import_file, Path(blob))
            svc.grant(client, meta.digest, Direction.FETCH)
            c0 = _cpu_s()  # serving only, not the import
            _emit({"peer_id": host.peer_id, "addrs": host.listen_addrs, "digest": meta.digest,
                   "size": meta.size, "chunk_size": meta.chunk_size, "chunk_root": meta.chunk_root})
            await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes stdin
            _emit({"cpu_s": _cpu_s() - c0})


async def role_cpn_fetch(seed: str, data_dir: str, servers_json: str) -> None:

    from support.transfer import transfer_service

    from node.p2p import open_host
    from node.transfer.blobstore import BlobMeta

    servers = json.loads(servers_json)
    key = _key(seed)
    if os.environ.get("CPN_BENCH_NO_DISK"):  # the "verify-only" row: same path minus disk writes
        from node.transfer import blobstore

        def land(self, index, data):  # type: ignore[no-untyped-def]
            pass  # verified and recorded as written, nothing written
        blobstore.PartialBlob.write_verified = land  # type: ignore[method-assign]
        blobstore.PartialBlob.finish = lambda self: self.meta  # type: ignore[method-assign]
    async with open_host(key, ["/ip4/127.0.0.1/tcp/0"]) as host:
        async with transfer_service(host, key, Path(data_dir)) as svc:
            for s in servers:
                await host.connect(s["peer_id"], s["addrs"])
            s0 = servers[0]
            meta = BlobMeta(s0["digest"], s0["size"], s0["chunk_size"], s0["chunk_root"])
            t0, c0 = time.perf_counter(), _cpu_s()
            await svc.fetch(meta, [s["peer_id"] for s in servers])
            dt = time.perf_counter() - t0
            _emit({"bytes": meta.size, "seconds": dt, "rss_mib": _rss_mib(), "cpu_s": _cpu_s() - c0,
                   "per_source": svc.progress[meta.digest].sources})


# --------------------------------------------------------------------------- orchestration


def _spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, __file__, "--role", *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, **(env or {})})


def _line(p: subprocess.Popen[str]) -> dict:
    line = p.stdout.readline() if p.stdout else ""
    if not line:
        raise RuntimeError(f"child {p.args} exited without output (rc {p.wait()})")
    return json.loads(line)


def _finish(res: dict, send_cpu_s: float) -> dict:
    """MiB/s, peak RSS, and CPU milliseconds per MiB of receiver + sender(s) together."""
    mib = res["bytes"] / MiB
    return {"mib_s": round(mib / res["seconds"], 1), "rss_mib": round(res["rss_mib"], 1),
            "seconds": round(res["seconds"], 3),
            "cpu_ms_per_mib": round((res["cpu_s"] + send_cpu_s) * 1000 / mib, 2)}


def _tcp_pair(recv: list[str], send: list[str]) -> dict:
    """Start a receiver role (which prints its port), then a sender role given
    that port; return the row."""
    r = _spawn(recv[0], *recv[1:])
    port = _line(r)["port"]
    s = _spawn(send[0], str(port), *send[1:])
    res = _line(r)
    sent = _line(s)
    s.wait(), r.wait()
    return _finish(res, sent["cpu_s"])


def bench_raw(size: int, mode: str = "tuned") -> dict:
    return _tcp_pair(["raw-recv", str(size), mode], ["raw-send", str(size)])


def bench_floor(size: int, blob: Path) -> dict:
    return _tcp_pair(["floor-recv", str(size)], ["floor-send", str(blob)])


def bench_raw_disk(size: int, path: Path) -> dict:
    return _tcp_pair(["raw-disk-recv", str(size), str(path)], ["raw-send", str(size)])


def bench_p2p(size: int) -> dict:
    seed_r, seed_s = os.urandom(32).hex(), os.urandom(32).hex()
    r = _spawn("p2p-recv", seed_r, str(size))
    info = _line(r)
    s = _spawn("p2p-send", seed_s, info["peer_id"], ",".join(info["addrs"]), str(size))
    res = _line(r)
    sent = _line(s)
    s.wait(), r.wait()
    return _finish(res, sent["cpu_s"])


def bench_cpn(tmp: Path, blob: Path, senders: int, *, no_disk: bool = False) -> dict:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from node.keys import peer_id_of

    seed_r = os.urandom(32).hex()
    client = peer_id_of(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed_r)))
    procs = []
    infos = []
    try:
        for i in range(senders):
            d = tmp / f"sender{i}"
            p = _spawn("cpn-serve", os.urandom(32).hex(), str(d), str(blob), client)
            procs.append(p)
        infos = [_line(p) for p in procs]
        r = _spawn("cpn-fetch", seed_r, str(tmp / "receiver"), json.dumps(infos),
                   env={"CPN_BENCH_NO_DISK": "1"} if no_disk else None)
        res = _line(r)
        r.wait()
    finally:
        send_cpu = 0.0
        for p in procs:
            if p.stdin:
                p.stdin.close()
            if infos:
                send_cpu += _line(p)["cpu_s"]
            p.wait()
        for d in tmp.iterdir():
            if d.is_dir():
                shutil.rmtree(d)
    out = _finish(res, send_cpu)
    out["per_source_mib"] = [round(v / MiB) for v in res["per_source"].values()]
    return out


def _make_blob(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            f.write(os.urandom(MiB))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,1024", help="blob sizes in MiB (default 256,1024)")
    ap.add_argument("--sources", default="1,2,3", help="sender counts for multi-source (at the first size)")
    ap.add_argument("--skip-libp2p-above", type=int, default=256,
                    help="MiB; the libp2p row is skipped for larger sizes (it takes ~10 s per GiB)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) * MiB for s in args.sizes.split(",")]
    rows: list[dict] = []

    def add(case: str, size: int, senders: int, res: dict, raw: dict | None = None,
            p2p: dict | None = None) -> None:
        """One row; ``raw`` is the raw-tcp run made just before it (the machine is
        shared: a baseline taken a minute earlier may have met another load)."""
        row = {"case": case, "size_mib": size // MiB, "senders": senders, **res,
               "load1": round(os.getloadavg()[0], 1)}
        if raw is not None:
            row["raw_mib_s"] = raw["mib_s"]
            row["vs_raw"] = round(res["mib_s"] / raw["mib_s"], 2)
        if p2p is not None:
            row["vs_libp2p"] = round(res["mib_s"] / p2p["mib_s"], 1)
        rows.append(row)

    with tempfile.TemporaryDirectory(prefix="cpn-bench-") as tmpname:
        tmp = Path(tmpname)
        for size in sizes:
            blob = tmp / "blob"
            _make_blob(blob, size)
            raw = bench_raw(size)
            add("raw-tcp", size, 1, raw)
            add("raw-tcp-64k", size, 1, bench_raw(size, "default"))
            add("raw-tcp-disk", size, 1, bench_raw_disk(size, tmp / "raw-disk"), raw)
            raw = bench_raw(size)
            add("floor", size, 1, bench_floor(size, blob), raw)
            p2p = None
            if size // MiB <= args.skip_libp2p_above:
                p2p = bench_p2p(size)
                add("libp2p-stream", size, 1, p2p)
            counts = [int(c) for c in args.sources.split(",")] if size == sizes[0] else [1]
            for n in counts:
                raw = bench_raw(size)
                add("cpn-transfer", size, n, bench_cpn(tmp, blob, n), raw, p2p)
            raw = bench_raw(size)
            add("cpn-no-disk", size, 1, bench_cpn(tmp, blob, 1, no_disk=True), raw, p2p)
            blob.unlink()
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "rows": rows}, indent=2))
        return
    print(f"{'case':<15}{'size MiB':>9}{'senders':>8}{'MiB/s':>9}{'raw before':>11}{'vs raw':>8}"
          f"{'vs libp2p':>10}{'CPU ms/MiB':>11}{'peak RSS MiB':>14}{'load1':>7}")
    for r in rows:
        print(f"{r['case']:<15}{r['size_mib']:>9}{r['senders']:>8}{r['mib_s']:>9}{r.get('raw_mib_s', ''):>11}"
              f"{r.get('vs_raw', ''):>8}{r.get('vs_libp2p', ''):>10}{r['cpu_ms_per_mib']:>11}"
              f"{r['rss_mib']:>14}{r['load1']:>7}")

if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        import trio

        role, rest = sys.argv[2], sys.argv[3:]
        fn = {"raw-recv": role_raw_recv, "raw-disk-recv": role_raw_disk_recv, "raw-send": role_raw_send, "p2p-recv": role_p2p_recv,
              "p2p-send": role_p2p_send, "cpn-serve": role_cpn_serve, "cpn-fetch": role_cpn_fetch,
              "floor-recv": role_floor_recv, "floor-send": role_floor_send}[role]
        conv = [int(a) if a.isdigit() else a for a in rest]
        if role.startswith("floor"):
            fn(*conv)  # plain threads, no event loop
        else:
            trio.run(fn, *conv)
    else:
        main()
