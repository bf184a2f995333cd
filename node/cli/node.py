"""``cpn node run`` (the daemon, in the foreground) and ``cpn id``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from node.cli import CliError, int_range
from node.errors import ExitCode


def register(sub: Any) -> None:
    node = sub.add_parser("node", help="run and manage the local node daemon")
    nsub = node.add_subparsers(dest="node_command", required=True, metavar="SUBCOMMAND")
    run = nsub.add_parser(
        "run", help="run the daemon in the foreground (Ctrl-C stops it)",
        description="Run the daemon in the foreground. It prints one JSON line when it is ready; logs go "
        "to stderr. A start-up error is one line naming the key or file to fix: exit status 2 for a bad "
        "config, 9 when the node cannot start (data dir in use, identity key, listen address).",
    )
    run.add_argument("--config", type=Path, help="TOML config file")
    run.add_argument(
        "--listen", action="append", metavar="MULTIADDR", help="listen address (repeatable)"
    )
    run.add_argument(
        "--bootstrap", action="append", metavar="MULTIADDR", help="bootstrap peer (repeatable)"
    )
    run.add_argument("--metrics-port", type=int_range(0, 65535), metavar="PORT",
                     help="serve Prometheus metrics on 127.0.0.1:PORT")
    run.add_argument("--dashboard-port", type=int_range(0, 65535), metavar="PORT",
                     help="serve the web dashboard on 127.0.0.1:PORT (docs/dashboard.md)")
    run.add_argument(
        "--fake-gpus", metavar="SPEC", help="fake NVML inventory (testnets), e.g. h100:2"
    )
    run.set_defaults(func=cmd_run)

    dash = sub.add_parser("dashboard", help="print the web dashboard's address, with its access token")
    dash.set_defaults(func=cmd_dashboard)

    ident = sub.add_parser("id", help="show the running node's peer ID, addresses and identifiers")
    ident.set_defaults(func=cmd_id)


def cmd_run(args: argparse.Namespace) -> int:
    from node.cli.startup import check_addresses, check_not_running
    from node.config import ConfigError, load_config

    overrides = {
        "node.data_dir": str(args.data_dir) if args.data_dir else None,
        "node.listen": args.listen,
        "node.bootstrap": args.bootstrap,
        "node.log_level": args.log_level,
        "metrics.port": args.metrics_port,
        "dashboard.port": args.dashboard_port,
        "discovery.fake_gpus": args.fake_gpus,
    }
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        raise CliError(f"config: {exc}", ExitCode.BAD_INPUT) from None
    check_not_running(config.api_socket, config.data_dir)
    check_addresses(config.node.listen, config.transfer.data_host)

    from node.daemon import main
    from node.logs import setup_logging

    setup_logging(config.node.log_level)
    try:
        return main(config)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - trio groups every start-up failure: unwrap, one line
        raise _start_error(exc, config) from None
    finally:
        sys.stdout.flush()


def _start_error(exc: BaseException, config: Any) -> BaseException:
    """One line for a failed start; the traceback too at ``--log-level debug``."""
    from node.cli.startup import explain, leaves

    inner = list(leaves(exc))
    if any(isinstance(e, KeyboardInterrupt) for e in inner):  # Ctrl-C while starting
        return KeyboardInterrupt()
    debug = config.node.log_level == "debug"
    if debug:
        import traceback

        traceback.print_exception(exc)
    known = explain(exc, config)
    if known is not None:
        return known
    first = inner[0]
    text = str(first).splitlines()[0] if str(first) else ""
    hint = "" if debug else " (run with --log-level debug for the traceback)"
    return CliError(f"the node stopped on an unexpected error: {type(first).__name__}: {text}{hint}",
                    ExitCode.START_FAILED)


def cmd_id(args: argparse.Namespace) -> int:
    from node.api.client import ApiClient

    info = ApiClient(args.data_dir).get("/v1/id")
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"peer id:  {info['peer_id']}")
    if info.get("sha256_backend", "libcrypto") != "libcrypto":
        print("warning:  SHA-256 runs in pure Python (no libcrypto): transfers are ~1000x slower")
    for addr in info["addrs"]:
        print(f"address:  {addr}")
    if not info["identifiers"]:
        print("identifiers: none advertised")
    else:
        width = max(len(i["id"]) for i in info["identifiers"])
        print("identifiers:")
        for item in info["identifiers"]:
            print(f"  {item['id']:<{width}}  {item['cid']}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    """``cpn dashboard``: the dashboard's URL; the token rides in the fragment, which the
    browser keeps and never sends (only the node's user can read the token file)."""
    from node.api.client import ApiClient
    from node.api.dashboard import TOKEN_FILE

    info = ApiClient(args.data_dir).get("/v1/id")
    url = info.get("dashboard")
    if not url:
        raise CliError("the dashboard is off: set [dashboard] port in the config, or run the node with "
                       "--dashboard-port PORT", ExitCode.BAD_INPUT)
    token_path = Path(info["data_dir"]) / TOKEN_FILE
    try:
        token = token_path.read_text().strip()
    except OSError as exc:
        raise CliError(f"cannot read {token_path}: {exc.strerror or exc} (it belongs to the node's user)") from None
    if args.json:
        print(json.dumps({"url": url, "token_file": str(token_path)}))
    else:
        print(f"{url.rstrip('/')}/#token={token}")
    return 0
