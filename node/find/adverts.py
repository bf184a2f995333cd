"""Advertising: probe this host, and keep its signed advert current (spec/dht.md).

Three DHT-level facts make a provider findable:

1. **Provider records** under the CID of every compute identifier the node
   advertises (standard kad ``ADD_PROVIDER``, so stock libp2p nodes can find
   us), re-announced every ``discovery.reprovide_interval_s``.
2. **The signed advert** as a DHT value under ``/cpn-advert/<peer id>``.
   Every node validates it on store *and* on fetch with
   :func:`protocol.advert.open_record` at the current time (signature, signer
   = named peer, unexpired, sane lifetime) and keeps the highest ``seq``.
3. **The advert served directly** over ``/cpn/advert/0.1.0``; fetching it is
   also the finder's reachability and round-trip check
   (:mod:`node.find.finder`).

py-libp2p keeps provider records for 48 h, so a provider record only nominates
a *candidate*: the finder returns a provider only if a current advert from it
verifies and is unexpired now.  On shutdown a signed tombstone (same ``seq``,
which outranks the advert) replaces the advert in the DHT and is what the
protocol handler serves while the node stops.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from trio_typing import TaskStatus

from node.clock import UnixClock
from node.config import ConfigError, DiscoverySection
from node.find.finder import Finder
from node.find.nvml import make_backend
from node.find.probe import ProbeReport, probe
from node.find.records import Record, advert_key
from node.metrics import Metrics
from node.negotiate.scheduler import Scheduler
from node.p2p import FramedStream, P2PHost, ProvideReport
from protocol.advert import (
    Advert,
    ContainerCapability,
    FreeCapacity,
    Price,
    Tombstone,
    refresh_due,
)
from protocol.dht_advert import MAX_REQUEST, check_request, encode_answer
from protocol.envelope import seal
from protocol.errors import ProtocolError
from protocol.identifiers import advertised_ids, cid_string, dht_key
from protocol.kademlia import ReprovideSchedule, jittered
from protocol.resources import ResourceSet
from protocol.streams import ADVERT_PROTOCOL

__all__ = ["DiscoveryService", "free_capacity"]

log = logging.getLogger("cpn.discovery")

SERVE_TIMEOUT = 3.0  #: serving one advert request
DHT_TIMEOUT = 10.0  #: one DHT put of our advert
CLEANUP_TIMEOUT = 3.0  #: publishing the tombstone at shutdown
SEQ_FILE = "advert.seq"
CAPACITY_DEBOUNCE_S = 0.5  #: coalesce a burst of capacity changes into one advert
#: re-announce schedule (spec/dht.md §6.4): gaps start here and double up to
#: ``reprovide_interval_s``; an unconfirmed announcement repeats after it; a
#: new identifier or a routing table grown by 10 % brings announcements
#: forward to within it (at most once per this long)
FIRST_GAP_S = 11.0
START_SPREAD_S = 5.0  #: the first announcement of each identifier waits a random part of this
#: identifiers one node announces at once.  One: a node's announcements then
#: add at most alpha = 3 requests in flight to the network; with 4 at a time, 60
#: daemons starting together on 2 cores kept ~700 requests in flight and 60 %
#: of them timed out (wasted work, unconfirmed announcements, repeated)
PROVIDE_CONCURRENCY = 1
ACTIVITY_LOG_S = 600.0  #: how often a line sums up announcements and kad traffic
REPROVIDE_JITTER = 0.25  #: every gap is scaled by a random factor in [0.75, 1.25]
REFRESH_JITTER = 0.2  #: advert refreshes at half-life, +-20 % of it, so nodes drift apart (spec/dht.md §6.4)


class DiscoveryService:
    """Probe the host and keep the scheduler's view of it; advertise it until shutdown.

    The probe always runs (the scheduler places jobs on what it found); with
    ``discovery.enabled = false`` nothing is published, but the node still
    routes DHT traffic and can find others (:attr:`finder`).  The advert's
    free capacity follows the scheduler: every change of what is reserved or
    committed republishes it (debounced).
    """

    def __init__(
        self,
        config: DiscoverySection,
        *,
        p2p: P2PHost,
        key: Ed25519PrivateKey,
        data_dir: Path,
        clock: UnixClock,
        scheduler: Scheduler,
        capability: Callable[[], ContainerCapability],
        metrics: Metrics,
    ) -> None:
        self.config = config
        self.p2p = p2p
        self.key = key
        self.peer_id = p2p.peer_id
        self.data_dir = data_dir
        self.clock = clock
        self.scheduler = scheduler
        self.capability = capability  #: the container capability execution's self-test proved
        self.current: Record | None = None
        self.seq = 0
        self.ids: list[str] = []
        self.report: ProbeReport | None = None
        self.publications = 0  #: adverts published after the first (tests wait on it)
        self.finder = Finder(p2p, clock, self_record=lambda: self.current, metrics=metrics)
        self._published_total = metrics.counter(
            "cpn_adverts_published_total", "Signed records this node published, by type"
        )
        self._capacity_changed = trio.Event()
        self._ids_changed = trio.Event()
        self._published = trio.Event()
        self._wake = trio.Event()  #: the announce loop looks again (ids changed, a provide ended)
        self._stored_once = False
        self._provided: set[str] = set()  #: identifiers announced at least once
        self._announced = trio.Event()
        #: announcements made ("confirmed", "unconfirmed") and checks that found nothing to do
        self.announce_counts = {"confirmed": 0, "unconfirmed": 0, "skipped": 0}
        scheduler.on_change.append(lambda: self._capacity_changed.set())
        p2p.on_addrs_changed(self._addrs_changed)

    def _addrs_changed(self) -> None:
        """Reachability changed the addresses we announce: a new advert, new provider records."""
        self._capacity_changed.set()
        self._ids_changed.set()

    @property
    def resources(self) -> ResourceSet | None:
        """What the last probe found (None before the first probe)."""
        return self.report.resource_set() if self.report is not None else None

    @property
    def advertised(self) -> list[dict[str, str]]:
        """The compute identifiers advertised, with their CIDs."""
        if not self.config.enabled:
            return []
        return [{"id": i, "cid": cid_string(i)} for i in self.ids]

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Probe, sign the first advert and serve it; then announce in the background.

        Ready means ready (spec/dht.md §6.4): the node is started once its
        advert is served and its own provider records are held locally (a
        finder that asks this node learns of it at once); storing the advert
        in the DHT and announcing the identifiers at the closest peers go on
        after ``task_status.started()``.
        """
        self.p2p.set_stream_handler(ADVERT_PROTOCOL, self._serve)
        self._adopt(await self._probe())
        if not self.config.enabled:
            task_status.started()
            return
        self.seq = _next_seq(self.data_dir, self.clock())
        self._publish_local()
        for i in self.ids:
            self.p2p.hold_own_record(dht_key(i))
        task_status.started()
        log.info("advertising %d identifiers (seq %d)", len(self.ids), self.seq)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._first_store)
                nursery.start_soon(self._announce_loop)
                await self._refresh_loop()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT):
                await self._withdraw()

    async def _first_store(self) -> None:
        await self._publish_dht()
        self._stored_once = True
        self._check_announced()

    async def _probe(self) -> ProbeReport:
        try:
            backend = make_backend(self.config.fake_gpus or None, seed=self.peer_id)
        except ValueError as exc:  # the spec file changed since the config was loaded
            raise ConfigError(f"discovery.fake_gpus: {exc}") from None
        return await probe(self.data_dir, backend=backend, container=self.capability())

    def _adopt(self, report: ProbeReport) -> bool:
        """Take a probe report as the node's resources; True if the identifiers changed."""
        self.report = report
        resources = report.resource_set()
        self.scheduler.resources = resources  # never place a job on a GPU no longer there
        ids = advertised_ids(resources)
        changed = ids != self.ids
        self.ids = ids
        return changed

    async def _refresh_loop(self) -> None:
        """Publish a fresh advert half-way through each lifetime (re-probing the
        host first), +-20 % so nodes started together drift apart, and,
        debounced, whenever the scheduler's free capacity changes."""
        while True:
            assert self.current is not None and isinstance(self.current.message, Advert)
            due = self._refresh_at(self.current.message)
            with trio.move_on_after(max(0.0, due - self.clock())):
                await self._capacity_changed.wait()
            if self._capacity_changed.is_set():
                await trio.sleep(CAPACITY_DEBOUNCE_S)  # one advert for a burst of changes
                self._capacity_changed = trio.Event()
                await self.republish(reprobe=False)
            elif self.clock() >= due:
                await self.republish(reprobe=True)

    @staticmethod
    def _refresh_at(adv: Advert) -> float:
        """When to refresh ``adv``: its ``refresh_due``, moved by up to 20 % of
        the time from issue to then (always before it expires)."""
        half = refresh_due(adv) - adv.issued_at
        return adv.issued_at + jittered(half, random.random, REFRESH_JITTER)

    async def republish(self, *, reprobe: bool) -> None:
        """Sign and publish a new advert (higher ``seq``) with the free capacity now.

        ``reprobe`` re-reads the hardware first (memory, disk, GPUs come and
        go); new identifiers are announced at once.
        """
        if reprobe and self._adopt(await self._probe()):
            self._ids_changed.set()
            self._wake.set()
        self.seq = _next_seq(self.data_dir, self.clock())
        self._publish_local()
        await self._publish_dht()
        self.publications += 1
        self._published.set()
        self._published = trio.Event()

    async def wait_announced(self) -> None:
        """Return once the advert was stored in the DHT and every identifier
        announced once (however it went): tests wait on it, not on time."""
        await self._announced.wait()

    async def wait_publications(self, count: int) -> None:
        """Return once ``count`` adverts were published after the first (stored
        in the DHT as far as it goes): lets tests wait for a change, not sleep."""
        while self.publications < count:
            await self._published.wait()

    async def _announce_loop(self) -> None:
        """Announce every identifier on its own jittered schedule (spec/dht.md §6.4).

        Provider records land on the closest peers known *at announce time*:
        peers that joined later and are closer hold none, a node that started
        first announced to nobody, and an announcement sent to an overloaded
        peer is lost.  So each identifier has a :class:`ReprovideSchedule`:
        the first announcement within a random part of :data:`START_SPREAD_S`,
        then checks after gaps from :data:`FIRST_GAP_S` doubling up to
        ``reprovide_interval_s``, each scaled by a random factor.  At a check
        the identifier is announced again only if that is needed
        (:meth:`_stale`); otherwise the check counts as done and the gap
        doubles.  Every :data:`FIRST_GAP_S`, if the routing table changed
        size, identifiers whose last announcement no longer looks confirmed
        are brought forward to a random point within :data:`FIRST_GAP_S`.
        Identifiers are announced one at a time (:data:`PROVIDE_CONCURRENCY`).
        """
        now = trio.current_time()
        idents = {i: _Announcing(self._schedule(now, START_SPREAD_S)) for i in self.ids}
        limiter = trio.CapacityLimiter(PROVIDE_CONCURRENCY)
        checked, table_size = now, -1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._log_activity)
            while True:
                now = trio.current_time()
                if self._ids_changed.is_set():
                    self._ids_changed = trio.Event()
                    idents = {
                        i: idents.get(i) or _Announcing(self._schedule(now, FIRST_GAP_S))
                        for i in self.ids
                    }
                    for i in self.ids:
                        self.p2p.hold_own_record(dht_key(i))
                if now >= checked + FIRST_GAP_S:
                    checked = now
                    size = self.p2p.routing_table_size()
                    if size != table_size:  # unchanged: nothing new to look at (cheap idle)
                        table_size = size
                        for i, a in idents.items():
                            if not a.running and a.last is not None and self._stale(i, a, now):
                                a.sched.expedite(now, FIRST_GAP_S)
                for i, a in idents.items():
                    if a.running or a.sched.due > now:
                        continue
                    if self._stale(i, a, now):
                        a.running = True
                        nursery.start_soon(self._announce, i, a, limiter)
                    else:  # nothing to repair: the check counts, the gap doubles
                        a.sched.provided(now, True)
                        self.announce_counts["skipped"] += 1
                idle = [a.sched.due for a in idents.values() if not a.running]
                with trio.move_on_at(min([checked + FIRST_GAP_S, *idle])):
                    await self._wake.wait()
                if self._wake.is_set():
                    self._wake = trio.Event()

    async def _log_activity(self) -> None:
        """One line per :data:`ACTIVITY_LOG_S`: what announcing and the DHT cost."""
        before = (dict(self.announce_counts), self.p2p.stats.queries, self.p2p.stats.served)
        fails = dict(self.p2p.stats.failures)
        while True:
            await trio.sleep(ACTIVITY_LOG_S)
            st, counts = self.p2p.stats, self.announce_counts
            made = {k: counts[k] - before[0][k] for k in counts}
            failed = {k: v - fails.get(k, 0) for k, v in st.failures.items() if v > fails.get(k, 0)}
            log.info(
                "last %d s: %d announcements (%d confirmed), %d checks needed none; "
                "kad requests: %d sent (failed: %s), %d served; routing table %d",
                ACTIVITY_LOG_S, made["confirmed"] + made["unconfirmed"], made["confirmed"],
                made["skipped"], st.queries - before[1], failed or "none", st.served - before[2],
                self.p2p.routing_table_size(),
            )  # fmt: skip
            before = (dict(counts), st.queries, st.served)
            fails = dict(st.failures)

    def _stale(self, ident: str, a: _Announcing, now: float) -> bool:
        """Whether ``ident`` needs announcing now: never announced, last time
        not confirmed, ``reprovide_interval_s`` (less its jitter) since, or
        no longer confirmed as far as this node can tell: fewer than half of
        the k closest peers it knows of now took the last announcement (peers
        that joined since, closer to the key, hold none).  A finder asks the
        whole closest set, so one holder there is enough to be found."""
        last = a.last
        if last is None or not last.confirmed:
            return True
        if now - a.last_at >= (1 - REPROVIDE_JITTER) * self.config.reprovide_interval_s:
            return True
        held, closest = self.p2p.holders(dht_key(ident), last)
        return 2 * held < closest

    def _schedule(self, now: float, spread: float) -> ReprovideSchedule:
        return ReprovideSchedule(
            now, random.random, first_gap=FIRST_GAP_S, interval=self.config.reprovide_interval_s,
            jitter=REPROVIDE_JITTER, start_spread=spread,
        )  # fmt: skip

    async def _announce(self, ident: str, a: _Announcing, limiter: trio.CapacityLimiter) -> None:
        """Provide one identifier, then book the next check."""
        try:
            async with limiter:
                report = await self.p2p.provide(dht_key(ident))
            now = trio.current_time()
            a.last, a.last_at = report, now
            a.sched.provided(now, report.confirmed)
            self.announce_counts["confirmed" if report.confirmed else "unconfirmed"] += 1
            log.debug("announced %s: %d/%d of the closest hold it", ident, report.stored, report.closest)
        finally:
            a.running = False
            self._wake.set()
        self._provided.add(ident)
        self._check_announced()

    def _check_announced(self) -> None:
        if self._stored_once and self._provided >= set(self.ids):
            self._announced.set()

    def _publish_local(self) -> None:
        cfg = self.config
        assert self.report is not None
        res = self.report.resource_set()
        now = self.clock()
        adv = Advert(
            peer_id=self.peer_id,
            addrs=tuple(self.p2p.advertised_addrs()),
            resources=res,
            metrics=self.report.metrics(),
            free=free_capacity(res, self.scheduler),
            price=Price(
                gpu_hour=cfg.price_gpu_hour,
                cpu_core_hour=cfg.price_cpu_core_hour,
                memory_gib_hour=cfg.price_memory_gib_hour,
            ),
            container=self.report.container,
            compute_ids=tuple(self.ids),
            seq=self.seq,
            issued_at=now,
            expires_at=now + cfg.advert_lifetime_s,
        )
        self.current = seal(adv, self.key)

    async def _publish_dht(self) -> None:
        assert self.current is not None
        self._published_total.inc(type=type(self.current.message).__name__.lower())
        with trio.move_on_after(DHT_TIMEOUT):
            try:
                await self.p2p.put_value(advert_key(self.peer_id), self.current.raw)
            except ValueError as exc:  # our own validator refused: a bug, say so loudly
                log.error("could not store our own advert: %s", exc)

    async def _withdraw(self) -> None:
        """Replace the advert by a tombstone (served directly and stored in the DHT)."""
        if self.current is None:
            return
        tomb = Tombstone(peer_id=self.peer_id, seq=self.seq, issued_at=self.clock())
        self.current = seal(tomb, self.key)
        await self._publish_dht()
        log.info("advert withdrawn (tombstone seq %d)", self.seq)

    async def _serve(self, stream: FramedStream) -> None:
        """Answer one advert request (spec/dht.md section 3): the current record."""
        with trio.fail_after(SERVE_TIMEOUT):
            request = await stream.receive_frame(MAX_REQUEST)
            try:
                check_request(request)
            except ProtocolError:
                await stream.send_frame(encode_answer(error="bad_request"))
                raise
            if self.current is None:
                await stream.send_frame(encode_answer(error="no_advert"))
            else:
                await stream.send_frame(encode_answer(self.current.raw))
            await stream.close()


@dataclass
class _Announcing:
    """One identifier's announcements: its schedule and how the last one went."""

    sched: ReprovideSchedule
    last: ProvideReport | None = None
    last_at: float = -math.inf
    running: bool = False


def free_capacity(res: ResourceSet, scheduler: Scheduler) -> FreeCapacity:
    """What the advert offers as free now: the scheduler's view (capacity not
    reserved or committed to jobs) within what the last probe found.

    MIG-mode GPUs are never free (they cannot be scheduled whole).
    """
    free = scheduler.free()
    idle = set(free.gpu_uuids)
    gpus = [g.uuid for g in res.gpus if not g.mig and g.uuid in idle]
    return FreeCapacity(
        gpu_uuids=tuple(gpus),
        cpu_millis=min(res.cpu_cores * 1000, max(0, free.cpu_millis)),
        memory_mib=min(res.memory_mib, max(0, free.memory_mib)),
        disk_mib=min(res.disk_mib, max(0, free.disk_mib)),
    )


def _next_seq(data_dir: Path, now: int) -> int:
    """A sequence number above every one this key used before, even across restarts
    or a lost state file (it never goes below the wall clock in seconds)."""
    path = data_dir / SEQ_FILE
    try:
        last = int(path.read_text().strip() or 0)
    except (FileNotFoundError, ValueError):
        last = 0
    seq = max(last + 1, now)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(str(seq))
    os.replace(tmp, path)
    return seq
