"""Local API routes of negotiation: submit a job, list jobs, show one job.

``POST /v1/jobs`` takes the *unsigned* job spec (canonical CBOR, hex) because
only the daemon holds the node key: it signs the spec, finds candidates
(discovery's finder) or uses the ``peers`` given, negotiates with up to
``providers`` of them in parallel and answers with the outcome, including
every refusing provider's reason.
"""

from __future__ import annotations

from typing import Any

from node.api.server import ApiError
from protocol.envelope import open_envelope, seal
from protocol.errors import ProtocolError
from protocol.jobspec import JobSpec
from protocol.negotiation import Agreement, verify_agreement

MAX_PROVIDERS = 32


def _finder(node: Any) -> Any:
    for svc in node.services:
        finder = getattr(svc, "finder", None)
        if finder is not None:
            return finder
    return None


def register_routes(node: Any, service: Any) -> None:
    from node.negotiate.service import negotiate_best

    async def submit(request: Any) -> Any:
        """Sign a job spec, ask up to K providers for quotes, conclude the best agreement."""
        body = request.json() or {}
        if not isinstance(body, dict) or not isinstance(body.get("job_hex"), str):
            raise ApiError(400, "bad_request", "body must be {job_hex, providers?, peers?, timeout?}")
        try:
            job = JobSpec.decode(bytes.fromhex(body["job_hex"]))
        except ValueError:
            raise ApiError(400, "bad_request", "job_hex is not hex") from None
        except ProtocolError as exc:
            raise ApiError(400, exc.reason, exc.detail) from None
        k = body.get("providers", 3)
        if not isinstance(k, int) or not 1 <= k <= MAX_PROVIDERS:
            raise ApiError(400, "bad_request", f"providers must be 1..{MAX_PROVIDERS}")
        signed = seal(job, node.key)
        found: dict[str, Any] = {}
        peers = body.get("peers")
        if peers:  # explicit "peer_id" or full multiaddrs ending in /p2p/<id>
            candidates = []
            for p in peers:
                if not isinstance(p, str):
                    raise ApiError(400, "bad_request", "peers must be strings")
                pid = p.rsplit("/p2p/", 1)[-1]
                candidates.append((pid, [p.rsplit("/p2p/", 1)[0]] if "/p2p/" in p else None, 0))
        else:
            finder = _finder(node)
            if finder is None:
                raise ApiError(503, "no_discovery", "discovery is not running; pass peers explicitly")
            result = await finder.find(job.resources, limit=k, within_s=float(body.get("timeout", 5.0)))
            found = {"summary": result.explanation.summary()}
            candidates = [(o.advert.peer_id, list(o.advert.addrs), o.fit.fit_pct) for o in result.offers]
        candidates = [c for c in candidates if c[0] != node.peer_id][:k]
        if not candidates:
            return {"agreed": False, "providers": [], "job_digest": signed.digest.hex(), "find": found}
        outcome = await negotiate_best(node.p2p, node.key, signed, candidates, clock=node.clock,
                                       store=service.store)
        out = outcome.to_json()
        blob_paths = body.get("blob_paths")
        if outcome.agreement is not None and isinstance(blob_paths, dict):
            # where the submitter's blobs live, for the transfer service to serve them
            service.store.save(out["agreement_id"], "submitter", peer=out["provider"], state="agreed",
                               now=node.clock(), extra={"blob_paths": blob_paths})
            runner = getattr(node, "jobrunner", None)
            if runner is not None:  # the end-to-end flow takes the agreement from here (node/jobrunner.py)
                try:
                    out["job_id"] = (await runner.adopt(signed, out, body)).id
                except ApiError as exc:
                    out["job_error"] = f"{exc.reason}: {exc.detail}"
        out.update(job_digest=signed.digest.hex(), find=found)
        return out

    async def list_jobs(request: Any) -> Any:
        """Negotiations and jobs of this node, newest first (``?role=`` filters)."""
        role = request.query.get("role") or None
        limit = int(request.query.get("limit") or 100)
        return {"jobs": [r.to_json() for r in service.store.list(role=role, limit=limit)]}

    async def show_job(request: Any) -> Any:
        """One job by ID (or unique prefix): state, agreement terms, events."""
        rows = service.store.get(request.params["id"])
        if not rows:
            raise ApiError(404, "not_found", f"no job {request.params['id']}")
        out = []
        for row in rows:
            item = row.to_json()
            raw = (row.record or {}).get("agreement")
            if raw:
                agreement = open_envelope(raw, expected=Agreement).message
                verify_agreement(agreement)
                t = agreement.terms
                item["agreement"] = {
                    "terms_digest": verify_agreement(agreement).hex(),
                    "price": t.price,
                    "estimated_start": t.estimated_start,
                    "max_run_s": t.max_run_s,
                    "job_digest": t.job_digest.hex(),
                    "submitter": t.submitter,
                    "provider": t.provider,
                    "cosigned": True,
                }
            item["events"] = [
                {"n": e.n, "at": e.at, "kind": e.kind} for e in service.store.events(row.id, row.role)
            ]
            out.append(item)
        return {"jobs": out}

    node.api.route("POST", "/v1/jobs", submit, summary="Submit a job: quotes from up to K providers, best agreement")
    node.api.route("GET", "/v1/jobs", list_jobs, summary="Negotiations and jobs of this node")
    node.api.route("GET", "/v1/jobs/{id}", show_job, summary="One job: state, co-signed terms, events")
