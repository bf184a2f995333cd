"""The daemon: where every part of the node is built and wired, in one place.

:func:`run_node` is the composition root.  It builds each shared object once
and hands every service exactly what it needs through its constructor, so
reading this file tells who talks to whom:

====================  =====================================================
object                 uses
====================  =====================================================
``p2p``                the libp2p host and DHT (:mod:`node.p2p`, the only
                       module importing libp2p)
``blobs``              the content-addressed blob store (transfer, execution,
                       jobs read and pin blobs in it)
``agreements``         the negotiation store (SQLite; negotiation, jobs)
``scheduler``          the node's capacity: reserved and committed GPUs, CPU,
                       memory, disk (negotiation reserves, jobs release,
                       discovery advertises what is free)
``transfer``           serves and fetches blobs (jobs on both sides)
``execution``          the podman self-test and the executor
``discovery``          probe + adverts; its ``finder`` finds providers
``negotiation``        serves offers (provider side)
``provider_jobs``      runs agreed jobs (provider side of spec/jobflow.md)
``runner``             drives submitted jobs (submitter side)
``api``                the local HTTP API; routes in :mod:`node.api.routes`
``web``                the dashboard and ``/metrics`` on 127.0.0.1 ports, the
                       same HTTP server with read-only routes of ``api``
====================  =====================================================

Start order, each ``await nursery.start(...)`` returning once the service
serves: the API socket, the dashboard and metrics ports (if set), transfer
(the data plane), execution (the self-test decides the container capability
that discovery advertises and negotiation admits), discovery (probes the
host: the scheduler then knows what it can place), provider jobs (resumes
jobs of a previous life), negotiation (now offers are served; agreements
start provider jobs), the job runner (resumes and accepts submissions).
Every service owns the nursery of the tasks it spawns.

Shutdown (SIGINT/SIGTERM or :meth:`Node.stop`) cancels the root nursery.
Services release what they hold in ``finally`` blocks, shielded and bounded:
discovery publishes its tombstone while the host is still up, because the
host closes only after the nursery has exited; the stores close last.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from trio_typing import TaskStatus

from node.api.dashboard import WebService
from node.api.routes import agreements as agreement_routes
from node.api.routes import dashboard as dashboard_routes
from node.api.routes import execution as execution_routes
from node.api.routes import find as find_routes
from node.api.routes import jobs as job_routes
from node.api.routes import node as node_routes
from node.api.routes import transfers as transfer_routes
from node.api.server import Api
from node.clock import UnixClock, unix_now
from node.config import Config
from node.execute.service import ExecutionService
from node.find.adverts import DiscoveryService
from node.find.finder import FinderLimits
from node.find.records import ADVERT_NAMESPACE, AdvertValidator
from node.jobs.provider import ProviderJobs
from node.jobs.runner import JobRunner
from node.keys import load_or_create_key, peer_id_of
from node.metrics import Metrics
from node.negotiate.agreements import AgreementStore
from node.negotiate.guard import PeerLog
from node.negotiate.limits import PeerLimits
from node.negotiate.policy import Policy
from node.negotiate.scheduler import Scheduler
from node.negotiate.service import NegotiationService
from node.p2p import P2PHost, open_host
from node.transfer.blobstore import BlobStore
from node.transfer.service import TransferService
from protocol import sha256

__all__ = ["Node", "run_node", "main"]

log = logging.getLogger("cpn.daemon")


@dataclass(eq=False)
class Node:
    """The running daemon: every long-lived object, built once by :func:`run_node`."""

    config: Config
    key: Ed25519PrivateKey  #: the identity key (libp2p peer key and envelope signer)
    peer_id: str
    clock: UnixClock
    p2p: P2PHost
    metrics: Metrics
    api: Api
    blobs: BlobStore
    agreements: AgreementStore
    scheduler: Scheduler
    transfer: TransferService
    execution: ExecutionService
    discovery: DiscoveryService
    negotiation: NegotiationService
    provider_jobs: ProviderJobs
    runner: JobRunner
    web: WebService  #: the dashboard and /metrics on 127.0.0.1 (node/api/dashboard)
    stopping: trio.Event = field(default_factory=trio.Event)
    #: set once every service has finished and the libp2p host is closed
    stopped: trio.Event = field(default_factory=trio.Event)
    _scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    def stop(self) -> None:
        """Begin a clean shutdown: services run their cleanup, then the host closes."""
        if not self.stopping.is_set():
            log.info("shutting down")
            self.stopping.set()
        self._scope.cancel()


def _build(config: Config, key: Ed25519PrivateKey, p2p: P2PHost, clock: UnixClock, stack: ExitStack) -> Node:
    """Every object of one node, wired; nothing runs yet."""
    data_dir = config.data_dir
    metrics = Metrics()
    blobs = BlobStore(data_dir, quota_bytes=config.transfer.quota_bytes, now=clock)
    stack.callback(blobs.close)
    agreements = AgreementStore.open(data_dir)
    stack.callback(agreements.close)
    policy = Policy.from_config(config)
    scheduler = Scheduler(None, clock=trio.current_time, reservation_s=policy.reservation_s)
    transfer = TransferService(p2p=p2p, key=key, store=blobs, config=config.transfer, metrics=metrics)
    execution = ExecutionService(config.execution, runs_dir=data_dir / "runs", key=key, peer_id=p2p.peer_id,
                                 clock=clock, fake_gpus=bool(config.discovery.fake_gpus), blobs=blobs)
    discovery = DiscoveryService(config.discovery, p2p=p2p, key=key, data_dir=data_dir, clock=clock,
                                 scheduler=scheduler, capability=lambda: execution.capability, metrics=metrics)
    peer_log = PeerLog(logging.getLogger("cpn.peer"), per_minute=config.node.peer_log_per_minute)
    discovery.finder.limits = FinderLimits.from_config(config.discovery)
    negotiation = NegotiationService(p2p=p2p, key=key, agreements=agreements, scheduler=scheduler, policy=policy,
                                     clock=clock, capability=lambda: execution.capability,
                                     limits=PeerLimits.from_config(config.negotiation), peer_log=peer_log)
    provider_jobs = ProviderJobs(p2p=p2p, key=key, agreements=agreements, scheduler=scheduler, transfer=transfer,
                                 execution=execution, data_dir=data_dir, clock=clock,
                                 max_fetch_failures=config.negotiation.max_fetch_failures, peer_log=peer_log)
    runner = JobRunner(p2p=p2p, key=key, transfer=transfer, agreements=agreements, finder=discovery.finder,
                       data_dir=data_dir, clock=clock, config=config.jobs)
    # The hooks between services, all here:
    negotiation.provider.on_agreement.append(provider_jobs.on_agreement)  # an agreement starts a job
    transfer.add_authorizer(runner.authorize)  # our providers may fetch our jobs' blobs
    transfer.holders_of = runner.holders_of  # owner side of WhoHas: earlier providers of a blob
    # holder side of FetchGrants: a submitter may grant a blob it delivered here (the blob store's
    # supplier record, spec/transfer.md section 1.1), never one it only named
    api = Api()
    web = WebService(api, metrics, dashboard_port=config.dashboard.port, metrics_port=config.metrics.port,
                     private=config.dashboard.private, data_dir=data_dir)
    node = Node(config=config, key=key, peer_id=p2p.peer_id, clock=clock, p2p=p2p, metrics=metrics, api=api,
                blobs=blobs, agreements=agreements, scheduler=scheduler, transfer=transfer, execution=execution,
                discovery=discovery, negotiation=negotiation, provider_jobs=provider_jobs, runner=runner, web=web)
    _register_routes(node)
    _register_metrics(node)
    return node


def _register_routes(node: Node) -> None:
    node_routes.register(node.api, p2p=node.p2p, discovery=node.discovery, data_dir=node.data_dir,
                         stopping=node.stopping, scheduler=node.scheduler, execution=node.execution,
                         provider_jobs=node.provider_jobs, runner=node.runner,
                         data_host=node.config.transfer.data_host, web_ports=node.web.ports)
    find_routes.register(node.api, node.discovery)
    job_routes.register(node.api, node.runner)
    agreement_routes.register(node.api, node.agreements, node.provider_jobs)
    transfer_routes.register(node.api, node.transfer)
    execution_routes.register(node.api, node.execution)
    dashboard_routes.register(node.api, p2p=node.p2p, discovery=node.discovery, scheduler=node.scheduler,
                              provider_jobs=node.provider_jobs, agreements=node.agreements, data_dir=node.data_dir,
                              clock=node.clock, fake_gpus=node.config.discovery.fake_gpus)


def _register_metrics(node: Node) -> None:
    m, p2p = node.metrics, node.p2p
    m.gauge("cpn_peers_connected", "Connected libp2p peers", lambda: len(p2p.connected_peers()))
    m.gauge("cpn_dht_routing_table_peers", "Peers in the kad routing table", p2p.routing_table_size)
    m.gauge("cpn_dht_records", "Value records held in the DHT store", p2p.value_store_size)
    m.gauge("cpn_dht_lookups_total", "Provider lookups made", lambda: p2p.stats.lookups)
    m.gauge("cpn_dht_lookup_errors_total", "Failed queries in lookups", lambda: p2p.stats.lookup_errors)
    m.gauge("cpn_dht_rejected_records_total", "DHT records refused by our validators",
            lambda: sum(p2p.stats.rejected_records.values()))


async def _serve(node: Node, *, prepare: Callable[[Node], None] | None,
                 task_status: TaskStatus[Node]) -> None:
    config = node.config
    async with trio.open_nursery() as nursery:
        if prepare is not None:
            prepare(node)
        await nursery.start(node.api.serve, config.api_socket)
        await nursery.start(node.web.run)  # the dashboard and /metrics, if their ports are set
        await nursery.start(node.transfer.run)
        await nursery.start(node.execution.run)
        await nursery.start(node.discovery.run)
        node.negotiation.resume()  # re-commit agreements of a previous life before jobs look at them
        await nursery.start(node.provider_jobs.run)
        await nursery.start(node.negotiation.run)
        await nursery.start(node.runner.run)
        if sha256.BACKEND != "libcrypto":
            log.warning("SHA-256 runs in pure Python (no libcrypto found): blob transfers are about "
                        "1000x slower; install OpenSSL's libcrypto (Debian: libssl3)")
        log.info("node %s ready on %s", node.peer_id, ", ".join(node.p2p.listen_addrs))
        task_status.started(node)


async def run_node(
    config: Config,
    *,
    clock: UnixClock = unix_now,
    handle_signals: bool = False,
    prepare: Callable[[Node], None] | None = None,
    task_status: TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one node until cancelled (or a signal, with ``handle_signals``).

    ``task_status.started(node)`` hands the :class:`Node` to the caller once
    every service is ready; tests run several nodes in one process this way.
    ``prepare(node)`` runs once everything is built and before any service
    starts: the one place where a test may stand in for a part this machine
    lacks (a container capability proven elsewhere, fake resources).
    """
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = load_or_create_key(data_dir)
    validators = {ADVERT_NAMESPACE: AdvertValidator(clock)}
    node: Node | None = None
    async with open_host(key, config.node.listen, validators=validators, bootstrap=config.node.bootstrap,
                         relay=config.relay.policy()) as p2p:
        assert p2p.peer_id == peer_id_of(key), "libp2p and CPN disagree on the peer ID"
        with ExitStack() as stack:
            node = _build(config, key, p2p, clock, stack)
            with node._scope:
                async with trio.open_nursery() as nursery:
                    if handle_signals:
                        nursery.start_soon(_watch_signals, node)
                    await nursery.start(lambda task_status: _serve(node, prepare=prepare, task_status=task_status))
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


async def _announced_line(node: Node) -> None:
    """Ready comes before the identifiers are announced in the DHT (spec/dht.md
    §6.4); this second line says when finders everywhere can see the node."""
    await node.discovery.wait_announced()
    print(json.dumps({"event": "announced", "peer_id": node.peer_id}), flush=True)


def main(config: Config) -> int:
    """Foreground entry point of ``cpn node run``: prints one JSON "ready" line on
    stdout, then an "announced" line once its identifiers are announced in the DHT."""

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
                        **{name: f"http://127.0.0.1:{port}/" for name, port in node.web.ports.items()},
                    }
                ),
                flush=True,
            )
            if config.discovery.enabled:
                async with trio.open_nursery() as waits:
                    waits.start_soon(_announced_line, node)
                    await node.stopped.wait()
                    waits.cancel_scope.cancel()

    trio.run(_main)
    sys.stdout.flush()
    return 0
