"""``cpn node run`` (the daemon, in the foreground) and ``cpn id``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from node.cli import CliError


def register(sub: Any) -> None:
    node = sub.add_parser("node", help="run and manage the local node daemon")
    nsub = node.add_subparsers(dest="node_command", required=True, metavar="SUBCOMMAND")
    run = nsub.add_parser("run", help="run the daemon in the foreground (Ctrl-C stops it)")
    run.add_argument("--config", type=Path, help="TOML config file")
    run.add_argument(
        "--data-dir", type=Path, help="data dir (default $CPN_HOME or ~/.local/share/cpn)"
    )
    run.add_argument(
        "--listen", action="append", metavar="MULTIADDR", help="listen address (repeatable)"
    )
    run.add_argument(
        "--bootstrap", action="append", metavar="MULTIADDR", help="bootstrap peer (repeatable)"
    )
    run.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    run.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT")
    run.add_argument(
        "--fake-gpus", metavar="SPEC", help="fake NVML inventory (testnets), e.g. h100x2"
    )
    run.set_defaults(func=cmd_run)

    ident = sub.add_parser("id", help="show the running node's peer ID, addresses and identifiers")
    ident.add_argument("--data-dir", type=Path, help="data dir of the daemon to ask")
    ident.add_argument("--json", action="store_true", help="print JSON")
    ident.set_defaults(func=cmd_id)


def cmd_run(args: argparse.Namespace) -> int:
    from node.config import ConfigError, load_config
    from node.logs import setup_logging

    overrides = {
        "node.data_dir": str(args.data_dir) if args.data_dir else None,
        "node.listen": args.listen,
        "node.bootstrap": args.bootstrap,
        "node.log_level": args.log_level,
        "metrics.port": args.metrics_port,
        "discovery.fake_gpus": args.fake_gpus,
    }
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        raise CliError(f"config: {exc}") from None
    setup_logging(config.node.log_level)

    from node.api.server import DaemonAlreadyRunning
    from node.daemon import main
    from node.keys import KeyFileError

    try:
        return main(config)
    except ConfigError as exc:
        raise CliError(f"config: {exc}") from None
    except (DaemonAlreadyRunning, KeyFileError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot start the node: {exc}") from None


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
