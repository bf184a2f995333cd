"""End-to-end jobs, submitter side: drive each submitted job to a co-signed receipt.

``cpn submit JOB`` posts the job to ``POST /v1/jobs``; :class:`JobRunner`
then drives it (spec/jobflow.md) and survives its own restart:

1. the job's blobs (image and inputs) are imported into the local blob store
   and pinned, so the transfer service can serve them;
2. *negotiating*: find candidates (or the peers given), get quotes, conclude
   the co-signed agreement (:func:`node.negotiate.client.negotiate_best`); the
   chosen provider may then fetch exactly the job's blobs;
3. *watching*: a ``JobWatch`` stream to the provider brings phases, transfer
   progress and log lines, and finally the provider's signed Result; a broken
   stream is re-opened until ``grace_s`` passes without contact, after which
   the attempt (and its agreement) is recorded as failed and the job is
   offered again elsewhere if ``retries`` allow.  However alive the provider
   keeps the stream, an attempt without a Result by ``agreed_at + transfer_s
   + queue_s + run_s + [jobs] run_grace_s`` fails too (the provider is told
   to cancel).  Log lines are kept bounded (:mod:`node.jobs.live`);
4. *collecting*: the outputs and the log are fetched from the provider
   through the transfer service, verified against the Result's digests and
   written to ``<results_dir>/<run id>/``; the Receipt (accepted, or disputed
   with the problems found) is appended to the ledger and sent to the
   provider, which records it too.

At most one receipt with ``accepted = true`` exists per run: the run's state
is persisted (``runs.sqlite``) before the receipt leaves this node, and a run
in a final state never collects again.  A FAILED/CANCELLED result or a
disputed one is countersigned with ``accepted = false`` and, if retries
remain, the job goes to another provider.  The provider side of the same
protocol is :mod:`node.jobs.provider`.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from trio_typing import TaskStatus

from node.addrs import peer_and_addrs
from node.clock import UnixClock
from node.config import JobsSection
from node.find.finder import Finder
from node.jobs.live import Live, LogSpool, Pace, saved_log
from node.jobs.outputs import fetch_outputs, place_outputs, save_outputs
from node.jobs.runs import (
    FINAL_STATES,
    Attempt,
    AttemptState,
    Phase,
    Run,
    RunState,
    RunStore,
    SubmitError,
    SubmitRequest,
)
from node.ledger import Ledger, LedgerEntry
from node.negotiate.agreements import AgreementStore
from node.negotiate.client import QuoteSession, negotiate_best
from node.p2p import FramedStream, P2PHost, StreamClosed
from node.transfer.blobstore import BlobStoreError
from node.transfer.service import TransferService
from protocol.envelope import Signed, open_envelope, seal
from protocol.errors import ProtocolError
from protocol.jobflow import HEARTBEAT_S, JobCancel, JobPhase, JobUpdate, JobWatch, WatchView
from protocol.jobspec import JobSpec
from protocol.negotiation import Agreement, RefusalReason
from protocol.result import Outcome, Result, countersign, verify_result
from protocol.streams import JOB_FRAME_LIMIT, JOB_FRAME_LIMITS, JOB_PROTOCOL
from protocol.transfer import Direction
from protocol.wire import build

__all__ = ["JobRunner", "SubmitRequest", "SubmitError"]

log = logging.getLogger("cpn.jobflow")

STEP_TIMEOUT = 10.0  #: seconds for one frame write, or a request frame read
WATCH_READ_TIMEOUT = 3 * HEARTBEAT_S + 5  #: seconds of silence that break a watch stream
RECONNECT_DELAY = 0.5  #: seconds between watch reconnects
BUSY_RETRIES = (0.5, 1.0)  #: seconds before asking again when every provider answered busy


class _AttemptFailed(Exception):
    pass


class JobRunner:
    """Runs this node's submitted jobs end to end (one task per run, in its own nursery)."""

    def __init__(
        self,
        *,
        p2p: P2PHost,
        key: Ed25519PrivateKey,
        transfer: TransferService,
        agreements: AgreementStore,
        finder: Finder,
        data_dir: Path,
        clock: UnixClock,
        precise_now: Callable[[], float] = time.time,
        config: JobsSection | None = None,
    ) -> None:
        self.p2p = p2p
        self.key = key
        self.config = config or JobsSection()
        self.peer_id = p2p.peer_id
        self.transfer = transfer
        self.agreements = agreements
        self.finder = finder
        self.data_dir = data_dir
        self.clock = clock
        self.precise_now = precise_now  #: unix seconds with fractions, for the phase timeline
        self.runs: dict[str, Run] = {}
        self.live: dict[str, Live] = {}
        self.store = RunStore(data_dir / "runs.sqlite")
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._resume()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._nursery = None
            self.store.close()

    def _resume(self) -> None:
        """Load the runs of a previous life; drive the unfinished ones on."""
        assert self._nursery is not None
        for r in reversed(self.store.all()):  # oldest first: self.runs keeps submission order
            self.runs[r.id] = r
            self.live[r.id] = live = self._new_live(r.id)
            if r.state in FINAL_STATES and r.output_dir and live.log.path is not None:
                live.log.path.unlink(missing_ok=True)  # the verified log is in the output dir
            if r.receipt_hex:  # the receipt was persisted; make sure the ledger has it
                self._record(bytes.fromhex(r.receipt_hex))
            if r.state in FINAL_STATES:
                live.done.set()
                if r.receipt_hex and not r.settled and r.attempts:  # deliver what a restart cut off
                    self._nursery.start_soon(self._send_receipt, r, r.attempts[-1], bytes.fromhex(r.receipt_hex))
            else:
                self._event(r, "resumed", state=r.state.value)
                self._nursery.start_soon(self._drive, r)

    # ---- what the transfer service asks of us

    def authorize(self, peer: str, digest: str, direction: Direction) -> bool:
        """May ``peer`` fetch ``digest`` from us?  Yes while it holds an active
        agreement for one of our runs that uses the blob."""
        if direction is not Direction.FETCH:
            return False
        for r in self.runs.values():
            cur = r.current
            if cur is not None and cur.provider == peer and digest in r.blobs:
                return True
        return False

    def holders_of(self, digest: str) -> list[tuple[str, list[str]]]:
        """Providers that finished one of our jobs using ``digest`` (so they fetched
        it, and may still hold it), most recent first: named to the provider of a
        new job that needs the same blob (WhoHas), with a grant to fetch it there."""
        seen: dict[str, list[str]] = {}
        for r in reversed(list(self.runs.values())):
            if digest not in r.blobs:
                continue
            for a in reversed(r.attempts):
                if a.state is AttemptState.DONE and a.provider not in seen:
                    seen[a.provider] = list(a.addrs or self.transfer.addrs.get(a.provider, []))
        return list(seen.items())[:8]

    # ---- events

    def _new_live(self, rid: str) -> Live:
        spool = LogSpool(self.data_dir / "logs" / f"{rid}.log", memory_lines=self.config.log_memory_lines,
                         max_bytes=self.config.max_log_mib << 20)
        return Live(log=spool)

    def _event(self, run: Run, kind: str, **data: Any) -> None:
        live = self.live.get(run.id)
        if live is None:
            live = self.live[run.id] = self._new_live(run.id)
        live.add({"event": kind, "run": run.id, "at": int(self.clock()), **data})

    def _set(self, run: Run, state: RunState, detail: str | None = None) -> None:
        run.state = state
        if detail is not None:
            run.detail = detail
        run.follow_state(self.precise_now())  # the phase timeline
        self.store.save(run)
        self._event(run, "state", state=state.value, detail=run.detail)
        if state in FINAL_STATES:
            self.transfer.store.unpin(f"run:{run.id}")  # the blobs may be collected now
            live = self.live[run.id]
            live.log.close()
            live.done.set()
            live.touch()

    # ---- submit

    async def _import_blobs(self, spec: JobSpec, paths: dict[str, str]) -> None:
        """Put every blob of ``spec`` in the blob store (from ``paths``: digest -> file),
        so the transfer service can serve them to the agreed provider."""
        store = self.transfer.store
        for blob in spec.blobs():
            if store.has(blob.digest):
                continue
            src = paths.get(blob.digest)
            if src is None:
                raise SubmitError("missing_blob", f"{blob.digest} is neither stored nor in blob_paths")
            try:
                meta = await trio.to_thread.run_sync(
                    lambda s=src, c=blob.chunk_size: store.import_file(Path(s), chunk_size=c))
            except OSError as exc:
                raise SubmitError("missing_blob", f"{src}: {exc}") from None
            except BlobStoreError as exc:  # e.g. the blob store quota
                raise SubmitError("blob_store", str(exc)) from None
            if (meta.digest, meta.size, meta.chunk_root) != (blob.digest, blob.size, blob.chunk_root):
                raise SubmitError("blob_mismatch", f"{src} is not {blob.digest} (changed since the job was read?)")

    async def submit(self, req: SubmitRequest) -> Run:
        """Start a run: import and pin its blobs, then negotiate and drive it to a receipt."""
        if self._nursery is None:
            raise SubmitError("not_running", "the job runner is not running")
        spec = req.job
        await self._import_blobs(spec, req.blob_paths)
        signed = seal(spec, self.key)
        run = Run(
            id=secrets.token_hex(16), state=RunState.NEGOTIATING, job_hex=signed.raw.hex(),
            blobs=[b.digest for b in spec.blobs()], results_dir=req.results_dir, retries=req.retries,
            grace_s=req.grace_s, providers=req.providers, peers=list(req.peers),
            find_timeout=req.timeout, created_at=int(self.clock()),
        )
        for blob in spec.blobs():  # served to the provider; kept until the run ends
            self.transfer.store.pin(blob.digest, f"run:{run.id}")
        self.store.save(run)
        self.runs[run.id] = run
        self.live[run.id] = self._new_live(run.id)
        self._event(run, "submitted", job=spec.name, job_digest=signed.digest.hex())
        self._nursery.start_soon(self._drive, run)
        return run

    async def wait_negotiated(self, run: Run) -> None:
        """Return once ``run`` has an agreement or has ended (e.g. nobody agreed)."""
        live = self.live[run.id]
        while not run.attempts and run.state not in FINAL_STATES:
            await live.changed.wait()

    # ---- driving one run

    async def _drive(self, run: Run) -> None:
        """Run ``run`` to a final state.  An unexpected error ends this run
        (recorded, logged with its traceback), never the daemon with every
        other job in it."""
        try:
            await self._drive_steps(run)
        except Exception as exc:  # noqa: BLE001 - recorded as the run's failure, not swallowed
            log.exception("run %s failed unexpectedly", run.id)
            self._set(run, RunState.FAILED, f"internal error: {type(exc).__name__}: {exc}")

    async def _drive_steps(self, run: Run) -> None:
        live = self.live[run.id]
        with trio.CancelScope() as scope:
            live.scope = scope
            while run.state not in FINAL_STATES:
                if run.current is None and not await self._negotiate(run):
                    return
                cur = run.current
                assert cur is not None
                try:
                    result = await self._watch_until_deadline(run, cur)
                    await self._collect(run, cur, result)
                except _AttemptFailed as exc:
                    self._attempt_failed(run, cur, str(exc))
                if run.state in FINAL_STATES:
                    return
                if run.current is None and len(run.attempts) > run.retries:
                    self._set(run, RunState.FAILED, f"gave up after {len(run.attempts)} attempt(s): {run.detail}")
                    return

    def _signed_job(self, run: Run) -> Signed[JobSpec]:
        return open_envelope(bytes.fromhex(run.job_hex), expected=JobSpec, signer=self.peer_id)

    async def _candidates(self, run: Run, job: JobSpec) -> list[tuple[str, list[str] | None, int]]:
        failed = {a.provider for a in run.attempts}
        out: list[tuple[str, list[str] | None, int]]
        if run.peers:
            out = []
            for p in run.peers:
                pid, addrs = peer_and_addrs(p)  # checked when the job was submitted
                out.append((pid, addrs or None, 0))
        else:
            found = await self.finder.find(job.resources, limit=run.providers + len(failed),
                                           within_s=run.find_timeout)
            run.find_summary = found.explanation.summary()
            run.enter(Phase.NEGOTIATE, self.precise_now())
            self._event(run, "find", summary=run.find_summary, offers=len(found.offers))
            out = [(o.advert.peer_id, list(o.advert.addrs), o.fit.fit_pct) for o in found.offers]
        return [c for c in out if c[0] != self.peer_id and c[0] not in failed][: run.providers]

    async def _negotiate(self, run: Run) -> bool:
        self._set(run, RunState.NEGOTIATING)
        signed = self._signed_job(run)
        candidates = await self._candidates(run, signed.message)
        if not candidates:
            why = [x for x in (run.find_summary, run.detail if run.attempts else "") if x]
            self._set(run, RunState.FAILED, "no provider found" + (f" ({'; '.join(why)})" if why else ""))
            return False

        def agreed(s: QuoteSession, agreement: Agreement) -> None:
            """Record the attempt at once: the provider starts fetching (we authorise it)
            while the other quotes are still being cancelled."""
            t = agreement.terms
            addrs = next((c[1] for c in candidates if c[0] == t.provider), None)
            run.attempts.append(Attempt(agreement_id=t.negotiation_id.hex(), provider=t.provider,
                                        addrs=list(addrs or []), price=t.price, agreed_at=int(self.clock())))
            if addrs:
                self.transfer.addrs[t.provider] = list(addrs)
            self.store.save(run)

        for delay in (*BUSY_RETRIES, None):  # busy is transient: every provider busy, ask again soon
            outcome = await negotiate_best(self.p2p, self.key, signed, candidates, clock=self.clock,
                                           store=self.agreements, on_agreement=agreed)
            if outcome.agreement is not None or delay is None or not all(
                    s.refusal is not None and s.refusal.reason is RefusalReason.BUSY for s in outcome.sessions):
                break
            await trio.sleep(delay)
        info = outcome.to_json()
        run.quotes = info["providers"]
        run.refusals = [p for p in info["providers"] if p["status"] != "quoted"]
        self._event(run, "quotes", providers=info["providers"])
        if outcome.agreement is None:
            refused = sum(p["status"] == "refused" for p in run.refusals)
            errors = len(run.refusals) - refused
            self._set(run, RunState.FAILED, f"no provider agreed: {refused} refused, {errors} unreachable or failed"
                      + (f" ({run.detail})" if run.attempts else ""))
            return False
        t = outcome.agreement.terms
        attempt = run.attempts[-1]
        self._set(run, RunState.AGREED)
        self._event(run, "agreement", agreement_id=attempt.agreement_id, provider=t.provider, price=t.price,
                    max_run_s=t.max_run_s)
        return True

    def _attempt_failed(self, run: Run, cur: Attempt, detail: str) -> None:
        cur.state, cur.detail = AttemptState.FAILED, detail
        self.agreements.save(cur.agreement_id, "submitter", peer=cur.provider, state="failed",
                             now=self.clock(), detail=detail)
        run.detail = detail
        self._set(run, run.state)
        self._event(run, "attempt_failed", agreement_id=cur.agreement_id, provider=cur.provider,
                    detail=detail, retries_left=max(0, run.retries + 1 - len(run.attempts)))
        log.warning("run %s: attempt on %s failed: %s", run.id, cur.provider, detail)

    async def _open(self, cur: Attempt) -> FramedStream:
        with trio.fail_after(STEP_TIMEOUT):
            return await self.p2p.open_stream(cur.provider, JOB_PROTOCOL, cur.addrs or None)

    async def _watch_until_deadline(self, run: Run, cur: Attempt) -> Signed[Result]:
        """:meth:`_watch`, but only until the job's phases plus ``run_grace_s`` have
        passed since the agreement (persisted: a restart does not extend it)."""
        t = self._signed_job(run).message.timeouts
        grace = self.config.run_grace_s
        end = (cur.agreed_at or run.created_at) + t.transfer_s + t.queue_s + t.run_s + grace
        with trio.move_on_at(trio.current_time() + end - self.clock()) as scope:
            result = await self._watch(run, cur)
        if not scope.cancelled_caught:
            return result
        await self._send_cancel(run, cur, "no result within transfer_s + queue_s + run_s + grace")
        raise _AttemptFailed(f"no result within transfer_s + queue_s + run_s + {grace} s of the agreement "
                             f"(the provider still reported {run.state.value}); told it to cancel")

    async def _watch(self, run: Run, cur: Attempt) -> Signed[Result]:
        """Follow the provider until it hands over its signed Result."""
        seen = _WatchState(WatchView(bytes.fromhex(cur.agreement_id)))
        while True:
            try:
                stream = await self._open(cur)
                try:
                    return await self._watch_stream(run, cur, stream, seen)
                finally:
                    # reset, not close: a half-close waits on a peer that may be dead or silent
                    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                        await stream.reset()
            except (StreamClosed, trio.TooSlowError, ProtocolError) as exc:
                log.info("run %s: watch of %s broke: %s", run.id, cur.provider, exc or type(exc).__name__)
                silent = trio.current_time() - seen.last_contact
                if silent > run.grace_s:
                    what = "sent invalid frames" if isinstance(exc, ProtocolError) else "unreachable"
                    raise _AttemptFailed(f"provider {what} for {silent:.0f} s ({exc or type(exc).__name__})") from None
                await trio.sleep(RECONNECT_DELAY)

    async def _watch_stream(self, run: Run, cur: Attempt, stream: FramedStream, seen: _WatchState) -> Signed[Result]:
        """One watch stream: updates until the Result (raises when the stream breaks)."""
        req = build(JobWatch, agreement_id=bytes.fromhex(cur.agreement_id), log_lines=seen.view.lines)
        with trio.fail_after(STEP_TIMEOUT):
            await stream.send_frame(seal(req, self.key).raw)
        pace = Pace(self.config.live_log_kib_per_s << 10)  # a flooding provider waits, not our CPU
        while True:
            with trio.fail_after(WATCH_READ_TIMEOUT):
                raw = await stream.receive_frame(JOB_FRAME_LIMIT)
            await pace.take(len(raw))
            got = open_envelope(raw, expected=(JobUpdate, Result), signer=cur.provider, limits=JOB_FRAME_LIMITS)
            seen.last_contact = trio.current_time()  # only a valid frame counts as contact
            if isinstance(got.message, Result):
                return got  # type: ignore[return-value]
            assert isinstance(got.message, JobUpdate)
            self._update(run, cur, got.message, seen)

    def _update(self, run: Run, cur: Attempt, u: JobUpdate, seen: _WatchState) -> None:
        live = self.live[run.id]
        last_phase = seen.view.phase
        try:
            new = seen.view.receive(u)  # this attempt's log lines, none repeated or missed
        except ProtocolError as exc:
            if exc.reason == "unknown_agreement":
                raise _AttemptFailed(f"provider does not know the agreement: {u.detail}") from None
            raise
        live.add_lines(run.id, int(self.clock()), new)
        if u.phase is not last_phase:
            if u.phase in (JobPhase.TRANSFERRING, JobPhase.RUNNING):
                self._set(run, RunState(u.phase.value))
            self._event(run, "phase", phase=u.phase.value, detail=u.detail)
        if u.transfer_total and u.transfer_done != seen.done:
            seen.done = u.transfer_done
            if u.transfer_done == u.transfer_total and run.phases and run.phases[-1].phase is Phase.TRANSFER_IN:
                run.enter(Phase.QUEUE, self.precise_now())  # inputs complete: waiting for the container
            self._event(run, "progress", done=u.transfer_done, total=u.transfer_total)

    async def _fetch_outputs(self, run: Run, cur: Attempt, r: Result, job: JobSpec) -> list[str]:
        """Fetch the outputs and the log (nothing when the result claims more than the
        job's disk_mib); write the verified ones under a partial dir."""
        problems = await fetch_outputs(self.transfer, r, provider=cur.provider, disk_mib=job.resources.disk_mib,
                                       timeout_s=job.timeouts.transfer_s)
        partial = Path(run.results_dir) / f".{run.id}.partial"
        await trio.to_thread.run_sync(lambda: shutil.rmtree(partial, ignore_errors=True))
        problems += await trio.to_thread.run_sync(save_outputs, r, self.transfer.store.path_of, partial)
        return problems

    async def _collect(self, run: Run, cur: Attempt, result: Signed[Result]) -> None:
        """Verify the result, fetch and check the outputs, countersign, record, tell the provider."""
        signed_job = self._signed_job(run)
        try:
            verify_result(result.raw, provider=cur.provider, submitter=self.peer_id,
                          agreement_id=bytes.fromhex(cur.agreement_id), job_digest=signed_job.digest)
        except ProtocolError as exc:
            raise _AttemptFailed(f"invalid result: {exc}") from None
        self._set(run, RunState.COLLECTING)
        r = result.message
        self._event(run, "result", outcome=r.outcome.value, exit_code=r.exit_code, detail=r.detail)
        problems = await self._fetch_outputs(run, cur, r, signed_job.message)
        ran = r.outcome not in (Outcome.FAILED, Outcome.CANCELLED)
        accepted = ran and not problems
        if not ran:
            detail = f"run {r.outcome.value} on the provider: {r.detail}"[:512]
        else:
            detail = "; ".join(problems)[:512]
        receipt = countersign(result, self.key, now=int(self.clock()), accepted=accepted, detail=detail)
        # Persist before anything leaves this node: one accepted receipt per run, ever.
        run.result_hex, run.receipt_hex, run.problems = result.raw.hex(), receipt.raw.hex(), problems
        cur.state = AttemptState.DONE if accepted else AttemptState.FAILED
        cur.detail = detail
        await self._place_outputs(run, accepted, result.raw, receipt.raw)
        run.enter(Phase.RECEIPT, self.precise_now())
        if accepted:
            final = RunState.FINISHED
        elif run.retries + 1 > len(run.attempts):
            final = RunState.NEGOTIATING  # disputed or failed on the provider: report it, move on
        else:
            final = RunState.DISPUTED if ran else RunState.FAILED
        # One save records the receipt and the state together, before the receipt
        # leaves this node or enters the ledger: a restart never countersigns again.
        run.state, run.detail = final, detail or f"{r.outcome.value}, exit code {r.exit_code}"
        run.settled = False
        self.store.save(run)
        entry = self._record(receipt.raw)
        self.agreements.save(cur.agreement_id, "submitter", peer=cur.provider,
                             state="finished" if accepted else "failed", now=self.clock(),
                             detail=detail or r.outcome.value)
        self._event(run, "receipt", accepted=accepted, detail=detail, ledger_seq=entry.seq,
                    receipt_digest=receipt.digest.hex(), output_dir=run.output_dir, problems=problems)
        await self._send_receipt(run, cur, receipt.raw)
        self._set(run, final)

    async def _place_outputs(self, run: Run, accepted: bool, result: bytes, receipt: bytes) -> None:
        """Move verified outputs to ``<results_dir>/<run id>/`` (or drop them)."""
        dest = await trio.to_thread.run_sync(place_outputs, Path(run.results_dir), run.id, accepted, result, receipt)
        if dest is not None:
            run.output_dir = str(dest)

    def _record(self, raw: bytes) -> LedgerEntry:
        """Append a receipt to the ledger (idempotent: the same receipt is one entry)."""
        with Ledger.in_data_dir(self.data_dir) as ledger:
            return ledger.append(raw, now=int(self.clock()))

    async def _send_receipt(self, run: Run, cur: Attempt, raw: bytes) -> None:
        """Best effort, a few tries: the provider records the receipt in its ledger too."""
        for attempt in range(3):
            if attempt:
                await trio.sleep(1.0)
            try:
                with trio.fail_after(STEP_TIMEOUT):
                    stream = await self._open(cur)
                    try:
                        await stream.send_frame(raw)
                        got = open_envelope(await stream.receive_frame(JOB_FRAME_LIMIT), expected=JobUpdate,
                                            signer=cur.provider)
                    finally:
                        await stream.close()
                run.settled = True
                self.store.save(run)
                self._event(run, "settled", provider=cur.provider, detail=got.message.detail)
                return
            except (StreamClosed, trio.TooSlowError, ProtocolError) as exc:
                log.info("run %s: receipt not delivered yet: %s", run.id, exc)
        self._event(run, "unsettled", provider=cur.provider, detail="receipt not delivered; it is in our ledger")

    async def cancel(self, run: Run) -> None:
        """Stop ``run``: tell its provider (best effort), record it cancelled."""
        if run.state in FINAL_STATES:
            return
        cur = run.current
        live = self.live[run.id]
        if live.scope is not None:
            live.scope.cancel()
        if cur is not None:
            await self._send_cancel(run, cur, "cancelled by the user")
            cur.state, cur.detail = AttemptState.CANCELLED, "cancelled by the user"
            self.agreements.save(cur.agreement_id, "submitter", peer=cur.provider, state="cancelled",
                                 now=self.clock(), detail="cancelled by the user")
        self._set(run, RunState.CANCELLED, "cancelled by the user")

    async def _send_cancel(self, run: Run, cur: Attempt, detail: str) -> None:
        """Ask the provider to stop the job (best effort)."""
        try:
            with trio.fail_after(STEP_TIMEOUT):
                stream = await self._open(cur)
                try:
                    msg = build(JobCancel, agreement_id=bytes.fromhex(cur.agreement_id), detail=detail)
                    await stream.send_frame(seal(msg, self.key).raw)
                    await stream.receive_frame(JOB_FRAME_LIMIT)
                finally:
                    await stream.close()
        except (StreamClosed, trio.TooSlowError, ProtocolError) as exc:
            log.info("run %s: cancel not delivered: %s", run.id, exc)

    # ---- queries (the local API)

    def find(self, rid: str) -> list[Run]:
        """Runs whose ID is ``rid`` or starts with it."""
        if rid in self.runs:
            return [self.runs[rid]]
        return [r for r in self.runs.values() if rid and r.id.startswith(rid)]

    async def events(self, run: Run, follow: bool, only: str | None) -> AsyncIterator[dict[str, Any]]:
        """The run's events from the start; with ``follow``, until it ends."""
        live = self.live[run.id]
        if only == "log" and not live.log.count and live.done.is_set():  # after a restart
            async for ev in saved_log(run.id, run.output_dir, live):
                yield ev
            return
        async for ev in live.stream(run.id, follow, only):
            yield ev
        if only is None:
            yield {"event": "end", "run": run.id, **run.summary()}


@dataclass
class _WatchState:
    """What one attempt's watch has seen, across reconnects."""

    view: WatchView  #: phase and log lines delivered (spec/jobflow.md)
    last_contact: float = field(default_factory=trio.current_time)
    done: int = -1
