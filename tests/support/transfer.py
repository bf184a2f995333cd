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
