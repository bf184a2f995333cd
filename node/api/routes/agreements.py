"""``/v1/agreements``: the negotiations and agreements of this node, both roles."""

from __future__ import annotations

from typing import Any

from node.api.params import query_int
from node.api.server import Api, ApiError, Request
from node.jobs.provider import ProviderJobs
from node.negotiate.agreements import OPEN_STATES, AgreementStore
from protocol.envelope import open_envelope
from protocol.negotiation import Agreement, verify_agreement

__all__ = ["register"]

ROLES = ("submitter", "provider")


def register(api: Api, agreements: AgreementStore, provider_jobs: ProviderJobs) -> None:
    async def list_agreements(request: Request) -> Any:
        """Negotiations and agreements of this node, newest first (``?role=`` filters)."""
        role = request.query.get("role") or None
        if role is not None and role not in ROLES:
            raise ApiError(400, "bad_request", f"role: must be submitter or provider (got {role!r})")
        limit = query_int(request, "limit", 100, 1, 10_000)
        return {"agreements": [r.to_json() for r in agreements.recent(role=role, limit=limit)]}

    async def show_agreement(request: Request) -> Any:
        """One negotiation by ID or unique prefix: state, co-signed terms, events."""
        rows = agreements.get(request.params["id"])
        if not rows:
            raise ApiError(404, "not_found", f"no agreement {request.params['id']}")
        ids = sorted({r.id for r in rows})
        if len(ids) > 1:
            raise ApiError(409, "ambiguous", f"{request.params['id']} matches {len(ids)}: {', '.join(ids[:10])}")
        out = []
        for row in rows:
            item = row.to_json()
            raw = (row.record or {}).get("agreement")
            if raw:
                agreement = open_envelope(raw, expected=Agreement).message
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
                {"n": e.n, "at": e.at, "kind": e.kind} for e in agreements.events(row.id, row.role)
            ]
            out.append(item)
        return {"agreements": out}

    async def cancel_agreement(request: Request) -> Any:
        """Provider side: end an open agreement (or quote) now.  The job stops, its
        capacity is released and the submitter gets a CANCELLED result."""
        rows = agreements.get(request.params["id"], "provider")
        ids = sorted({r.id for r in rows})
        if not ids:
            raise ApiError(404, "not_found", f"no agreement {request.params['id']} with this node as provider "
                           "(a job this node submitted is cancelled with POST /v1/jobs/{id}/cancel)")
        if len(ids) > 1:
            raise ApiError(409, "ambiguous", f"{request.params['id']} matches {len(ids)}: {', '.join(ids[:10])}")
        if rows[0].state not in OPEN_STATES or not await provider_jobs.cancel_by_operator(ids[0]):
            raise ApiError(409, "not_open", f"agreement {ids[0]} is {rows[0].state}: nothing to cancel")
        return agreements.get(ids[0], "provider")[0].to_json()

    api.route("GET", "/v1/agreements", list_agreements, summary="Negotiations and agreements, both roles")
    api.route("GET", "/v1/agreements/{id}", show_agreement, summary="One agreement: state, co-signed terms, events")
    api.route("POST", "/v1/agreements/{id}/cancel", cancel_agreement,
              summary="Provider side: cancel an open agreement (releases its capacity, tells the submitter)")
