"""A transfer peer in its own process, for tests that kill a sender or measure RSS.

    python tests/support/transfer_peer.py serve SEED_HEX DATA_DIR BLOB CLIENT_PEER_ID
    python tests/support/transfer_peer.py fetch SEED_HEX DATA_DIR SERVERS_JSON

``serve`` imports BLOB, authorises CLIENT_PEER_ID, prints one JSON line (peer
ID, addresses, blob reference) and serves until its stdin closes.  ``fetch``
fetches the blob from the servers and prints its RSS before the fetch and
its peak RSS after it (KiB), after a warm-up fetch of a small blob.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# run as a script: the repository first (the real ``node`` package), then tests/ for support.*
sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from node.p2p import open_host  # noqa: E402
from node.transfer.blobstore import BlobMeta  # noqa: E402
from protocol.transfer import Direction  # noqa: E402
from support.transfer import transfer_service  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Reset VmHWM (the peak RSS) so it covers only what follows; startup
    peaks (imports, libp2p) would otherwise dominate ru_maxrss."""
    Path("/proc/self/clear_refs").write_text("5")


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(256 << 10)


async def serve(seed: str, data_dir: str, blob: str, client: str) -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))
    async with open_host(key, ["/ip4/127.0.0.1/tcp/0"]) as host, \
            transfer_service(host, key, Path(data_dir)) as svc:
        meta = await trio.to_thread.run_sync(functools.partial(svc.store.import_file, Path(blob), chunk_size=64 << 10))
        head = await trio.to_thread.run_sync(_head, blob)  # a small blob for warming up the receiver
        warm = await trio.to_thread.run_sync(functools.partial(svc.store.import_bytes, head, chunk_size=64 << 10))
        for m in (meta, warm):
            svc.grant(client, m.digest, Direction.FETCH)
        print(json.dumps({"peer_id": host.peer_id, "addrs": host.listen_addrs, "digest": meta.digest,
                          "size": meta.size, "chunk_size": meta.chunk_size, "chunk_root": meta.chunk_root,
                          "warm": [warm.digest, warm.size, warm.chunk_size, warm.chunk_root]}),
              flush=True)
        await trio.to_thread.run_sync(sys.stdin.read)


async def fetch(seed: str, data_dir: str, servers_json: str) -> None:
    servers = json.loads(servers_json)
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(seed))
    async with open_host(key, ["/ip4/127.0.0.1/tcp/0"]) as host, \
            transfer_service(host, key, Path(data_dir)) as svc:
        for s in servers:
            svc.addrs[s["peer_id"]] = s["addrs"]
        s0 = servers[0]
        meta = BlobMeta(s0["digest"], s0["size"], s0["chunk_size"], s0["chunk_root"])
        # warm up (first connection, thread pool, crypto and SQLite setup), so the
        # measured growth is what the big blob itself costs
        await svc.fetch(BlobMeta(*s0["warm"]), [s0["peer_id"]])
        before = _status_kib("VmRSS")
        _reset_peak()
        await svc.fetch(meta, [s["peer_id"] for s in servers])
        peak = _status_kib("VmHWM")
        print(json.dumps({"rss_before_kib": before, "peak_rss_kib": peak, "stats": svc.stats,
                          "stored": svc.store.has(meta.digest)}), flush=True)


if __name__ == "__main__":
    role, args = sys.argv[1], sys.argv[2:]
    trio.run({"serve": serve, "fetch": fetch}[role], *args)
