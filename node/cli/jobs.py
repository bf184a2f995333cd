"""``cpn jobs`` and ``cpn job show ID``: the negotiations and jobs this node knows.

A job or agreement ID may be shortened to any unique prefix; an ambiguous one
is an error that lists the IDs it matches (exit status 2)."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from node.cli import int_range

#: Why a negotiation ended as it did, when its row carries no detail of its own.
WHY = {
    ("submitter", "cancelled"): "not chosen: another provider's quote won",
    ("provider", "cancelled"): "the submitter chose another provider's quote",
    ("submitter", "refused"): "the provider refused",
    ("provider", "refused"): "refused by this node's policy or capacity",
    ("provider", "expired"): "the quote lapsed before the submitter accepted it",
    ("submitter", "expired"): "the quote lapsed before it was accepted",
}


def register(sub: Any) -> None:
    p = sub.add_parser("jobs", help="list this node's jobs and negotiations")
    p.add_argument("--role", choices=["submitter", "provider"], help="only this side")
    p.add_argument("--limit", type=int_range(1, 10_000), default=50, metavar="N")
    p.set_defaults(func=cmd_jobs)

    job = sub.add_parser("job", help="one job: show, logs, cancel")
    jsub = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    show = jsub.add_parser("show", help="state, co-signed terms and events of one job")
    show.add_argument("id", help="job or agreement ID, or any unique prefix of one")
    show.set_defaults(func=cmd_show)
    logs = jsub.add_parser("logs", help="the log of a submitted job (live with --follow)")
    logs.add_argument("id", help="job ID (or a unique prefix)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.set_defaults(func=_logs)
    cancel = jsub.add_parser("cancel", help="cancel a submitted job (its container is removed)")
    cancel.add_argument("id", help="job ID (or a unique prefix)")
    cancel.set_defaults(func=_cancel)


def _logs(args: argparse.Namespace) -> int:
    from node.cli.follow import cmd_logs  # imported when used: every command builds this parser

    return cmd_logs(args)


def _cancel(args: argparse.Namespace) -> int:
    from node.cli.follow import cmd_cancel

    return cmd_cancel(args)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def why(row: dict[str, Any]) -> str:
    """The WHY column of a negotiation: its own detail, else what its state means."""
    return str(row.get("detail") or WHY.get((row["role"], row["state"]), ""))


def _outcome(run: dict[str, Any]) -> str:
    res = run.get("result")
    if not res:
        return "-"
    return f"exit {res['exit_code']}" if res["outcome"] == "exited" else res["outcome"]


def cmd_jobs(args: argparse.Namespace) -> int:
    from node.api.client import ApiClient
    from node.cli.follow import list_runs

    path = f"/v1/agreements?limit={int(args.limit)}" + (f"&role={args.role}" if args.role else "")
    client = ApiClient(args.data_dir)
    result = client.get(path)
    runs = list_runs(client) if args.role != "provider" else []
    if args.json:
        print(json.dumps({"jobs": runs, "agreements": result["agreements"]}, indent=2))
        return 0
    if runs:  # jobs submitted end to end (cpn submit), newest first
        print("jobs submitted from this node:")
        table: list[tuple[str, ...]] = [("JOB", "STATE", "OUTCOME", "PROVIDER", "SUBMITTED")]
        for run in runs[: args.limit]:
            prov = run["attempts"][-1]["provider"] if run["attempts"] else "-"
            table.append((run["id"], run["state"], _outcome(run), prov, _when(run["created_at"])))
        _table(table)
        print()
    agreements = result["agreements"]
    if not agreements:
        print("no negotiations yet")
        return 0
    print("negotiations (one per provider asked for a quote; the chosen one is the job's agreement):")
    rows: list[tuple[str, ...]] = [("ID", "ROLE", "STATE", "PEER", "UPDATED", "WHY")]
    for j in agreements:
        rows.append((j["id"], j["role"], j["state"], j["peer"], _when(j["updated_at"]), why(j)))
    _table(rows)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from node.api.client import ApiClient
    from node.cli import CliError
    from node.cli.follow import find_run, one_job, print_run, print_timeline
    from node.errors import ApiAnswerError

    client = ApiClient(args.data_dir)
    run = find_run(client, args.id)  # a job submitted end to end, else a negotiation
    if run is not None:
        if args.json:
            print(json.dumps(run, indent=2))
        else:
            print_run(run)
            print_timeline(run)
            for a in run["attempts"]:
                print(f"  attempt: agreement {a['agreement_id']} with {a['provider']}: {a['state']}"
                      + (f" ({a['detail']})" if a["detail"] else ""))
        return 0
    try:
        result = client.get(f"/v1/agreements/{args.id}")
    except ApiAnswerError as exc:
        if exc.status == 404:
            raise CliError(f"no job or agreement {args.id} on this node (cpn jobs lists them)") from None
        raise one_job(exc, "agreement") from None
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    _print_agreements(result["agreements"])
    return 0


def _print_agreements(rows: list[dict[str, Any]]) -> None:
    from node.cli.units import price

    for j in rows:
        print(f"job {j['id']} ({j['role']})")
        reason = why(j)
        print(f"  state    {j['state']}" + (f"  ({reason})" if reason else ""))
        print(f"  peer     {j['peer']}")
        print(f"  created  {_when(j['created_at'])}   updated {_when(j['updated_at'])}")
        a = j.get("agreement")
        if a:
            print(f"  agreement co-signed, terms {a['terms_digest']}")
            print(f"    price {price(a['price'])}, max run {a['max_run_s']} s, job {a['job_digest']}")
        for e in j.get("events", []):
            print(f"  event #{e['n']} {e['kind']} at {_when(e['at'])}")
