"""Provider side of an agreed job: fetch blobs, run, report, settle (spec/jobflow.md).

An agreement (negotiation's ``on_agreement`` hook) starts one
:class:`ProviderJob` task in the service's own nursery:

1. *transferring*: every blob of the job (image manifest, config, layers,
   inputs) is fetched from the submitter through the transfer service.  The
   submitter authorises the fetch once it has recorded the agreement, which
   may be a moment after we sent it, so a failed fetch (``unauthorized``,
   unreachable) is retried with back-off, but only ``max_fetch_failures``
   times in a row and never past ``agreed_at + transfer_s``: a submitter that
   agrees and vanishes holds the capacity for seconds, not for the
   ``transfer_s`` it chose;
2. *running*: :class:`node.execute.executor.Executor` runs the container with the
   agreement's GPUs; its log lines are kept for watchers;
3. *finished* / *failed*: the signed Result is kept (the executor also writes
   ``runs/<id>/result.cbor``), the submitter may fetch the outputs and the log
   (granted to it alone), and the capacity is released;
4. *settled*: the submitter's receipt arrived and is in the ledger.

The submitter pulls (``JobWatch`` on ``/cpn/job/0.1.0``); nothing here dials
it except for the input transfer, and the cancel of an agreement the
operator ends (:meth:`ProviderJobs.cancel_by_operator`).

Deadlines are measured from the agreement (``agreed_at``, persisted with it):
the transfer ends by ``agreed_at + transfer_s`` and the whole job by
``agreed_at + transfer_s + queue_s + run_s +`` :data:`DEADLINE_GRACE_S`, also
after a restart (a deadline that passed while the node was down fails the
job at once, so the capacity is not locked again).  Persistence is the negotiation store's
provider row (state column) plus the executor's run directory, so a restarted
provider reports the FAILED result the executor settled for an interrupted
run, or resumes a transfer that had not reached the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from trio_typing import TaskStatus

from node.clock import UnixClock
from node.execute.executor import Executor, file_blob
from node.execute.service import ExecutionService
from node.ledger import Ledger, LedgerError
from node.negotiate.agreements import AgreementStore
from node.negotiate.guard import PeerLog, guarded
from node.negotiate.scheduler import Allocation, Scheduler
from node.negotiate.status import push_cancel
from node.p2p import FramedStream, P2PHost, StreamClosed
from node.transfer.service import TransferFailed, TransferService
from protocol.envelope import Signed, open_envelope, seal
from protocol.errors import LocalProtocolError, ProtocolError
from protocol.jobflow import (
    HEARTBEAT_S,
    MAX_LINE,
    JobCancel,
    JobPhase,
    JobUpdate,
    JobWatch,
    batch_lines,
    unknown_agreement,
)
from protocol.jobspec import JobSpec
from protocol.negotiation_state import Negotiation
from protocol.result import Metering, Outcome, Receipt, Result, verify_receipt
from protocol.streams import JOB_FRAME_LIMIT, JOB_FRAME_LIMITS, JOB_PROTOCOL
from protocol.transfer import Direction
from protocol.wire import build

__all__ = ["ProviderJob", "ProviderJobs"]

log = logging.getLogger("cpn.jobflow")

STEP_TIMEOUT = 10.0  #: seconds for one frame write, or a request frame read
MAX_KEPT_LINES = 20_000  #: live log lines kept per job (the whole log is the log blob)
#: the job's hard end: agreed_at + transfer_s + queue_s + run_s + this (image
#: load, output collection); a submitter waits longer ([jobs] run_grace_s)
DEADLINE_GRACE_S = 120
OPERATOR_CANCEL = "cancelled by the provider's operator"
CANCEL_PUSH_TRIES = 3  #: signed cancel pushes to the submitter (1 s, then 2 s apart)


@dataclass(eq=False)
class ProviderJob:
    """One agreed job on this provider (in memory; rebuilt from the store on start)."""

    aid: str  #: agreement ID, hex
    submitter: str
    job: JobSpec
    job_digest: bytes
    gpus: tuple[str, ...]
    agreed_at: int = 0  #: unix seconds of the agreement: the phase deadlines count from it
    phase: JobPhase = JobPhase.AGREED
    detail: str = ""
    transfer_done: int = 0  #: bytes of the job's blobs complete here
    fetching: str | None = None  #: digest of the blob being fetched now
    progress: dict[str, Any] = field(default_factory=dict)  #: the transfer service's Progress map
    lines: list[str] = field(default_factory=list)
    result: Signed[Result] | None = None
    scope: trio.CancelScope | None = None
    cancelled: bool = False
    cancel_detail: str = "cancelled by the submitter"
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def published(self) -> bool:
        """Its signed result exists (the capacity is released)."""
        return self.result is not None

    @property
    def transfer_by(self) -> int:
        return self.agreed_at + self.job.timeouts.transfer_s

    @property
    def end_by(self) -> int:
        t = self.job.timeouts
        return self.agreed_at + t.transfer_s + t.queue_s + t.run_s + DEADLINE_GRACE_S

    @property
    def transfer_total(self) -> int:
        return sum(b.size for b in self.job.blobs())

    @property
    def transfer_now(self) -> int:
        """Verified bytes held, including the blob being fetched (for progress)."""
        p = self.progress.get(self.fetching) if self.fetching is not None else None
        partial = p.done_bytes if p is not None else 0
        return min(self.transfer_done + partial, self.transfer_total)

    def touch(self) -> None:
        """Wake every watcher (they re-read the job)."""
        self.changed.set()
        self.changed = trio.Event()


def _update(pj: ProviderJob, now: int, log_from: int, lines: list[str]) -> JobUpdate:
    detail = pj.detail
    p = pj.progress.get(pj.fetching) if pj.fetching is not None else None
    if not detail and p is not None and p.path is not None:  # how the inputs move (issue 13)
        detail = f"inputs: {p.path}" + (", slow" if "relayed" in p.paths.values() else "")
    return build(
        JobUpdate, agreement_id=bytes.fromhex(pj.aid), phase=pj.phase, at=now, detail=detail[:1024],
        transfer_done=pj.transfer_now, transfer_total=pj.transfer_total,
        log_from=log_from, lines=tuple(line[:MAX_LINE] for line in lines),
    )


class ProviderJobs:
    """Every agreed job on this provider, each driven by a task in this service's nursery.

    It serves ``/cpn/job/0.1.0`` (watch, cancel and receipt requests from
    submitters); :meth:`on_agreement` is the negotiation provider's hook.
    """

    def __init__(
        self,
        *,
        p2p: P2PHost,
        key: Ed25519PrivateKey,
        agreements: AgreementStore,
        scheduler: Scheduler,
        transfer: TransferService,
        execution: ExecutionService,
        data_dir: Path,
        clock: UnixClock,
        max_fetch_failures: int = 8,
        peer_log: PeerLog | None = None,
    ) -> None:
        self.p2p = p2p
        self.max_fetch_failures = max_fetch_failures
        self.peer_log = peer_log if peer_log is not None else PeerLog(log)
        self.key = key
        self.peer_id = p2p.peer_id
        self.store = agreements
        self.scheduler = scheduler
        self.transfer = transfer
        self.execution = execution
        self.data_dir = data_dir
        self.clock = clock
        self.jobs: dict[str, ProviderJob] = {}
        #: test hook: replaces the signed result before it is published (bad-actor tests)
        self.result_filter: Callable[[ProviderJob, Signed[Result]], Signed[Result]] | None = None
        self._nursery: trio.Nursery | None = None

    @property
    def executor(self) -> Executor | None:
        return self.execution.executor

    # ---- lifecycle

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Resume the jobs of a previous life, then serve requests until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                self._resume()
                self.p2p.set_stream_handler(JOB_PROTOCOL, guarded(JOB_PROTOCOL, self._handle, self.peer_log))
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._nursery = None

    def _resume(self) -> None:
        assert self._nursery is not None
        for row in self.store.recent(role="provider", limit=10_000):
            if row.state not in ("agreed", "transferring", "running", "finished", "failed") or not row.record:
                continue
            try:
                conn = Negotiation.from_record(row.record, key=self.key, replay_cache=self.store)
            except ProtocolError as exc:
                log.warning("job %s: stored negotiation unreadable: %s", row.id, exc)
                continue
            if conn.job is None or conn.offer is None:
                continue
            alloc = row.extra.get("allocation") or {}
            pj = ProviderJob(aid=row.id, submitter=row.peer, job=conn.job.message,
                             job_digest=conn.offer.message.job_digest, gpus=tuple(alloc.get("gpu_uuids", ())),
                             agreed_at=int(row.extra.get("agreed_at", row.created_at)))
            self.jobs[pj.aid] = pj
            result_file = self.data_dir / "runs" / pj.aid / "result.cbor"
            if result_file.is_file():
                self._publish(pj, open_envelope(result_file.read_bytes(), expected=Result))
            elif row.state in ("agreed", "transferring") and self.clock() >= pj.transfer_by:
                # decided here, before negotiation serves again: the lock must not come back
                self._publish(pj, self._failed_result(pj, "the transfer deadline passed while the provider was "
                                                      "down", Outcome.FAILED))
            elif row.state in ("agreed", "transferring"):
                self._nursery.start_soon(self._run, pj)
            else:  # running but the executor left no result: nothing can be proven
                pj.phase, pj.detail = JobPhase.FAILED, "run lost in a provider restart"
                self._release(pj)
            log.info("resumed job %s in phase %s", pj.aid, pj.phase.value)

    async def _handle(self, stream: FramedStream) -> None:
        """One request from a submitter: a signed JobWatch, JobCancel or Receipt."""
        try:
            with trio.fail_after(STEP_TIMEOUT):
                raw = await stream.receive_frame(JOB_FRAME_LIMIT)
            signed = open_envelope(raw, expected=(JobWatch, JobCancel, Receipt), signer=stream.remote_peer,
                                   limits=JOB_FRAME_LIMITS)
            await self.handle(stream, signed)
        except (StreamClosed, trio.TooSlowError):
            return
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(STEP_TIMEOUT):
                await stream.close()

    def on_agreement(self, conn: Negotiation, alloc: Allocation) -> None:
        """The negotiation provider concluded an agreement: start the job."""
        assert conn.negotiation_id is not None and conn.job is not None and conn.offer is not None
        if self._nursery is None:
            raise LocalProtocolError("provider jobs are not running")
        aid = conn.negotiation_id.hex()
        pj = ProviderJob(aid=aid, submitter=conn.submitter, job=conn.job.message,
                         job_digest=conn.offer.message.job_digest, gpus=tuple(alloc.gpu_uuids),
                         agreed_at=int(self.clock()))
        self.jobs[aid] = pj
        self._nursery.start_soon(self._run, pj)

    def _save(self, pj: ProviderJob, state: str, detail: str | None = None) -> None:
        self.store.save(pj.aid, "provider", peer=pj.submitter, state=state, now=self.clock(),
                        detail=detail)

    def _release(self, pj: ProviderJob) -> None:
        self.scheduler.release(pj.aid)

    # ---- the job's life

    def _trio_at(self, unix: int) -> float:
        """trio clock time of the unix time ``unix`` (deadlines are persisted as unix time)."""
        return trio.current_time() + (unix - self.clock())

    async def _run(self, pj: ProviderJob) -> None:
        result: Signed[Result] | None = None
        failure: tuple[str, Outcome] | None = None
        with trio.CancelScope(deadline=self._trio_at(pj.end_by)) as scope:
            pj.scope = scope
            if pj.cancelled:  # cancelled before this task ran
                scope.cancel()
            try:
                result = await self._transfer_and_execute(pj)
            except _JobFailed as exc:
                failure = str(exc), Outcome.FAILED
            except Exception as exc:  # noqa: BLE001 - a task in the root nursery: fail this job, not the node
                log.exception("job %s failed unexpectedly", pj.aid)
                failure = f"provider error: {type(exc).__name__}: {exc}", Outcome.FAILED
        pj.scope = None
        if pj.result is not None:  # settled meanwhile (cancel answered first)
            return
        if scope.cancelled_caught:
            if pj.cancelled:
                failure = pj.cancel_detail, Outcome.CANCELLED
            elif self.clock() >= pj.end_by:
                failure = (f"deadline passed: transfer_s + queue_s + run_s + {DEADLINE_GRACE_S} s from the "
                           "agreement", Outcome.FAILED)
            else:  # node shutdown: the next start settles or resumes the run
                return
        if failure is not None:  # signing and storing the log are file work: off the event loop
            result = await trio.to_thread.run_sync(self._failed_result, pj, *failure)
        assert result is not None
        if self.result_filter is not None:
            result = self.result_filter(pj, result)
        self._publish(pj, result)

    async def _transfer_and_execute(self, pj: ProviderJob) -> Signed[Result]:
        pj.phase = JobPhase.TRANSFERRING
        self._save(pj, "transferring")
        pj.touch()
        await self._fetch_all(pj)
        ex = self.executor
        if ex is None:
            raise _JobFailed("execution is disabled on this provider")
        pj.detail = "image and inputs verified; preparing the container"
        pj.touch()

        def on_running(run: Any) -> None:
            pj.phase, pj.detail = JobPhase.RUNNING, ""
            self._save(pj, "running")
            pj.touch()
            assert self._nursery is not None
            self._nursery.start_soon(self._follow_log, pj, run.logs)

        store = self.transfer.store
        done = await ex.execute(
            pj.job, agreement_id=bytes.fromhex(pj.aid), job_digest=pj.job_digest, submitter=pj.submitter,
            gpus=pj.gpus, blob_path=store.path_of, store_output=store.import_file, on_running=on_running,
        )
        return done.result

    async def _fetch_all(self, pj: ProviderJob) -> None:
        deadline = self._trio_at(pj.transfer_by)  # from the agreement: a restart does not extend it
        pj.transfer_done = 0
        for blob in pj.job.blobs():
            self.transfer.store.pin(blob.digest, f"job:{pj.aid}")  # kept from garbage collection until published
            await self._fetch_one(pj, blob, deadline)
            pj.fetching = None
            pj.transfer_done += blob.size
            pj.touch()

    async def _fetch_one(self, pj: ProviderJob, blob: Any, deadline: float) -> None:
        """Fetch one blob, retrying a failure (the submitter may not have recorded the
        agreement yet) at most ``max_fetch_failures`` times in a row without progress."""
        t = self.transfer
        delay, failures = 0.1, 0
        while True:
            left = deadline - trio.current_time()
            before = _done(t.progress.get(blob.digest))
            try:
                if left <= 0:
                    raise TransferFailed("the job's transfer_s ran out")
                pj.progress, pj.fetching = t.progress, blob.digest
                with trio.fail_after(left):
                    # the submitter may name other providers that hold the blob
                    # (its earlier jobs): they become extra sources
                    await t.fetch(blob, [pj.submitter], discover=True, on_behalf_of=pj.submitter)
                return
            except (TransferFailed, trio.TooSlowError) as exc:
                failures = 1 if _done(t.progress.get(blob.digest)) > before else failures + 1
                if failures >= self.max_fetch_failures or trio.current_time() + delay >= deadline:
                    raise _JobFailed(f"transfer of {blob.digest} given up after {failures} failed "
                                     f"attempt(s) in a row: {exc}") from None
                log.debug("job %s: fetch of %s failed (%s); retrying", pj.aid, blob.digest, exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _follow_log(self, pj: ProviderJob, stream: Any) -> None:
        async for line in stream.follow():
            if len(pj.lines) < MAX_KEPT_LINES:
                pj.lines.append(line.decode(errors="replace").rstrip("\n"))
                pj.touch()

    def _failed_result(self, pj: ProviderJob, detail: str, outcome: Outcome) -> Signed[Result]:
        run_dir = self.data_dir / "runs" / pj.aid
        run_dir.mkdir(parents=True, exist_ok=True)
        log_path = run_dir / "log"
        if not log_path.exists():
            log_path.write_bytes(b"")
        now = int(self.clock())
        result = Result(
            agreement_id=bytes.fromhex(pj.aid), job_digest=pj.job_digest, submitter=pj.submitter,
            provider=self.peer_id, outcome=outcome, exit_code=None, oom=False, timed_out=False,
            detail=detail[:512], outputs=(), log=file_blob(log_path, ""),
            metering=Metering(wall_ms=0, cpu_ms=0, peak_memory_bytes=0, bytes_in=pj.transfer_done,
                              bytes_out=0, gpus=()),
            started_at=now, finished_at=now,
        )
        signed = seal(result, self.key)
        (run_dir / "result.cbor").write_bytes(signed.raw)
        self.transfer.store.import_file(log_path)
        return signed

    def _publish(self, pj: ProviderJob, result: Signed[Result]) -> None:
        """Keep the result, let the submitter fetch what it names, free the capacity."""
        pj.result = result
        r = result.message
        ok = r.outcome not in (Outcome.FAILED, Outcome.CANCELLED)
        pj.phase = JobPhase.FINISHED if ok else JobPhase.FAILED
        pj.detail = r.detail or r.outcome.value
        for blob in (*r.outputs, r.log):
            self.transfer.grant(pj.submitter, blob.digest, Direction.FETCH)
            self.transfer.store.pin(blob.digest, f"result:{pj.aid}")  # until the receipt arrives
        self._save(pj, "finished" if ok else "failed", detail=pj.detail)
        self._release(pj)
        self.transfer.store.unpin(f"job:{pj.aid}")
        pj.touch()
        log.info("job %s %s: %s", pj.aid, pj.phase.value, pj.detail)

    # ---- the operator

    async def cancel_by_operator(self, aid: str, *, wait_s: float = 30.0) -> bool:
        """End agreement ``aid`` on this provider (``POST /v1/agreements/{id}/cancel``).

        A running job is stopped like a submitter's cancel: its CANCELLED result
        reaches the submitter's watch, and the capacity is released once it is
        published (waited for up to ``wait_s``).  The submitter is also sent a
        signed ``cancel`` on the status stream, best effort.  A quote that only
        reserves capacity is released at once.  False if ``aid`` is not open here.
        """
        pj = self.jobs.get(aid)
        if pj is None:
            rows = [r for r in self.store.get(aid, "provider") if r.id == aid]
            if not rows or rows[0].state not in ("offered", "quoted", "accepted", "agreed", "transferring",
                                                 "queued", "running"):
                return False
            self.scheduler.release(aid)
            self.store.save(aid, "provider", peer=rows[0].peer, state="cancelled", now=self.clock(),
                            detail=OPERATOR_CANCEL)
            return True
        if pj.result is not None:
            return False
        pj.cancelled, pj.cancel_detail = True, OPERATOR_CANCEL
        ex = self.executor
        if not (ex is not None and ex.cancel(pj.aid)) and pj.scope is not None:
            pj.scope.cancel()
        log.info("job %s: %s", pj.aid, OPERATOR_CANCEL)
        with trio.move_on_after(wait_s):
            while not pj.published:
                await pj.changed.wait()
        if self._nursery is not None:
            self._nursery.start_soon(self._tell_cancel, pj)
        return True

    async def _tell_cancel(self, pj: ProviderJob) -> None:
        """Send the signed cancel, trying again a few times (the submitter may be
        redialling, or briefly away); a failed push saved nothing, so a retry
        repeats the same sequence number and a duplicate is only acknowledged."""
        for attempt in range(CANCEL_PUSH_TRIES):
            try:
                with trio.fail_after(STEP_TIMEOUT * 3):
                    await push_cancel(self.p2p, self.key, self.store, pj.aid, clock=self.clock,
                                      detail=OPERATOR_CANCEL)
                break
            except (ProtocolError, LocalProtocolError) as exc:  # refused: trying again changes nothing
                log.info("job %s: the submitter refused the cancel: %s", pj.aid, exc)
                break
            except (StreamClosed, trio.TooSlowError) as exc:
                if attempt + 1 == CANCEL_PUSH_TRIES:
                    log.info("job %s: the submitter was not told of the cancel: %s", pj.aid, exc)
                else:
                    await trio.sleep(2**attempt)
        pj.touch()

    # ---- the watch protocol (requests from the submitter)

    async def handle(self, stream: FramedStream, signed: Signed[Any]) -> None:
        """Serve one request frame, already opened and checked to come from the stream's peer."""
        msg, peer = signed.message, signed.signer
        if isinstance(msg, JobWatch):
            await self._watch(stream, msg, peer)
        elif isinstance(msg, JobCancel):
            await self._cancel(stream, msg, peer)
        elif isinstance(msg, Receipt):
            await self.settle(stream, signed.raw, peer)

    def _job_for(self, aid: bytes, peer: str) -> ProviderJob | None:
        pj = self.jobs.get(aid.hex())
        return pj if pj is not None and pj.submitter == peer else None

    async def _send(self, stream: FramedStream, raw: bytes) -> None:
        with trio.fail_after(STEP_TIMEOUT):
            await stream.send_frame(raw)

    async def _unknown(self, stream: FramedStream, aid: bytes) -> None:
        await self._send(stream, seal(unknown_agreement(aid, int(self.clock())), self.key).raw)

    async def _watch(self, stream: FramedStream, req: JobWatch, peer: str) -> None:
        pj = self._job_for(req.agreement_id, peer)
        if pj is None:
            await self._unknown(stream, req.agreement_id)
            return
        sent = min(req.log_lines, len(pj.lines))
        last: tuple[Any, ...] | None = None
        while True:
            changed = pj.changed
            lines = batch_lines(pj.lines, sent)
            state = (pj.phase, pj.detail, pj.transfer_now)
            if lines or state != last:
                update = _update(pj, int(self.clock()), sent, lines)
                await self._send(stream, seal(update, self.key).raw)
                sent += len(lines)
                last = state
                continue
            if pj.result is not None:
                await self._send(stream, pj.result.raw)
                return
            # while blobs move, look at the byte count every second (progress)
            wait = 1.0 if pj.phase is JobPhase.TRANSFERRING else HEARTBEAT_S
            with trio.move_on_after(wait) as heartbeat:
                await changed.wait()
            if heartbeat.cancelled_caught and state == (pj.phase, pj.detail, pj.transfer_now):
                last = None  # nothing new: send the same state again as a heartbeat

    async def _cancel(self, stream: FramedStream, req: JobCancel, peer: str) -> None:
        pj = self._job_for(req.agreement_id, peer)
        if pj is None:
            await self._unknown(stream, req.agreement_id)
            return
        if pj.result is None:
            pj.cancelled = True
            ex = self.executor
            if not (ex is not None and ex.cancel(pj.aid)) and pj.scope is not None:
                pj.scope.cancel()  # still transferring: stop the task
            log.info("job %s cancelled by the submitter: %s", pj.aid, req.detail)
        update = _update(pj, int(self.clock()), len(pj.lines), [])
        await self._send(stream, seal(update, self.key).raw)

    async def settle(self, stream: FramedStream, raw: bytes, peer: str) -> None:
        """The submitter's receipt: verify, check it is for our result, record it."""
        verified = verify_receipt(raw, submitter=peer, provider=self.peer_id)
        r = verified.result.message
        pj = self._job_for(r.agreement_id, peer)
        if pj is None or pj.result is None or pj.result.digest != verified.result.digest:
            raise ProtocolError("binding_mismatch", "receipt for a result this provider did not publish")
        try:
            with Ledger.in_data_dir(Path(self.data_dir)) as ledger:
                ledger.append(raw, now=int(self.clock()))
        except LedgerError as exc:
            raise ProtocolError(exc.reason, str(exc)) from None
        rm = verified.receipt.message
        self.transfer.store.unpin(f"result:{pj.aid}")
        pj.phase = JobPhase.SETTLED
        pj.detail = "receipt recorded" + ("" if rm.accepted else f" (disputed: {rm.detail})")
        self._save(pj, "settled", detail=pj.detail)
        pj.touch()
        update = _update(pj, int(self.clock()), len(pj.lines), [])
        await self._send(stream, seal(update, self.key).raw)


def _done(progress: Any) -> int:
    return int(progress.done_bytes) if progress is not None else 0


class _JobFailed(Exception):
    pass
