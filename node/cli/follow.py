"""CLI side of end-to-end jobs (``cpn submit --follow``, ``cpn job logs|cancel``).

The commands themselves are registered by :mod:`node.cli.submit` and
:mod:`node.cli.jobs`; the code that talks to the job runner's API
(``/v1/jobs``, :mod:`node.jobs.runner`) and prints its events lives here, and
so does :func:`run_exit_code`, the one place a run's end becomes an exit
status (docs/submitters.md, "Exit status").
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.errors import ExitCode

__all__ = ["job_body", "submit_follow", "print_event", "print_run", "cmd_logs", "cmd_cancel", "find_run",
           "list_runs", "run_exit_code", "negotiation_exit_code", "describe_result", "one_job"]


def _short(peer: str) -> str:
    return f"{peer[:8]}..{peer[-6:]}" if len(peer) > 16 else peer


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


# --------------------------------------------------------------------------- exit status


def negotiation_exit_code(run: dict[str, Any]) -> ExitCode:
    """A run that has no agreement (yet): nobody found (3) or nobody agreed (4)."""
    if run["attempts"]:
        return ExitCode.OK
    return ExitCode.REFUSED if run.get("quotes") else ExitCode.NO_PROVIDER


def run_exit_code(run: dict[str, Any]) -> ExitCode:
    """The exit status for a run summary (``GET /v1/jobs/{id}``), decided on
    ``state``, ``result.outcome`` and ``result.exit_code``: 0 only when the
    container exited 0 and its outputs verified."""
    state, res = run["state"], run.get("result")
    if state == "finished":
        if res is None or (res["outcome"] == "exited" and res["exit_code"] == 0):
            return ExitCode.OK
        return ExitCode.CANCELLED if res["outcome"] == "cancelled" else ExitCode.JOB_FAILED
    if state == "cancelled":
        return ExitCode.CANCELLED
    if state == "disputed" or run.get("problems"):  # outputs missing or not matching their digests
        return ExitCode.TRANSFER_FAILED
    if state == "failed":
        if not run["attempts"]:
            return negotiation_exit_code(run)
        if res is not None and res["outcome"] == "failed" and res["detail"].startswith("transfer of"):
            return ExitCode.TRANSFER_FAILED  # the provider could not fetch the image or inputs
        return ExitCode.JOB_FAILED
    return ExitCode.ERROR  # not over: following stopped early


def describe_result(outcome: str, exit_code: int | None, detail: str = "") -> str:
    """How a run ended, in words: never ``exit code None``."""
    text = {
        "exited": f"exited with exit code {exit_code}",
        "oom": "killed: out of memory (raise resources.memory_mib)",
        "timeout": "killed: ran out of time (raise timeouts.run_s)",
        "cancelled": "cancelled",
        "failed": "failed on the provider",
    }.get(outcome, outcome)
    return text + (f" ({detail})" if detail else "")


# --------------------------------------------------------------------------- submit --follow


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


def submit_follow(args: Any, loaded: Any, run: dict[str, Any]) -> int:
    """``cpn submit JOB --follow``: follow the submitted ``run`` to its receipt."""
    from node.api.client import ApiClient
    from node.cli import CliError

    if not args.json:
        print(f"job {run['id']} submitted ({loaded.spec.name}); following (Ctrl-C stops following, not the job)")
    final: dict[str, Any] = run
    follow = ApiClient(args.data_dir, timeout=3600)
    state: dict[str, Any] = {"total": sum(b.size for b in loaded.spec.blobs())}
    try:
        for ev in follow.stream("GET", f"/v1/jobs/{run['id']}/events?follow=1"):
            if ev.get("event") == "end":
                final = ev
            elif not args.json:
                print_event(ev, state)
    except (OSError, ValueError) as exc:  # the daemon went away mid-stream (BadResponse is a ValueError)
        if isinstance(exc, BrokenPipeError):  # our stdout, not the daemon
            raise
        raise CliError(f"lost the daemon while following job {run['id']} ({exc or type(exc).__name__}); "
                       f"the job goes on when it is back: cpn job show {run['id']}",
                       ExitCode.NO_DAEMON) from None
    if args.json:
        print(json.dumps(final, indent=2))
    else:
        print_run(final)
    return run_exit_code(final)


def _transferred(state: dict[str, Any]) -> None:
    """Say once that the image and inputs are on the provider."""
    if not state.get("transferred"):
        state["transferred"] = True
        total = state.get("total")
        print("  image and inputs on the provider: " + (f"{_size(total)} verified" if total else "verified"))


def _on_quotes(ev: dict[str, Any], state: dict[str, Any]) -> None:
    from node.cli.units import price

    for p in ev["providers"]:
        if p["status"] == "quoted":
            print(f"quote   {_short(p['provider'])}: {price(p['price'])}")
        elif p["status"] == "refused":
            depth = f", queue depth {p['queue_depth']}" if p.get("queue_depth") is not None else ""
            print(f"refusal {_short(p['provider'])}: {p['reason']}{depth}: {p['detail']}{_hint(p)}")
        else:
            print(f"error   {_short(p['provider'])}: {p.get('detail', '')}")


def _hint(p: dict[str, Any]) -> str:
    if p.get("reason") == "price_too_low":
        return " (prices are in micro-units: raise max_price in the job file)"
    return ""


def _on_agreement(ev: dict[str, Any], state: dict[str, Any]) -> None:
    from node.cli.units import price

    for key in ("phase", "quarter", "transferred"):  # a new attempt starts from the beginning
        state.pop(key, None)
    print(f"agreement {ev['agreement_id']} with {ev['provider']}: co-signed, price "
          f"{price(ev['price'])}, max run {ev['max_run_s']} s")


def _on_phase(ev: dict[str, Any], state: dict[str, Any]) -> None:
    phase = ev["phase"]
    if phase == state.get("phase"):
        return
    state["phase"] = phase
    if phase in ("running", "finished"):
        _transferred(state)  # running implies every blob was verified: say so first, not after
    if phase == "finished":
        return  # the result line says how it ended
    print(phase + (f": {ev['detail']}" if ev.get("detail") and phase != "running" else ""))


def _on_progress(ev: dict[str, Any], state: dict[str, Any]) -> None:
    if state.get("transferred"):
        return
    if ev["done"] >= ev["total"]:
        state["total"] = ev["total"]
        _transferred(state)
        return
    quarter = ev["done"] * 4 // max(ev["total"], 1)  # a line per quarter, not per update
    if 0 < quarter > state.get("quarter", 0):
        state["quarter"] = quarter
        print(f"  image and inputs on the provider: {ev['done'] * 100 // ev['total']}% of "
              f"{_size(ev['total'])} verified")


def _on_result(ev: dict[str, Any], state: dict[str, Any]) -> None:
    print("result: " + describe_result(ev["outcome"], ev["exit_code"], ev.get("detail") or ""))


def _on_attempt_failed(ev: dict[str, Any], state: dict[str, Any]) -> None:
    for key in ("phase", "quarter", "transferred"):
        state.pop(key, None)
    print(f"attempt on {_short(ev['provider'])} failed: {ev['detail']} "
          f"(agreement {ev['agreement_id'][:12]}.. marked failed; retries left: {ev['retries_left']})")


_PRINTERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], None]] = {
    "log": lambda ev, state: print(f"  | {ev['line']}"),
    "find": lambda ev, state: print(f"find: {ev['summary']}"),
    "quotes": _on_quotes,
    "agreement": _on_agreement,
    "phase": _on_phase,
    "progress": _on_progress,
    "result": _on_result,
    "attempt_failed": _on_attempt_failed,
    "receipt": lambda ev, state: None if ev["accepted"] else print(
        f"DISPUTED result (receipt records it): {ev['detail']}"),
    "resumed": lambda ev, state: print(f"resumed after a daemon restart (state {ev['state']})"),
}


def print_event(ev: dict[str, Any], state: dict[str, Any]) -> None:
    """One line (or none) for one job event; ``state`` carries what was said already."""
    printer = _PRINTERS.get(str(ev.get("event")))
    if printer is not None:
        printer(ev, state)


def print_run(run: dict[str, Any]) -> None:
    """The end of a run: how it ended, where the outputs are and the co-signed receipt."""
    res = run.get("result")
    ended = f" ({describe_result(res['outcome'], res['exit_code'])})" if res and run["state"] == "finished" else (
        f" ({run['detail']})" if run.get("detail") else "")
    print(f"job {run['id']}: {run['state']}{ended}")
    for r in run.get("refusals", []) if run["state"] == "failed" else []:
        print(f"  {r['provider']}: {r.get('reason')}: {r.get('detail')}{_hint(r)}")
    if res:
        print(f"  outcome {describe_result(res['outcome'], res['exit_code'], res.get('detail') or '')}, "
              f"wall {res['wall_ms']} ms, cpu {res['cpu_ms']} ms, peak memory {_size(res['peak_memory_bytes'])}, "
              f"provider {res['provider']}")
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


# --------------------------------------------------------------------------- job IDs


def one_job(exc: Any, what: str = "job") -> Any:
    """A daemon's 409 ``ambiguous`` answer as an error listing the matches, one per line."""
    from node.cli import CliError
    from node.errors import ApiAnswerError

    if not isinstance(exc, ApiAnswerError) or exc.reason != "ambiguous":
        return exc
    prefix, _, rest = exc.detail.partition(" matches ")
    count, _, ids = rest.partition(": ")
    listed = "\n".join(f"  {i.strip()}" for i in ids.split(",") if i.strip())
    n = count.split()[0] if count else "several"
    return CliError(f"{what} ID prefix {prefix!r} is ambiguous: it matches {n} {what}s; give more of the ID:\n"
                    f"{listed}", ExitCode.BAD_INPUT)


def find_run(client: Any, rid: str) -> dict[str, Any] | None:
    """The run with ID (or unique prefix) ``rid``, or None if the runner knows none.
    An ambiguous prefix is an error listing the matching jobs."""
    from node.errors import ApiAnswerError

    try:
        return client.get(f"/v1/jobs/{rid}")  # type: ignore[no-any-return]
    except ApiAnswerError as exc:
        if exc.status in (404, 405):
            return None
        raise one_job(exc) from None


def list_runs(client: Any) -> list[dict[str, Any]]:
    from node.errors import ApiAnswerError

    try:
        return client.get("/v1/jobs")["jobs"]  # type: ignore[no-any-return]
    except ApiAnswerError as exc:
        if exc.status == 404:
            return []
        raise


def cmd_logs(args: Any) -> int:
    """``cpn job logs ID [--follow]``: the job's log lines (live while it runs)."""
    from node.api.client import ApiClient
    from node.cli import CliError

    client = ApiClient(args.data_dir, timeout=3600 if args.follow else 30)
    run = find_run(client, args.id)
    if run is None:
        raise CliError(f"no submitted job {args.id} on this node (cpn jobs lists them)")
    follow = "1" if args.follow else "0"
    try:
        for ev in client.stream("GET", f"/v1/jobs/{run['id']}/events?kind=log&follow={follow}"):
            if args.json:
                print(json.dumps(ev))
            elif "line" in ev:
                print(ev["line"])
            sys.stdout.flush()
    except (OSError, ValueError) as exc:
        if isinstance(exc, BrokenPipeError):  # our stdout, not the daemon
            raise
        raise CliError(f"lost the daemon while reading the log ({exc or type(exc).__name__})",
                       ExitCode.NO_DAEMON) from None
    return 0


def cmd_cancel(args: Any) -> int:
    """``cpn job cancel ID``: stop a job this node submitted (its provider removes the
    container), or, on a provider, an agreement it serves (the operator's cancel:
    the capacity is released and the submitter is told)."""
    from node.api.client import ApiClient
    from node.errors import ApiAnswerError

    client = ApiClient(args.data_dir, timeout=60)
    try:
        run = client.post(f"/v1/jobs/{args.id}/cancel")
    except ApiAnswerError as exc:
        if exc.status != 404:
            raise one_job(exc) from None
        return _cancel_agreement(client, args)
    if args.json:
        print(json.dumps(run, indent=2))
    else:
        print(f"job {run['id']}: {run['state']}" + (f" ({run['detail']})" if run.get("detail") else ""))
    return 0


def _cancel_agreement(client: Any, args: Any) -> int:
    """The provider side of ``cpn job cancel``: ``POST /v1/agreements/{id}/cancel``."""
    from node.cli import CliError
    from node.errors import ApiAnswerError

    try:
        answer = client.post(f"/v1/agreements/{args.id}/cancel")
    except ApiAnswerError as exc:
        if exc.status == 404:
            raise CliError(f"no job or agreement {args.id} on this node (cpn jobs lists them)",
                           ExitCode.BAD_INPUT) from None
        raise one_job(exc, "agreement") from None
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print(f"agreement {answer.get('id', args.id)}: cancelled on this provider"
              + (f" ({answer['detail']})" if answer.get("detail") else ""))
    return 0


def print_timeline(run: dict[str, Any]) -> None:
    """The run's phases, one line each: when it started, how long it took."""
    phases = run.get("phases") or []
    if not phases:
        return
    t0 = phases[0]["started_at"]
    print("  timeline:")
    for span in phases:
        end = span.get("ended_at")
        took = f"{end - span['started_at']:8.3f} s" if end is not None else "   (going on)"
        print(f"    +{span['started_at'] - t0:8.3f} s  {span['phase']:<12} {took}"
              + (f"  attempt {span['attempt'] + 1}" if span.get("attempt") else ""))
