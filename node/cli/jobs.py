"""``cpn jobs`` and ``cpn job show ID``: the negotiations and jobs this node knows."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("jobs", help="list this node's negotiations and jobs")
    p.add_argument("--role", choices=["submitter", "provider"], help="only this side")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--data-dir", type=Path, help="data dir of the daemon to ask")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_jobs)

    job = sub.add_parser("job", help="one job")
    jsub = job.add_subparsers(dest="job_command", required=True, metavar="ACTION")
    show = jsub.add_parser("show", help="state, co-signed terms and events of one job")
    show.add_argument("id", help="job (agreement) ID or a unique prefix of at least 8 characters")
    show.add_argument("--data-dir", type=Path, help="data dir of the daemon to ask")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=cmd_show)
    from node.cli.follow import cmd_cancel, cmd_logs

    logs = jsub.add_parser("logs", help="the log of a submitted job (live with --follow)")
    logs.add_argument("id", help="job ID (or a unique prefix)")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    logs.add_argument("--data-dir", type=Path, help="data dir of the daemon to ask")
    logs.add_argument("--json", action="store_true", help="print NDJSON events")
    logs.set_defaults(func=cmd_logs)
    cancel = jsub.add_parser("cancel", help="cancel a submitted job (its container is removed)")
    cancel.add_argument("id", help="job ID (or a unique prefix)")
    cancel.add_argument("--data-dir", type=Path, help="data dir of the daemon to ask")
    cancel.add_argument("--json", action="store_true", help="print JSON")
    cancel.set_defaults(func=cmd_cancel)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


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
    if runs:  # jobs submitted end to end (cpn submit --follow), newest first
        table = [("JOB", "STATE", "PROVIDER", "SUBMITTED")]
        for run in runs[: args.limit]:
            prov = run["attempts"][-1]["provider"] if run["attempts"] else "-"
            table.append((run["id"], run["state"], prov, _when(run["created_at"])))
        w = [max(len(t[i]) for t in table) for i in range(4)]
        for t in table:
            print("  ".join(c.ljust(x) for c, x in zip(t, w, strict=True)).rstrip())
        print()
    rows: list[tuple[str, ...]] = [("ID", "ROLE", "STATE", "PEER", "UPDATED")]
    for j in result["agreements"]:
        rows.append((j["id"], j["role"], j["state"], j["peer"], _when(j["updated_at"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from node.api.client import ApiClient
    from node.cli import CliError
    from node.cli.follow import find_run, print_run

    client = ApiClient(args.data_dir)
    run = find_run(client, args.id)  # a job submitted end to end, else a negotiation
    if run is not None:
        if args.json:
            print(json.dumps(run, indent=2))
        else:
            print_run(run)
            for a in run["attempts"]:
                print(f"  attempt: agreement {a['agreement_id']} with {a['provider']}: {a['state']}"
                      + (f" ({a['detail']})" if a["detail"] else ""))
        return 0
    try:
        result = client.get(f"/v1/agreements/{args.id}")
    except CliError as exc:
        if getattr(exc, "status", None) == 404:
            raise CliError(f"no job or agreement {args.id} on this node") from None
        raise
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for j in result["agreements"]:
        print(f"job {j['id']} ({j['role']})")
        print(f"  state    {j['state']}" + (f"  ({j['detail']})" if j["detail"] else ""))
        print(f"  peer     {j['peer']}")
        print(f"  created  {_when(j['created_at'])}   updated {_when(j['updated_at'])}")
        a = j.get("agreement")
        if a:
            print(f"  agreement co-signed, terms {a['terms_digest']}")
            print(f"    price {a['price'] / 1_000_000:.6f}, max run {a['max_run_s']} s, job {a['job_digest']}")
        for e in j.get("events", []):
            print(f"  event #{e['n']} {e['kind']} at {_when(e['at'])}")
    return 0
