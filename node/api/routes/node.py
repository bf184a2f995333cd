"""``/v1/health``, ``/v1/id``, ``/v1/peers``: the node itself."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from node.api.server import Api, Request
from node.find.adverts import DiscoveryService
from node.p2p import P2PHost
from protocol import sha256

__all__ = ["register"]


def register(
    api: Api, *, p2p: P2PHost, discovery: DiscoveryService, data_dir: Path, stopping: trio.Event
) -> None:
    started_at = time.monotonic()

    async def health(request: Request) -> Any:
        """Liveness: the daemon is up and serving."""
        return {
            "status": "stopping" if stopping.is_set() else "ok",
            "peer_id": p2p.peer_id,
            "peers": len(p2p.connected_peers()),
            "uptime_s": round(time.monotonic() - started_at, 1),
        }

    async def identity(request: Request) -> Any:
        """Peer ID, listen addresses and advertised compute identifiers with their CIDs."""
        return {
            "peer_id": p2p.peer_id,
            "addrs": p2p.listen_addrs,
            "identifiers": discovery.advertised,
            "data_dir": str(data_dir),
            # "pure" means SHA-256 in Python (no libcrypto found): ~1000x slower transfers
            "sha256_backend": sha256.BACKEND,
            # public/private/unknown, public IP, NAT type, announced direct and relay
            # addresses, and how each connected peer is reached (direct, relayed, ...)
            "reachability": dict(p2p.reachability.to_json(), connections=p2p.connection_paths()),
        }

    async def peers(request: Request) -> Any:
        """Connected peers and DHT table sizes."""
        return {
            "connected": p2p.connected_peers(),
            "routing_table": p2p.routing_table_size(),
            "dht_values": p2p.value_store_size(),
        }

    api.route("GET", "/v1/health", health, summary="Liveness and peer count")
    api.route("GET", "/v1/id", identity, summary="Identity and advertised identifiers")
    api.route("GET", "/v1/peers", peers, summary="Connections and DHT sizes")
