"""``cpn submit JOB.toml``: validate a job, get quotes from up to K providers, agree with the best.

The job file is read and validated here (so mistakes are reported before the
daemon is bothered); the daemon signs the spec with the node key, finds
candidates, negotiates in parallel and answers with the agreement ID and
every refusing provider's reason.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("submit", help="submit a job: quotes from up to K providers, agree with the best")
    p.add_argument("job", type=Path, help="job file (TOML)")
    p.add_argument("--providers", type=int, default=3, help="ask up to K providers for quotes (default 3)")
    p.add_argument("--peer", action="append", help="ask this provider (peer ID or /p2p/ multiaddr) instead of finding")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to search for providers (default 5)")
    p.add_argument("--data-dir", type=Path, help="data dir of the daemon to ask")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--follow", action="store_true",
                   help="run the job end to end: follow transfer, logs and result to the co-signed receipt")
    p.add_argument("--retries", type=int, default=1, help="other providers to try after a failure (default 1)")
    p.add_argument("--results", type=Path, help="where results/<job-id>/ go (default ./results)")
    p.set_defaults(func=cmd_submit)


def cmd_submit(args: argparse.Namespace) -> int:
    from node.api.client import ApiClient
    from node.cli import CliError
    from node.jobs.jobfile import load_job
    from protocol.errors import ProtocolError

    if not 1 <= args.providers <= 32:
        raise CliError("--providers must be 1..32")
    try:
        loaded = load_job(args.job)  # raises JobFileError (a CliError) naming the bad key
    except ProtocolError as exc:
        raise CliError(f"{args.job}: {exc}") from None
    from node.cli.follow import job_body, submit_follow

    if args.follow:  # follow the job to its receipt
        return submit_follow(args, loaded)
    client = ApiClient(args.data_dir, timeout=args.timeout + 60)
    run = client.post("/v1/jobs?wait=agreement", job_body(args, loaded))
    if args.json:
        print(json.dumps(run, indent=2))
    else:
        print_outcome(run)
        if run["attempts"]:
            print(f"job {run['id']} runs on: cpn job logs --follow {run['id']}; "
                  f"results go to {run['results_dir']}/{run['id']}/")
    return 0 if run["attempts"] else 3


def print_outcome(run: dict[str, Any]) -> None:
    """The negotiation of a just-submitted job: the agreement, or why there is none."""
    agreed = run["attempts"][-1] if run["attempts"] else None
    if agreed is not None:
        print(f"agreement {agreed['agreement_id']} with {agreed['provider']}")
        print(f"  price {agreed['price'] / 1_000_000:.6f}")
    else:
        print("no agreement" + (f" ({run['detail']})" if run.get("detail") else ""))
    for p in run.get("quotes", []):
        if p["status"] == "refused":
            depth = f", queue depth {p['queue_depth']}" if p.get("queue_depth") is not None else ""
            print(f"  {p['provider']}: refused {p['reason']}{depth}: {p['detail']}")
        elif p["status"] == "error":
            print(f"  {p['provider']}: {p['reason']}: {p['detail']}")
        elif agreed is None or agreed["provider"] != p["provider"]:
            print(f"  {p['provider']}: quoted {p['price'] / 1_000_000:.6f} (not chosen)")
