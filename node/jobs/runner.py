"""End-to-end jobs: the submitter's orchestration and the job service (spec/jobflow.md).

``cpn submit JOB --follow`` posts the job to ``POST /v1/runs``; this service
then drives it to a co-signed receipt and survives its own restart:

1. the job's blobs (image and inputs) are imported into the local blob store
   and pinned, so the transfer service can serve them;
2. *negotiating*: find candidates (or the peers given), get quotes, conclude
   the co-signed agreement (:func:`node.negotiation.negotiate_best`); the
   chosen provider is granted FETCH of exactly the job's blobs;
3. *watching*: a ``JobWatch`` stream to the provider brings phases, transfer
   progress and log lines, and finally the provider's signed Result; a broken
   stream is re-opened until ``grace_s`` passes without contact, after which
   the attempt (and its agreement) is recorded as failed and the job is
   offered again elsewhere if ``retries`` allow;
4. *collecting*: the outputs and the log are fetched from the provider
   through the transfer service, verified against the Result's digests and
   written to ``<results_dir>/<run id>/``; the Receipt (accepted, or disputed
   with the problems found) is appended to the ledger and sent to the
   provider, which records it too.

At most one receipt with ``accepted = true`` exists per run: the run's state
is persisted (``runs.sqlite``) before the receipt leaves this node, and a run
in a final state never collects again.  A FAILED/CANCELLED result or a
disputed one is countersigned with ``accepted = false`` and, if retries
remain, the job goes to another provider.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.api.server import ApiError, StreamingResponse
from node.jobs.provider import FRAME_LIMIT, FRAME_LIMITS, PROTOCOL_ID, STEP_TIMEOUT, ProviderSide
from node.p2p import FramedStream, StreamClosed
from node.transfer.blobstore import BlobStoreError
from protocol.envelope import Signed, open_envelope, seal
from protocol.errors import ProtocolError
from protocol.jobflow import HEARTBEAT_S, JobCancel, JobPhase, JobUpdate, JobWatch
from protocol.jobspec import JobSpec
from protocol.result import Outcome, Receipt, Result, countersign, verify_result
from protocol.transfer import Direction

__all__ = ["JobRunner", "Run", "RunStore", "FINAL_STATES"]

log = logging.getLogger("cpn.jobflow")

#: Run states after which nothing happens any more.
FINAL_STATES = frozenset({"finished", "failed", "cancelled", "disputed"})
WATCH_READ_TIMEOUT = 3 * HEARTBEAT_S + 5  #: seconds of silence that break a watch stream
RECONNECT_DELAY = 0.5  #: seconds between watch reconnects
MAX_EVENTS = 50_000


class _AttemptFailed(Exception):
    pass


# --------------------------------------------------------------------------- persisted runs


@dataclass
class Run:
    """One submitted job from the submitter's side, over all its attempts."""

    id: str
    state: str  #: negotiating, agreed, transferring, running, collecting, + FINAL_STATES
    job_hex: str  #: the signed JobSpec envelope
    blobs: list[str]
    results_dir: str
    retries: int  #: further attempts allowed after a failed one
    grace_s: float
    providers: int
    peers: list[str]
    find_timeout: float
    created_at: int
    detail: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    result_hex: str = ""
    receipt_hex: str = ""
    output_dir: str = ""
    problems: list[str] = field(default_factory=list)
    find_summary: str = ""  #: what the last find said (why nobody matched)
    settled: bool = False  #: the provider confirmed it recorded our last receipt

    @property
    def current(self) -> dict[str, Any] | None:
        a = self.attempts[-1] if self.attempts else None
        return a if a is not None and a["state"] == "active" else None

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("job_hex", "result_hex", "receipt_hex")}
        if self.result_hex:
            r = open_envelope(bytes.fromhex(self.result_hex), expected=Result).message
            out["result"] = {
                "outcome": r.outcome.value, "exit_code": r.exit_code, "detail": r.detail,
                "provider": r.provider, "wall_ms": r.metering.wall_ms, "cpu_ms": r.metering.cpu_ms,
                "peak_memory_bytes": r.metering.peak_memory_bytes,
                "outputs": [{"path": o.path, "digest": o.digest, "size": o.size} for o in r.outputs],
            }
        if self.receipt_hex:
            raw = bytes.fromhex(self.receipt_hex)
            rc = open_envelope(raw, expected=Receipt)
            out["receipt"] = {"digest": rc.digest.hex(), "accepted": rc.message.accepted,
                              "detail": rc.message.detail, "result_digest": rc.message.result_digest.hex(),
                              "countersigned_by": rc.signer}
        return out


class RunStore:
    """``runs.sqlite`` in the data dir: one row per run, the run as JSON (WAL)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, state TEXT NOT NULL,"
            " created_at INTEGER NOT NULL, data TEXT NOT NULL)"
        )

    def close(self) -> None:
        self._db.close()

    def save(self, run: Run) -> None:
        self._db.execute(
            "INSERT INTO runs (id, state, created_at, data) VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE"
            " SET state = excluded.state, data = excluded.data",
            (run.id, run.state, run.created_at, json.dumps(asdict(run))),
        )

    def all(self) -> list[Run]:
        rows = self._db.execute("SELECT data FROM runs ORDER BY created_at DESC, id")
        return [Run(**json.loads(d)) for (d,) in rows]


# --------------------------------------------------------------------------- the service


@dataclass(eq=False)
class _Live:
    """In-memory companions of a run: its event log (for --follow) and live log lines."""

    events: list[dict[str, Any]] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)
    done: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope | None = None


class JobRunner:
    """Daemon service: runs submitted jobs end to end, and serves agreed ones as a provider."""

    def __init__(self) -> None:
        self.node: Any = None
        self.runs: dict[str, Run] = {}
        self.live: dict[str, _Live] = {}
        self.provider: ProviderSide | None = None
        self.store: RunStore | None = None

    async def run(self, node: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        self.node = node
        node.jobrunner = self
        negotiation = next((s for s in node.services if type(s).__name__ == "NegotiationService"), None)
        if negotiation is None or getattr(node, "transfer", None) is None:
            log.warning("job runner idle: it needs the negotiation and transfer services")
            task_status.started()
            return
        self.negotiation = negotiation
        self.store = RunStore(Path(node.data_dir) / "runs.sqlite")
        self.provider = ProviderSide(node, negotiation)
        self.provider.start()
        node.transfer.add_authorizer(self._authorize)
        node.transfer.holders_of = self._holders_of
        node.p2p.set_stream_handler(PROTOCOL_ID, self._handle)
        self._routes(node.api)
        for r in reversed(self.store.all()):  # oldest first: self.runs keeps submission order
            self.runs[r.id] = r
            self.live[r.id] = live = _Live()
            if r.receipt_hex:  # the receipt was persisted; make sure the ledger has it
                self._record(bytes.fromhex(r.receipt_hex))
            if r.state in FINAL_STATES:
                live.done.set()
                if r.receipt_hex and not r.settled and r.attempts:  # deliver what a restart cut off
                    node.nursery.start_soon(self._send_receipt, r, r.attempts[-1], bytes.fromhex(r.receipt_hex))
            else:
                self._event(r, "resumed", state=r.state)
                node.nursery.start_soon(self._drive, r)
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self.store.close()

    # ---- stream handler (provider side requests)

    async def _handle(self, stream: FramedStream) -> None:
        try:
            with trio.fail_after(STEP_TIMEOUT):
                raw = await stream.receive_frame(FRAME_LIMIT)
            signed = open_envelope(raw, expected=(JobWatch, JobCancel, Receipt), signer=stream.remote_peer,
                                   limits=FRAME_LIMITS)
            assert self.provider is not None
            await self.provider.handle(stream, signed)
        except (StreamClosed, trio.TooSlowError):
            return
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(STEP_TIMEOUT):
                await stream.close()

    # ---- submitter: authorisation of our blobs

    def _authorize(self, peer: str, digest: str, direction: Direction) -> bool:
        if direction is not Direction.FETCH:
            return False
        for r in self.runs.values():
            cur = r.current
            if cur is not None and cur["provider"] == peer and digest in r.blobs:
                return True
        return False

    def _holders_of(self, digest: str) -> list[tuple[str, list[str]]]:
        """Providers that finished one of our jobs using ``digest`` (so they fetched
        it, and may still hold it), most recent first: named to the provider of a
        new job that needs the same blob (WhoHas), with a grant to fetch it there."""
        seen: dict[str, list[str]] = {}
        for r in reversed(list(self.runs.values())):
            if digest not in r.blobs:
                continue
            for a in reversed(r.attempts):
                if a["state"] == "done" and a["provider"] not in seen:
                    seen[a["provider"]] = list(a.get("addrs") or self.node.transfer.addrs.get(a["provider"], []))
        return list(seen.items())[:8]

    # ---- events

    def _event(self, run: Run, kind: str, **data: Any) -> None:
        live = self.live.setdefault(run.id, _Live())
        if len(live.events) < MAX_EVENTS:
            live.events.append({"event": kind, "run": run.id, "at": int(self.node.clock()), **data})
        live.changed.set()
        live.changed = trio.Event()

    def _set(self, run: Run, state: str, detail: str | None = None) -> None:
        run.state = state
        if detail is not None:
            run.detail = detail
        assert self.store is not None
        self.store.save(run)
        self._event(run, "state", state=state, detail=run.detail)
        if state in FINAL_STATES:
            self.node.transfer.store.unpin(f"run:{run.id}")  # the blobs may be collected now
            self.live[run.id].done.set()

    # ---- submit

    async def _import_blobs(self, spec: JobSpec, paths: Any) -> None:
        """Put every blob of ``spec`` in the blob store (from ``paths``: digest -> file),
        so the transfer service can serve them to the agreed provider."""
        if not isinstance(paths, dict):
            raise ApiError(400, "bad_request", "blob_paths must map digests to files")
        store = self.node.transfer.store
        for blob in spec.blobs():
            if store.has(blob.digest):
                continue
            src = paths.get(blob.digest)
            if not isinstance(src, str):
                raise ApiError(400, "missing_blob", f"{blob.digest} is neither stored nor in blob_paths")
            try:
                meta = await trio.to_thread.run_sync(
                    lambda s=src, c=blob.chunk_size: store.import_file(Path(s), chunk_size=c))
            except OSError as exc:
                raise ApiError(400, "missing_blob", f"{src}: {exc}") from None
            except BlobStoreError as exc:  # e.g. the blob store quota
                raise ApiError(507, "blob_store", str(exc)) from None
            if (meta.digest, meta.size, meta.chunk_root) != (blob.digest, blob.size, blob.chunk_root):
                raise ApiError(400, "blob_mismatch", f"{src} is not {blob.digest} (changed since the job was read?)")

    def _new_run(self, signed: Signed[JobSpec], body: dict[str, Any], **fields: Any) -> Run:
        spec = signed.message
        results_dir = body.get("results_dir") or str(Path(self.node.data_dir) / "results")
        try:
            run = Run(
                id=secrets.token_hex(16), state="negotiating", job_hex=signed.raw.hex(),
                blobs=[b.digest for b in spec.blobs()], results_dir=str(results_dir),
                retries=int(body.get("retries", 1)), grace_s=float(body.get("grace_s", 20.0)),
                providers=int(body.get("providers", 3)), peers=[str(p) for p in body.get("peers") or []],
                find_timeout=float(body.get("timeout", 5.0)), created_at=int(self.node.clock()), **fields,
            )
        except (TypeError, ValueError):
            raise ApiError(400, "bad_request", "retries, providers, grace_s and timeout are numbers") from None
        if not 0 <= run.retries <= 10 or not 1 <= run.providers <= 32 or run.grace_s <= 0:
            raise ApiError(400, "bad_request", "retries 0..10, providers 1..32, grace_s > 0")
        return run

    def _start(self, run: Run, spec: JobSpec, job_digest: bytes) -> None:
        for blob in spec.blobs():  # served to the provider; kept until the run ends
            self.node.transfer.store.pin(blob.digest, f"run:{run.id}")
        assert self.store is not None
        self.store.save(run)
        self.runs[run.id] = run
        self.live[run.id] = _Live()
        self._event(run, "submitted", job=spec.name, job_digest=job_digest.hex())
        self.node.nursery.start_soon(self._drive, run)

    async def submit(self, body: dict[str, Any]) -> Run:
        """Start a run: negotiate, then drive the agreement to a receipt (``POST /v1/runs``)."""
        try:
            spec = JobSpec.decode(bytes.fromhex(body["job_hex"]))
        except (KeyError, TypeError, ValueError):
            raise ApiError(400, "bad_request", "job_hex must be the hex of a canonical JobSpec") from None
        except ProtocolError as exc:
            raise ApiError(400, exc.reason, exc.detail) from None
        await self._import_blobs(spec, body.get("blob_paths") or {})
        signed = seal(spec, self.node.key)
        run = self._new_run(signed, body)
        self._start(run, spec, signed.digest)
        return run

    async def adopt(self, signed: Signed[JobSpec], outcome: dict[str, Any], body: dict[str, Any]) -> Run:
        """Drive an agreement concluded by plain ``cpn submit`` (negotiation's ``POST
        /v1/jobs``) like a run of our own, so the job runs and its result is collected
        without ``--follow``.  Retries (``body["retries"]``, default 0) negotiate anew."""
        spec = signed.message
        await self._import_blobs(spec, body.get("blob_paths") or {})
        attempt = {"agreement_id": outcome["agreement_id"], "provider": outcome["provider"], "addrs": [],
                   "price": outcome.get("price", 0), "state": "active", "detail": ""}
        run = self._new_run(signed, {"retries": 0, **body}, attempts=[attempt])
        run.state = "agreed"
        self._start(run, spec, signed.digest)
        return run

    # ---- driving one run

    async def _drive(self, run: Run) -> None:
        """Run ``run`` to a final state.  It is a task in the node's root nursery, so
        an unexpected error must end this run (recorded, logged with its traceback)
        and never the daemon with every other job in it."""
        try:
            await self._drive_steps(run)
        except Exception as exc:  # noqa: BLE001 - recorded as the run's failure, not swallowed
            log.exception("run %s failed unexpectedly", run.id)
            self._set(run, "failed", f"internal error: {type(exc).__name__}: {exc}")

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
                    result = await self._watch(run, cur)
                    await self._collect(run, cur, result)
                except _AttemptFailed as exc:
                    self._attempt_failed(run, cur, str(exc))
                if run.state in FINAL_STATES:
                    return
                if run.current is None and len(run.attempts) > run.retries:
                    self._set(run, "failed", f"gave up after {len(run.attempts)} attempt(s): {run.detail}")
                    return

    def _signed_job(self, run: Run) -> Signed[JobSpec]:
        return open_envelope(bytes.fromhex(run.job_hex), expected=JobSpec, signer=self.node.peer_id)

    async def _candidates(self, run: Run, job: JobSpec) -> list[tuple[str, Any, int]]:
        from node.api.jobs_routes import _finder

        failed = {a["provider"] for a in run.attempts}
        if run.peers:
            out = []
            for p in run.peers:
                pid = p.rsplit("/p2p/", 1)[-1]
                out.append((pid, [p.rsplit("/p2p/", 1)[0]] if "/p2p/" in p else None, 0))
        else:
            finder = _finder(self.node)
            if finder is None:
                return []
            found = await finder.find(job.resources, limit=run.providers + len(failed),
                                      within_s=run.find_timeout)
            run.find_summary = found.explanation.summary()
            self._event(run, "find", summary=run.find_summary, offers=len(found.offers))
            out = [(o.advert.peer_id, list(o.advert.addrs), o.fit.fit_pct) for o in found.offers]
        return [c for c in out if c[0] != self.node.peer_id and c[0] not in failed][: run.providers]

    async def _negotiate(self, run: Run) -> bool:
        from node.negotiate.service import negotiate_best

        self._set(run, "negotiating")
        signed = self._signed_job(run)
        candidates = await self._candidates(run, signed.message)
        if not candidates:
            why = [x for x in (run.find_summary, run.detail if run.attempts else "") if x]
            self._set(run, "failed", "no provider found" + (f" ({'; '.join(why)})" if why else ""))
            return False
        outcome = await negotiate_best(self.node.p2p, self.node.key, signed, candidates, clock=self.node.clock,
                                       store=self.negotiation.store)
        info = outcome.to_json()
        run.refusals = [p for p in info["providers"] if p["status"] != "quoted"]
        self._event(run, "quotes", providers=info["providers"])
        if outcome.agreement is None:
            refused = sum(p["status"] == "refused" for p in run.refusals)
            errors = len(run.refusals) - refused
            self._set(run, "failed", f"no provider agreed: {refused} refused, {errors} unreachable or failed"
                      + (f" ({run.detail})" if run.attempts else ""))
            return False
        t = outcome.agreement.terms
        addrs = next((c[1] for c in candidates if c[0] == t.provider), None)
        attempt = {"agreement_id": t.negotiation_id.hex(), "provider": t.provider, "addrs": addrs or [],
                   "price": t.price, "state": "active", "detail": ""}
        run.attempts.append(attempt)
        if addrs:
            self.node.transfer.addrs[t.provider] = list(addrs)
        self._set(run, "agreed")
        self._event(run, "agreement", agreement_id=attempt["agreement_id"], provider=t.provider, price=t.price,
                    max_run_s=t.max_run_s)
        return True

    def _attempt_failed(self, run: Run, cur: dict[str, Any], detail: str) -> None:
        cur["state"], cur["detail"] = "failed", detail
        self.negotiation.store.save(cur["agreement_id"], "submitter", peer=cur["provider"], state="failed",
                                    now=self.node.clock(), detail=detail)
        run.detail = detail
        self._set(run, run.state)
        self._event(run, "attempt_failed", agreement_id=cur["agreement_id"], provider=cur["provider"],
                    detail=detail, retries_left=max(0, run.retries + 1 - len(run.attempts)))
        log.warning("run %s: attempt on %s failed: %s", run.id, cur["provider"], detail)

    async def _watch(self, run: Run, cur: dict[str, Any]) -> Signed[Result]:
        """Follow the provider until it hands over its signed Result."""
        live = self.live[run.id]
        provider = cur["provider"]
        last_contact = trio.current_time()
        last_phase = None
        last_done = -1
        while True:
            try:
                with trio.fail_after(STEP_TIMEOUT):
                    stream = await self.node.p2p.open_stream(provider, PROTOCOL_ID, cur["addrs"] or None)
                try:
                    req = JobWatch(agreement_id=bytes.fromhex(cur["agreement_id"]), log_lines=len(live.lines))
                    with trio.fail_after(STEP_TIMEOUT):
                        await stream.send_frame(seal(req, self.node.key).raw)
                    while True:
                        with trio.fail_after(WATCH_READ_TIMEOUT):
                            raw = await stream.receive_frame(FRAME_LIMIT)
                        got = open_envelope(raw, expected=(JobUpdate, Result), signer=provider, limits=FRAME_LIMITS)
                        last_contact = trio.current_time()  # only a valid frame counts as contact
                        if isinstance(got.message, Result):
                            return got  # type: ignore[return-value]
                        u = got.message
                        assert isinstance(u, JobUpdate)
                        if u.agreement_id.hex() != cur["agreement_id"]:
                            raise ProtocolError("binding_mismatch", "update for another agreement")
                        if u.log_from <= len(live.lines):
                            new = list(u.lines[len(live.lines) - u.log_from :])
                            live.lines.extend(new)
                            for line in new:
                                self._event(run, "log", line=line)
                        if u.phase is not last_phase:
                            last_phase = u.phase
                            if u.phase in (JobPhase.TRANSFERRING, JobPhase.RUNNING):
                                self._set(run, u.phase.value)
                            self._event(run, "phase", phase=u.phase.value, detail=u.detail)
                        if u.transfer_total and u.transfer_done != last_done:
                            last_done = u.transfer_done
                            self._event(run, "progress", done=u.transfer_done, total=u.transfer_total)
                        if u.phase is JobPhase.FAILED and "unknown agreement" in u.detail:
                            raise _AttemptFailed(f"provider does not know the agreement: {u.detail}")
                finally:
                    # reset, not close: a half-close waits on a peer that may be dead or silent
                    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
                        await stream.reset()
            except (StreamClosed, trio.TooSlowError, ProtocolError) as exc:
                log.info("run %s: watch of %s broke: %s", run.id, provider, exc or type(exc).__name__)
                silent = trio.current_time() - last_contact
                if silent > run.grace_s:
                    what = "sent invalid frames" if isinstance(exc, ProtocolError) else "unreachable"
                    raise _AttemptFailed(f"provider {what} for {silent:.0f} s ({exc or type(exc).__name__})") from None
                await trio.sleep(RECONNECT_DELAY)

    async def _collect(self, run: Run, cur: dict[str, Any], result: Signed[Result]) -> None:
        """Verify the result, fetch and check the outputs, countersign, record, tell the provider."""
        from node.execute.service import save_outputs
        from node.transfer.service import TransferFailed

        signed_job = self._signed_job(run)
        try:
            verify_result(result.raw, provider=cur["provider"], submitter=self.node.peer_id,
                          agreement_id=bytes.fromhex(cur["agreement_id"]), job_digest=signed_job.digest)
        except ProtocolError as exc:
            raise _AttemptFailed(f"invalid result: {exc}") from None
        self._set(run, "collecting")
        r = result.message
        self._event(run, "result", outcome=r.outcome.value, exit_code=r.exit_code, detail=r.detail)
        problems: list[str] = []
        ran = r.outcome not in (Outcome.FAILED, Outcome.CANCELLED)
        t = self.node.transfer
        deadline = signed_job.message.timeouts.transfer_s
        for blob in (*r.outputs, r.log):
            try:
                with trio.fail_after(deadline):
                    await t.fetch(blob, [cur["provider"]])
            except (TransferFailed, trio.TooSlowError) as exc:
                problems.append(f"{blob.path or 'log'}: not delivered as {blob.digest}: {exc}")
        dest = Path(run.results_dir) / run.id
        partial = dest.with_name(f".{run.id}.partial")
        shutil.rmtree(partial, ignore_errors=True)
        problems += await trio.to_thread.run_sync(save_outputs, r, t.store.path_of, partial)
        accepted = ran and not problems
        if not ran:
            detail = f"run {r.outcome.value} on the provider: {r.detail}"[:512]
        else:
            detail = "; ".join(problems)[:512]
        receipt = countersign(result, self.node.key, now=int(self.node.clock()), accepted=accepted, detail=detail)
        # Persist before anything leaves this node: one accepted receipt per run, ever.
        run.result_hex, run.receipt_hex, run.problems = result.raw.hex(), receipt.raw.hex(), problems
        cur["state"] = "done" if accepted else "failed"
        cur["detail"] = detail
        if accepted:
            shutil.rmtree(dest, ignore_errors=True)
            partial.rename(dest)
            run.output_dir = str(dest)
            (dest / "receipt.cbor").write_bytes(receipt.raw)
            (dest / "result.cbor").write_bytes(result.raw)
        else:
            shutil.rmtree(partial, ignore_errors=True)
        retry = not accepted and run.retries + 1 > len(run.attempts)
        if accepted:
            final = "finished"
        elif retry:
            final = "negotiating"  # disputed or failed on the provider: report it, move on
        else:
            final = "disputed" if ran else "failed"
        # One save records the receipt and the state together, before the receipt
        # leaves this node or enters the ledger: a restart never countersigns again.
        run.state, run.detail = final, detail or f"{r.outcome.value}, exit code {r.exit_code}"
        run.settled = False
        self.store.save(run)  # type: ignore[union-attr]
        entry = self._record(receipt.raw)
        self.negotiation.store.save(cur["agreement_id"], "submitter", peer=cur["provider"],
                                    state="finished" if accepted else "failed", now=self.node.clock(),
                                    detail=detail or r.outcome.value)
        self._event(run, "receipt", accepted=accepted, detail=detail, ledger_seq=entry.seq,
                    receipt_digest=receipt.digest.hex(), output_dir=run.output_dir, problems=problems)
        await self._send_receipt(run, cur, receipt.raw)
        self._set(run, final)

    def _record(self, raw: bytes) -> Any:
        """Append a receipt to the ledger (idempotent: the same receipt is one entry)."""
        from node.ledger import Ledger

        with Ledger.in_data_dir(Path(self.node.data_dir)) as ledger:
            return ledger.append(raw, now=int(self.node.clock()))

    async def _send_receipt(self, run: Run, cur: dict[str, Any], raw: bytes) -> None:
        """Best effort, a few tries: the provider records the receipt in its ledger too."""
        for attempt in range(3):
            if attempt:
                await trio.sleep(1.0)
            try:
                with trio.fail_after(STEP_TIMEOUT):
                    stream = await self.node.p2p.open_stream(cur["provider"], PROTOCOL_ID, cur["addrs"] or None)
                    try:
                        await stream.send_frame(raw)
                        got = open_envelope(await stream.receive_frame(FRAME_LIMIT), expected=JobUpdate,
                                            signer=cur["provider"])
                    finally:
                        await stream.close()
                run.settled = True
                self.store.save(run)  # type: ignore[union-attr]
                self._event(run, "settled", provider=cur["provider"], detail=got.message.detail)
                return
            except (StreamClosed, trio.TooSlowError, ProtocolError) as exc:
                log.info("run %s: receipt not delivered yet: %s", run.id, exc)
        self._event(run, "unsettled", provider=cur["provider"], detail="receipt not delivered; it is in our ledger")

    async def cancel(self, run: Run) -> None:
        if run.state in FINAL_STATES:
            return
        cur = run.current
        live = self.live[run.id]
        if live.scope is not None:
            live.scope.cancel()
        if cur is not None:
            try:
                with trio.fail_after(STEP_TIMEOUT):
                    stream = await self.node.p2p.open_stream(cur["provider"], PROTOCOL_ID, cur["addrs"] or None)
                    try:
                        msg = JobCancel(agreement_id=bytes.fromhex(cur["agreement_id"]), detail="cancelled by the user")
                        await stream.send_frame(seal(msg, self.node.key).raw)
                        await stream.receive_frame(FRAME_LIMIT)
                    finally:
                        await stream.close()
            except (StreamClosed, trio.TooSlowError) as exc:
                log.info("run %s: cancel not delivered: %s", run.id, exc)
            cur["state"], cur["detail"] = "cancelled", "cancelled by the user"
            self.negotiation.store.save(cur["agreement_id"], "submitter", peer=cur["provider"], state="cancelled",
                                        now=self.node.clock(), detail="cancelled by the user")
        self._set(run, "cancelled", "cancelled by the user")

    # ---- API

    def _get(self, rid: str) -> Run:
        if rid in self.runs:
            return self.runs[rid]
        hits = [r for r in self.runs.values() if len(rid) >= 6 and r.id.startswith(rid)]
        if len(hits) != 1:
            raise ApiError(404, "not_found", f"no run {rid}" if not hits else f"{rid} is ambiguous")
        return hits[0]

    def _routes(self, api: Any) -> None:
        async def post_run(request: Any) -> Any:
            """Submit a job end to end (returns at once; follow its events)."""
            body = request.json()
            if not isinstance(body, dict):
                raise ApiError(400, "bad_request", "body must be a JSON object")
            return (await self.submit(body)).summary()

        async def list_runs(request: Any) -> Any:
            """Submitted jobs, newest first."""
            return {"runs": [r.summary() for r in reversed(self.runs.values())]}  # newest first

        async def show_run(request: Any) -> Any:
            """One submitted job: state, attempts, result, receipt."""
            return self._get(request.params["id"]).summary()

        async def cancel_run(request: Any) -> Any:
            """Cancel a submitted job (the provider stops its container)."""
            run = self._get(request.params["id"])
            await self.cancel(run)
            return run.summary()

        async def events(request: Any) -> Any:
            """The run's events as NDJSON; ``?follow=1`` waits until the run ends."""
            run = self._get(request.params["id"])
            follow = request.query.get("follow") in ("1", "true")
            only = request.query.get("kind")
            return StreamingResponse(self._events(run, follow, only))

        api.route("POST", "/v1/runs", post_run, summary="Submit a job end to end")
        api.route("GET", "/v1/runs", list_runs, summary="Submitted jobs")
        api.route("GET", "/v1/runs/{id}", show_run, summary="One submitted job")
        api.route("POST", "/v1/runs/{id}/cancel", cancel_run, summary="Cancel a submitted job")
        api.route("GET", "/v1/runs/{id}/events", events, streaming=True,
                  summary="A submitted job's events (NDJSON); ?follow=1 until it ends, ?kind=log for logs")

    async def _events(self, run: Run, follow: bool, only: str | None) -> AsyncIterator[dict[str, Any]]:
        live = self.live[run.id]
        i = 0
        if only == "log" and run.output_dir and not live.lines:  # after a restart: the verified log file
            path = Path(run.output_dir) / "log.txt"
            if path.is_file():
                for line in path.read_text(errors="replace").splitlines():
                    yield {"event": "log", "run": run.id, "line": line}
                return
        while True:
            changed = live.changed
            while i < len(live.events):
                ev = live.events[i]
                i += 1
                if only is None or ev["event"] == only:
                    yield ev
            if not follow or live.done.is_set():
                if only is None:
                    yield {"event": "end", "run": run.id, **run.summary()}
                return
            await changed.wait()
