"""The ``cpn`` command line.  Each subcommand module here defines
``register(subparsers)`` and sets ``func`` on its parsers; :data:`COMMANDS`
lists them.  Commands are thin clients of the daemon's local API
(:mod:`node.api.client`), except ``cpn node run``, which runs the daemon."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from node.errors import UserError

#: The subcommand modules (``node.cli.<name>``), in help order.
COMMANDS = ("node", "find", "submit", "jobs", "transfers", "image", "ledger")

#: A user-facing failure: printed as ``cpn: error: ...`` with exit status 1 (or ``code``).
CliError = UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpn", description="CPN: a peer-to-peer computing power network."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in sorted(COMMANDS):
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except UserError as exc:
        print(f"cpn: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return int(result or 0)
