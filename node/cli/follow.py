"""CLI side of end-to-end jobs (``cpn submit --follow``, ``cpn job logs|cancel``).

The commands themselves are registered by :mod:`node.cli.submit` and
:mod:`node.cli.jobs`; the code that talks to the job runner's API
(``/v1/jobs``, :mod:`node.jobs.runner`) and prints its events lives here.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
from pathlib import Path
from typing import Any

__all__ = ["job_body", "submit_follow", "print_event", "print_run", "cmd_logs", "cmd_cancel", "find_run",
           "list_runs"]


def _short(peer: str) -> str:
    return f"{peer[:8]}..{peer[-6:]}" if len(peer) > 16 else peer


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def job_body(args: Any, loaded: Any) -> dict[str, Any]:
    """The ``POST /v1/jobs`` body for a loaded job file and the submit flags."""
    body: dict[str, Any] = {
        "job_hex": loaded.spec.encode().hex(),
        "blob_paths": {d: str(p.resolve()) for d, p in loaded.blob_paths.items()},
        "results_dir": str(Path(args.results or "results").resolve()),
        "providers": args.providers,
        "timeout": args.timeout,
        "retries": args.retries,
    }
    if args.peer:
        body["peers"] = args.peer
    return body


def submit_follow(args: Any, loaded: Any) -> int:
    """``cpn submit JOB --follow``: hand the job to the daemon, follow it to the receipt."""
    from node.api.client import ApiClient

    client = ApiClient(args.data_dir, timeout=args.timeout + 120)
    run = client.post("/v1/jobs", job_body(args, loaded))
    if not args.json:
        print(f"job {run['id']} submitted ({loaded.spec.name}); following (Ctrl-C stops following, not the job)")
    final: dict[str, Any] = run
    follow = ApiClient(args.data_dir, timeout=3600)
    state: dict[str, Any] = {}
    try:
        for ev in follow.stream("GET", f"/v1/jobs/{run['id']}/events?follow=1"):
            if ev.get("event") == "end":
                final = ev
            elif not args.json:
                print_event(ev, state)
    except (OSError, http.client.HTTPException, ValueError) as exc:  # the daemon went away mid-stream
        from node.cli import CliError

        raise CliError(f"lost the daemon while following job {run['id']} ({exc or type(exc).__name__}); "
                       f"the job goes on when it is back: cpn job show {run['id']}") from None
    if args.json:
        print(json.dumps(final, indent=2))
    else:
        print_run(final)
    return 0 if final.get("state") == "finished" else 3


def print_event(ev: dict[str, Any], state: dict[str, Any]) -> None:
    kind = ev.get("event")
    if kind == "log":
        print(f"  | {ev['line']}")
    elif kind == "find":
        print(f"find: {ev['summary']}")
    elif kind == "quotes":
        for p in ev["providers"]:
            if p["status"] == "quoted":
                print(f"quote   {_short(p['provider'])}: {p['price'] / 1_000_000:.6f}")
            elif p["status"] == "refused":
                depth = f", queue depth {p['queue_depth']}" if p.get("queue_depth") is not None else ""
                print(f"refusal {_short(p['provider'])}: {p['reason']}{depth}: {p['detail']}")
            else:
                print(f"error   {_short(p['provider'])}: {p.get('detail', '')}")
    elif kind == "agreement":
        print(f"agreement {ev['agreement_id']} with {ev['provider']} (co-signed; price "
              f"{ev['price'] / 1_000_000:.6f}, max run {ev['max_run_s']} s)")
    elif kind == "phase":
        if ev["phase"] != state.get("phase"):
            state["phase"] = ev["phase"]
            print(f"{ev['phase']}" + (f": {ev['detail']}" if ev.get("detail") and ev["phase"] != "running" else ""))
    elif kind == "progress":
        quarter = ev["done"] * 4 // max(ev["total"], 1)  # a line per quarter, not per update
        if 0 < quarter < 4 and quarter > state.get("quarter", 0):
            state["quarter"] = quarter
            pct = ev["done"] * 100 // ev["total"]
            print(f"  image and inputs on the provider: {pct}% of {_size(ev['total'])} verified")
        elif ev["done"] == ev["total"] and not state.get("transferred"):
            state["transferred"] = True
            print(f"  image and inputs on the provider: {_size(ev['total'])} verified")
    elif kind == "result":
        print(f"result: {ev['outcome']}, exit code {ev['exit_code']}" + (f" ({ev['detail']})" if ev["detail"] else ""))
    elif kind == "attempt_failed":
        print(f"attempt on {_short(ev['provider'])} failed: {ev['detail']} "
              f"(agreement {ev['agreement_id'][:12]}.. marked failed; retries left: {ev['retries_left']})")
    elif kind == "receipt":
        if not ev["accepted"]:
            print(f"DISPUTED result (receipt records it): {ev['detail']}")
    elif kind == "resumed":
        print(f"resumed after a daemon restart (state {ev['state']})")


def print_run(run: dict[str, Any]) -> None:
    """The end of a run: where the outputs are and the co-signed receipt."""
    print(f"job {run['id']}: {run['state']}" + (f" ({run['detail']})" if run.get("detail") else ""))
    for r in run.get("refusals", []) if run["state"] == "failed" else []:
        print(f"  {r['provider']}: {r.get('reason')}: {r.get('detail')}")
    res = run.get("result")
    if res:
        print(f"  outcome {res['outcome']}, exit code {res['exit_code']}, wall {res['wall_ms']} ms, "
              f"cpu {res['cpu_ms']} ms, peak memory {_size(res['peak_memory_bytes'])}, provider {res['provider']}")
    if run.get("output_dir"):
        out = run["output_dir"]
        rel = os.path.relpath(out)
        print(f"  results in {rel if not rel.startswith('..') else out}/")
        for o in (res or {}).get("outputs", []):
            print(f"    {o['path']}  {_size(o['size'])}  {o['digest'][:19]}..  verified")
        print("    log.txt, result.cbor, receipt.cbor")
    rc = run.get("receipt")
    if rc:
        verdict = "accepted" if rc["accepted"] else f"DISPUTED: {rc['detail']}"
        print(f"  receipt {rc['digest']} ({verdict})")
        print(f"    countersigned by {rc['countersigned_by']} over the provider's signed result "
              f"{rc['result_digest'][:16]}..; in both ledgers (cpn ledger verify)")


def find_run(client: Any, rid: str) -> dict[str, Any] | None:
    """The run with ID (or unique prefix) ``rid``, or None if the runner knows none."""
    from node.cli import CliError

    try:
        return client.get(f"/v1/jobs/{rid}")  # type: ignore[no-any-return]
    except CliError as exc:
        if getattr(exc, "status", None) in (404, 405):
            return None
        raise


def list_runs(client: Any) -> list[dict[str, Any]]:
    from node.cli import CliError

    try:
        return client.get("/v1/jobs")["jobs"]  # type: ignore[no-any-return]
    except CliError as exc:
        if getattr(exc, "status", None) == 404:
            return []
        raise


def cmd_logs(args: Any) -> int:
    """``cpn job logs ID [--follow]``: the job's log lines (live while it runs)."""
    from node.api.client import ApiClient
    from node.cli import CliError

    client = ApiClient(args.data_dir, timeout=3600 if args.follow else 30)
    if find_run(client, args.id) is None:
        raise CliError(f"no submitted job {args.id}")
    follow = "1" if args.follow else "0"
    try:
        for ev in client.stream("GET", f"/v1/jobs/{args.id}/events?kind=log&follow={follow}"):
            if args.json:
                print(json.dumps(ev))
            elif "line" in ev:
                print(ev["line"])
            sys.stdout.flush()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise CliError(f"lost the daemon while reading the log ({exc or type(exc).__name__})") from None
    return 0


def cmd_cancel(args: Any) -> int:
    """``cpn job cancel ID``: stop a submitted job (its provider removes the container)."""
    from node.api.client import ApiClient

    run = ApiClient(args.data_dir, timeout=60).post(f"/v1/jobs/{args.id}/cancel")
    if args.json:
        print(json.dumps(run, indent=2))
    else:
        print(f"job {run['id']}: {run['state']}" + (f" ({run['detail']})" if run.get("detail") else ""))
    return 0
