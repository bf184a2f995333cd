"""``/v1/jobs``: submit a job end to end, list, show, follow and cancel jobs.

There is one submission path: ``POST /v1/jobs`` hands the unsigned job spec
to the job runner (:mod:`node.jobs.runner`), which signs it, negotiates and
drives it to a co-signed receipt.  ``?wait=agreement`` answers once the
negotiation concluded (the quotes, refusals and the agreement, if any);
otherwise the answer comes at once and ``GET /v1/jobs/{id}/events?follow=1``
follows the job.
"""

from __future__ import annotations

from typing import Any

from node.addrs import AddrError, peer_and_addrs
from node.api.params import (
    body_object,
    get_float,
    get_int,
    get_str,
    get_str_list,
    known_fields,
    query_flag,
    query_int,
)
from node.api.server import Api, ApiError, Request, StreamingResponse
from node.jobs.runner import JobRunner, SubmitError, SubmitRequest
from node.jobs.runs import Run
from protocol.errors import ProtocolError
from protocol.jobspec import JobSpec

__all__ = ["register", "submit_request", "one_run"]

_SUBMIT_FIELDS = {"job_hex", "blob_paths", "results_dir", "providers", "peers", "timeout", "retries", "grace_s"}
MAX_PROVIDERS = 32


def submit_request(body: dict[str, Any]) -> SubmitRequest:
    """Check a submission body field by field (400 naming the field)."""
    known_fields(body, _SUBMIT_FIELDS)
    job_hex = body.get("job_hex")
    if not isinstance(job_hex, str):
        raise ApiError(400, "bad_request", "job_hex: must be the hex of a canonical JobSpec")
    try:
        job = JobSpec.decode(bytes.fromhex(job_hex))
    except ValueError:
        raise ApiError(400, "bad_request", "job_hex: is not hex") from None
    except ProtocolError as exc:
        raise ApiError(400, exc.reason, f"job_hex: {exc.detail}") from None
    paths = body.get("blob_paths") or {}
    if not isinstance(paths, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) <= 4096 for k, v in paths.items()
    ):
        raise ApiError(400, "bad_request", "blob_paths: must map blob digests to file paths")
    results_dir = get_str(body, "results_dir")
    if not results_dir:
        raise ApiError(400, "bad_request", "results_dir: required (an absolute path)")
    return SubmitRequest(
        job=job,
        blob_paths=dict(paths),
        results_dir=results_dir,
        providers=get_int(body, "providers", 3, 1, MAX_PROVIDERS),
        peers=tuple(_peers(get_str_list(body, "peers", max_items=MAX_PROVIDERS))),
        timeout=get_float(body, "timeout", 5.0, 0.1, 300.0),
        retries=get_int(body, "retries", 1, 0, 10),
        grace_s=get_float(body, "grace_s", 20.0, 0.1, 86400.0),
    )


def _peers(peers: list[str]) -> list[str]:
    for p in peers:
        try:
            peer_and_addrs(p)
        except AddrError as exc:
            raise ApiError(400, "bad_request", f"peers: {exc}") from None
    return peers


def one_run(runner: JobRunner, rid: str) -> Run:
    """The run with ID ``rid`` or a unique prefix of it (404, or 409 listing matches)."""
    hits = runner.find(rid)
    if not hits:
        raise ApiError(404, "not_found", f"no job {rid}")
    if len(hits) > 1:
        shown = ", ".join(r.id for r in hits[:10])
        raise ApiError(409, "ambiguous", f"{rid} matches {len(hits)} jobs: {shown}")
    return hits[0]


def register(api: Api, runner: JobRunner) -> None:
    async def post_job(request: Request) -> Any:
        """Submit a job end to end; ``?wait=agreement`` answers once negotiated."""
        req = submit_request(body_object(request))
        wait = request.query.get("wait", "")
        if wait not in ("", "agreement"):
            raise ApiError(400, "bad_request", f"wait: must be 'agreement' (got {wait!r})")
        try:
            run = await runner.submit(req)
        except SubmitError as exc:
            raise ApiError(400, exc.reason, exc.detail) from None
        if wait:
            await runner.wait_negotiated(run)
        return run.summary()

    async def list_jobs(request: Request) -> Any:
        """Jobs this node submitted, newest first."""
        limit = query_int(request, "limit", 100, 1, 10_000)
        runs = list(reversed(runner.runs.values()))[:limit]
        return {"jobs": [r.summary() for r in runs]}

    async def show_job(request: Request) -> Any:
        """One submitted job by ID or unique prefix: state, attempts, result, receipt."""
        return one_run(runner, request.params["id"]).summary()

    async def cancel_job(request: Request) -> Any:
        """Cancel a submitted job (its provider stops the container)."""
        run = one_run(runner, request.params["id"])
        await runner.cancel(run)
        return run.summary()

    async def events(request: Request) -> Any:
        """The job's events as NDJSON; ``?follow=1`` until it ends, ``?kind=log`` for log lines."""
        run = one_run(runner, request.params["id"])
        kind = request.query.get("kind") or None
        if kind is not None and (len(kind) > 32 or not kind.replace("_", "").isalpha()):
            raise ApiError(400, "bad_request", f"kind: not an event kind (got {kind!r})")
        return StreamingResponse(runner.events(run, query_flag(request, "follow"), kind))

    api.route("POST", "/v1/jobs", post_job, summary="Submit a job end to end")
    api.route("GET", "/v1/jobs", list_jobs, summary="Jobs this node submitted")
    api.route("GET", "/v1/jobs/{id}", show_job, summary="One submitted job")
    api.route("POST", "/v1/jobs/{id}/cancel", cancel_job, summary="Cancel a submitted job")
    api.route("GET", "/v1/jobs/{id}/events", events, streaming=True,
              summary="A submitted job's events (NDJSON); ?follow=1 until it ends, ?kind=log for logs")
