"""``/v1/transfers``: blob transfers of this daemon run and their progress."""

from __future__ import annotations

from typing import Any

from node.api.server import Api, ApiError, Request
from node.transfer.service import TransferService

__all__ = ["register"]


def register(api: Api, transfer: TransferService) -> None:
    async def list_transfers(request: Request) -> Any:
        """Blob transfers of this daemon run: phase, bytes, rate, ETA per blob."""
        return {"transfers": [p.snapshot() for p in transfer.progress.values()], "stats": dict(transfer.stats)}

    async def one_transfer(request: Request) -> Any:
        """One blob transfer's progress."""
        digest = request.params["digest"]
        if digest not in transfer.progress:
            raise ApiError(404, "not_found", f"no transfer of {digest[:80]}")
        return transfer.progress[digest].snapshot()

    api.route("GET", "/v1/transfers", list_transfers, summary="Blob transfers and their progress")
    api.route("GET", "/v1/transfers/{digest}", one_transfer, summary="Progress of one blob transfer")
