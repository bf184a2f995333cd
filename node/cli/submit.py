"""``cpn submit JOB.toml``: validate a job, get quotes from up to K providers, agree with the best.

The job file is read and validated here (so mistakes are reported before the
daemon is bothered, exit status 2); the daemon signs the spec with the node
key, finds candidates, negotiates in parallel and answers with the agreement
ID and every refusing provider's reason.  Blob hashes are remembered in the
data dir (:mod:`node.jobs.hashcache`), so submitting the same image again does
not read it again.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from node.cli import int_range, number_range


def register(sub: Any) -> None:
    p = sub.add_parser(
        "submit", help="submit a job: quotes from up to K providers, agree with the best",
        description="Exit status: 0 agreed (with --follow: the job exited 0 and its outputs verified), "
        "2 bad job file, 3 no provider, 4 refused, 5 job failed (non-zero exit, OOM, timeout), "
        "6 transfer failed, 7 daemon not running, 8 cancelled.",
    )
    p.add_argument("job", type=Path, help="job file (TOML)")
    p.add_argument("--providers", type=int_range(1, 32), default=3, metavar="K",
                   help="ask up to K providers for quotes (default 3)")
    p.add_argument("--peer", action="append", metavar="PEER",
                   help="ask this provider (peer ID or /p2p/ multiaddr) instead of finding")
    p.add_argument("--timeout", type=number_range(0.1, 300), default=5.0, metavar="S",
                   help="seconds to search for providers (default 5)")
    p.add_argument("--follow", action="store_true",
                   help="run the job end to end: follow transfer, logs and result to the co-signed receipt")
    p.add_argument("--retries", type=int_range(0, 10), default=1, metavar="N",
                   help="other providers to try after a failure (default 1)")
    p.add_argument("--results", type=Path, metavar="DIR", help="where results/<job-id>/ go (default ./results)")
    p.set_defaults(func=cmd_submit)


def _load(args: argparse.Namespace, hashes: Any) -> Any:
    from node.cli import CliError
    from node.errors import ExitCode
    from node.jobs.jobfile import load_job
    from protocol.errors import ProtocolError

    try:
        return load_job(args.job, hashes=hashes)  # raises JobFileError (exit 2) naming the bad key
    except ProtocolError as exc:
        raise CliError(f"{args.job}: {exc}", ExitCode.BAD_INPUT) from None


def _post(args: argparse.Namespace, loaded: Any) -> dict[str, Any]:
    from node.api.client import ApiClient
    from node.cli.follow import job_body

    client = ApiClient(args.data_dir, timeout=args.timeout + 60)
    path = "/v1/jobs" if args.follow else "/v1/jobs?wait=agreement"
    return client.post(path, job_body(args, loaded))  # type: ignore[no-any-return]


def cmd_submit(args: argparse.Namespace) -> int:
    from node.cli.follow import negotiation_exit_code, submit_follow
    from node.errors import ApiAnswerError, UserError
    from node.jobs.hashcache import CACHE_FILE, HashCache

    data_dir = Path(args.data_dir) if args.data_dir else _default_data_dir()
    hashes = HashCache(data_dir / CACHE_FILE)
    try:
        loaded = _load(args, hashes)
    except UserError:
        if not hashes.hits:
            raise
        hashes.forget()  # a remembered hash may be what does not match: read the files again
        loaded = _load(args, hashes)
    hashes.save()
    try:
        run = _post(args, loaded)
    except ApiAnswerError as exc:
        if exc.reason != "blob_mismatch":
            raise
        hashes.forget()  # a file changed under its cached hash: hash everything again, once
        loaded = _load(args, hashes)
        hashes.save()
        run = _post(args, loaded)
    if args.follow:  # follow the job to its receipt
        return submit_follow(args, loaded, run)
    if args.json:
        print(json.dumps(run, indent=2))
    else:
        print_outcome(run)
        if run["attempts"]:
            print(f"job {run['id']} runs on: cpn job logs --follow {run['id']}; "
                  f"results go to {run['results_dir']}/{run['id']}/")
    return negotiation_exit_code(run)


def _default_data_dir() -> Path:
    from node.config import default_data_dir

    return default_data_dir()


def print_outcome(run: dict[str, Any]) -> None:
    """The negotiation of a just-submitted job: the agreement, or why there is none."""
    from node.cli.units import price

    agreed = run["attempts"][-1] if run["attempts"] else None
    if agreed is not None:
        print(f"agreement {agreed['agreement_id']} with {agreed['provider']}")
        print(f"  price {price(agreed['price'])}")
    else:
        print("no agreement" + (f" ({run['detail']})" if run.get("detail") else ""))
    for p in run.get("quotes", []):
        if p["status"] == "refused":
            depth = f", queue depth {p['queue_depth']}" if p.get("queue_depth") is not None else ""
            hint = " (prices are in micro-units: raise max_price)" if p["reason"] == "price_too_low" else ""
            print(f"  {p['provider']}: refused {p['reason']}{depth}: {p['detail']}{hint}")
        elif p["status"] == "error":
            print(f"  {p['provider']}: {p['reason']}: {p['detail']}")
        elif agreed is None or agreed["provider"] != p["provider"]:
            print(f"  {p['provider']}: quoted {price(p['price'])}; not chosen: a cheaper or better quote won")
