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
    if args.follow:  # the end-to-end flow (node/jobrunner.py, spec/jobflow.md)
        from node.cli.follow import submit_run

        return submit_run(args, loaded)
    body: dict[str, Any] = {
        "job_hex": loaded.spec.encode().hex(),
        "providers": args.providers,
        "timeout": args.timeout,
        "blob_paths": {d: str(p) for d, p in loaded.blob_paths.items()},
        "results_dir": str(Path(args.results or "results").resolve()),
        "retries": args.retries,
    }
    if args.peer:
        body["peers"] = args.peer
    result = ApiClient(args.data_dir, timeout=args.timeout + 60).post("/v1/jobs", body)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_result(result)
        if result.get("job_id"):  # the daemon runs it end to end (node/jobrunner.py)
            print(f"job {result['job_id']} runs on: cpn job logs --follow {result['job_id']}; "
                  f"results go to {body['results_dir']}/{result['job_id']}/")
    return 0 if result.get("agreed") else 3


def print_result(result: dict[str, Any]) -> None:
    if result.get("agreed"):
        print(f"agreement {result['agreement_id']} with {result['provider']}")
        print(f"  price {result['price'] / 1_000_000:.6f}, max run {result['max_run_s']} s")
    else:
        summary = (result.get("find") or {}).get("summary")
        print("no agreement" + (f" ({summary})" if summary else ""))
    for p in result.get("providers", []):
        if p["status"] == "refused":
            depth = f", queue depth {p['queue_depth']}" if p.get("queue_depth") is not None else ""
            print(f"  {p['provider']}: refused {p['reason']}{depth}: {p['detail']}")
        elif p["status"] == "error":
            print(f"  {p['provider']}: {p['reason']}: {p['detail']}")
        elif result.get("provider") != p["provider"]:
            print(f"  {p['provider']}: quoted {p['price'] / 1_000_000:.6f} (not chosen)")
