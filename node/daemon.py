"""The daemon: one trio root nursery, one :class:`Node` context, a list of services.

Start-up order (each step finishes before the next begins, so a service can
rely on everything above it):

1. data dir (mode 0700) and the identity key (:mod:`node.keys`);
2. the libp2p host and DHT (:func:`node.p2p.open_host`), with the DHT record
   validators of every service that stores records;
3. the local API socket and (opt-in) the metrics port;
4. every entry of :data:`SERVICES`, in order, each with ``await
   nursery.start(service.run, node)`` so it signals readiness.

Shutdown (SIGINT/SIGTERM or :meth:`Node.stop`) cancels the root nursery.
Services release what they hold in ``finally`` blocks, shielded and bounded
by a timeout (:data:`CLEANUP_TIMEOUT`): the advertise service publishes its
tombstone while the host is still up, because the host is closed only after
the nursery has exited.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.api.server import Api, Request
from node.config import Config
from node.keys import load_or_create_key, peer_id_of
from node.metrics import Metrics
from node.p2p import P2PHost, RecordValidator, open_host

__all__ = ["Node", "Service", "SERVICES", "run_node", "main", "CLEANUP_TIMEOUT"]

log = logging.getLogger("cpn.daemon")

#: Seconds a service may spend releasing resources after cancellation.
CLEANUP_TIMEOUT = 5.0

#: The daemon's services, started in this order.  An entry is a
#: ``"module:Class"`` string (imported lazily, so adding a service is one line),
#: a class (instantiated without arguments) or a ready object.  A service has
#: ``async def run(self, node, *, task_status=trio.TASK_STATUS_IGNORED)`` and
#: calls ``task_status.started()`` once it serves; it may also have
#: ``dht_validators(node_clock) -> dict[namespace, RecordValidator]``.
SERVICES: Sequence[Any] = (
    "node.transfer.service:TransferService",
    "node.execute.service:ExecutionService",
    "node.find.discovery:AdvertiseService",
    "node.negotiate.service:NegotiationService",
    "node.jobs.runner:JobRunner",
)


class Service(Protocol):
    async def run(self, node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None: ...


def unix_now() -> int:
    """Wall-clock unix seconds (records carry absolute times)."""
    return int(time.time())


@dataclass(eq=False)
class Node:
    """Everything a service needs, created once per daemon run."""

    config: Config
    data_dir: Path
    key: Ed25519PrivateKey  #: the identity key (libp2p peer key and envelope signer)
    peer_id: str
    p2p: P2PHost
    api: Api
    metrics: Metrics
    nursery: trio.Nursery  #: the root nursery; long-lived tasks go here
    clock: Callable[[], int] = unix_now  #: unix seconds; tests inject their own
    #: compute identifiers advertised, ``[{"id": ..., "cid": ...}]`` (set by discovery)
    advertised: list[dict[str, str]] = field(default_factory=list)
    #: the probed ResourceSet (set by discovery's probe; None until probed)
    resources: Any = None
    #: the running service objects, in start order (e.g. to reach a service's state)
    services: list[Any] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    stopping: trio.Event = field(default_factory=trio.Event)
    #: set once every service has finished and the libp2p host is closed
    stopped: trio.Event = field(default_factory=trio.Event)

    def stop(self) -> None:
        """Begin a clean shutdown: services run their cleanup, then the host closes."""
        if not self.stopping.is_set():
            log.info("shutting down")
            self.stopping.set()
        self.nursery.cancel_scope.cancel()


def load_services(entries: Sequence[Any]) -> list[Any]:
    out = []
    for entry in entries:
        if isinstance(entry, str):
            module, _, name = entry.partition(":")
            entry = getattr(importlib.import_module(module), name)
        out.append(entry() if isinstance(entry, type) else entry)
    return out


def _register_core_routes(node: Node) -> None:
    async def health(request: Request) -> Any:
        """Liveness: the daemon is up and serving."""
        return {
            "status": "stopping" if node.stopping.is_set() else "ok",
            "peer_id": node.peer_id,
            "peers": len(node.p2p.connected_peers()),
            "uptime_s": round(time.monotonic() - node.started_at, 1),
        }

    async def identity(request: Request) -> Any:
        """Peer ID, listen addresses and advertised compute identifiers with their CIDs."""
        return {
            "peer_id": node.peer_id,
            "addrs": node.p2p.listen_addrs,
            "identifiers": node.advertised,
            "data_dir": str(node.data_dir),
        }

    async def peers(request: Request) -> Any:
        """Connected peers and DHT table sizes."""
        return {
            "connected": node.p2p.connected_peers(),
            "routing_table": node.p2p.routing_table_size(),
            "dht_values": node.p2p.value_store_size(),
        }

    node.api.route("GET", "/v1/health", health, summary="Liveness and peer count")
    node.api.route("GET", "/v1/id", identity, summary="Identity and advertised identifiers")
    node.api.route("GET", "/v1/peers", peers, summary="Connections and DHT sizes")


def _register_core_metrics(node: Node) -> None:
    m = node.metrics
    m.gauge(
        "cpn_peers_connected", "Connected libp2p peers", lambda: len(node.p2p.connected_peers())
    )
    m.gauge(
        "cpn_dht_routing_table_peers", "Peers in the kad routing table", node.p2p.routing_table_size
    )
    m.gauge("cpn_dht_records", "Value records held in the DHT store", node.p2p.value_store_size)
    m.gauge("cpn_dht_lookups_total", "Provider lookups made", lambda: node.p2p.stats.lookups)
    m.gauge(
        "cpn_dht_lookup_errors_total",
        "Failed queries in lookups",
        lambda: node.p2p.stats.lookup_errors,
    )
    m.gauge(
        "cpn_dht_rejected_records_total",
        "DHT records refused by our validators",
        lambda: sum(node.p2p.stats.rejected_records.values()),
    )


async def run_node(
    config: Config,
    *,
    services: Sequence[Any] | None = None,
    clock: Callable[[], int] = unix_now,
    handle_signals: bool = False,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one node until cancelled (or a signal, with ``handle_signals``).

    ``task_status.started(node)`` hands the :class:`Node` to the caller once
    every service is ready; tests run several nodes in one process this way.
    """
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = load_or_create_key(data_dir)
    svcs = load_services(SERVICES if services is None else services)
    validators: dict[str, RecordValidator] = {}
    for svc in svcs:
        if hasattr(svc, "dht_validators"):
            validators.update(svc.dht_validators(clock))
    node: Node | None = None
    async with open_host(
        key, config.node.listen, validators=validators, bootstrap=config.node.bootstrap
    ) as p2p:
        async with trio.open_nursery() as nursery:
            node = Node(
                config=config,
                data_dir=data_dir,
                key=key,
                peer_id=peer_id_of(key),
                p2p=p2p,
                api=Api(),
                metrics=Metrics(),
                nursery=nursery,
                clock=clock,
                services=svcs,
            )
            assert node.peer_id == p2p.peer_id, "libp2p and CPN disagree on the peer ID"
            if handle_signals:
                nursery.start_soon(_watch_signals, node)
            _register_core_routes(node)
            _register_core_metrics(node)
            await nursery.start(node.api.serve, config.api_socket)
            if config.metrics.port:
                await nursery.start(node.metrics.serve, config.metrics.port)
            for svc in svcs:
                await nursery.start(svc.run, node)
            log.info("node %s ready on %s", node.peer_id, ", ".join(p2p.listen_addrs))
            task_status.started(node)
    log.info("node %s stopped", p2p.peer_id)
    if node is not None:
        node.stopped.set()


async def _watch_signals(node: Node) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s", signal.Signals(signum).name)
            node.stop()
            return


def main(config: Config) -> int:
    """Foreground entry point of ``cpn node run``: prints one JSON "ready" line on stdout."""

    async def _main() -> None:
        async with trio.open_nursery() as nursery:
            node: Node = await nursery.start(
                lambda task_status: run_node(config, handle_signals=True, task_status=task_status)
            )
            print(
                json.dumps(
                    {
                        "event": "ready",
                        "peer_id": node.peer_id,
                        "addrs": node.p2p.listen_addrs,
                        "api": str(config.api_socket),
                    }
                ),
                flush=True,
            )

    trio.run(_main)
    sys.stdout.flush()
    return 0
