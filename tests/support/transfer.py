"""A transfer service on its own (no daemon): its blob store, run until the block ends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.p2p import P2PHost
from node.transfer.blobstore import BlobStore
from node.transfer.service import TransferService


@asynccontextmanager
async def transfer_service(
    host: P2PHost, key: Ed25519PrivateKey, data_dir: Path, *, quota_bytes: int | None = None, **kw: Any
) -> AsyncIterator[TransferService]:
    store = BlobStore(data_dir, quota_bytes=quota_bytes)
    try:
        async with trio.open_nursery() as nursery:
            svc = TransferService(p2p=host, key=key, store=store, **kw)
            await nursery.start(svc.run)
            yield svc
            nursery.cancel_scope.cancel()
    finally:
        store.close()


@asynccontextmanager
async def transfer_services(tmp: Path, n: int, **kw: Any) -> AsyncIterator[list[TransferService]]:
    """``n`` transfer services, each on its own libp2p host on 127.0.0.1, all
    knowing each other's addresses; ``kw`` goes to every TransferService
    (``config=TransferSection(...)``)."""
    from node.p2p import open_host

    out: list[TransferService] = []
    async with trio.open_nursery() as nursery:
        hosts = []
        for i in range(n):
            key = Ed25519PrivateKey.generate()
            host = await _enter(nursery, open_host(key, ["/ip4/127.0.0.1/tcp/0"]))
            hosts.append(host)
            out.append(await _enter(nursery, transfer_service(host, key, tmp / f"n{i}", **kw)))
        for svc in out:
            for h in hosts:
                svc.addrs[h.peer_id] = h.listen_addrs
        yield out
        nursery.cancel_scope.cancel()


async def _enter(nursery: trio.Nursery, cm: Any) -> Any:
    """Run an async context manager in a nursery task; return what it yields."""

    async def hold(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with cm as value:
            task_status.started(value)
            await trio.sleep_forever()

    return await nursery.start(hold)
