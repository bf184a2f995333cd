"""``cpn ledger export`` and ``cpn ledger verify``: the receipt ledger for settlement."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _data_dir(args: argparse.Namespace) -> Path:
    from node.config import default_data_dir

    return Path(args.data_dir) if args.data_dir else default_data_dir()


def _open(args: argparse.Namespace) -> Any:
    from node.cli import CliError
    from node.ledger import Ledger

    path = _data_dir(args) / "ledger.sqlite"
    if not path.exists():
        raise CliError(f"no ledger at {path}")
    return Ledger(path)


def _export(args: argparse.Namespace) -> int:
    with _open(args) as ledger:
        doc = ledger.export()
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from node.cli import CliError
    from node.ledger import verify_export

    if args.file:
        try:
            doc = json.loads(Path(args.file).read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {args.file}: {exc}") from None
        report = verify_export(doc)
    else:
        with _open(args) as ledger:
            report = ledger.verify()
    for problem in report.problems:
        print(problem, file=sys.stderr)
    if not report.ok:
        raise CliError(f"ledger does NOT verify ({len(report.problems)} problem(s))")
    print(f"ok: {report.count} entries, head {report.head.hex()}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("ledger", help="export or verify the hash-chained receipt ledger")
    sub = parser.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    exp = sub.add_parser("export", help="print the ledger as JSON for settlement")
    exp.add_argument("--data-dir", help="node data directory (default: $CPN_HOME or ~/.local/share/cpn)")
    exp.add_argument("-o", "--output", help="write to this file instead of stdout")
    exp.set_defaults(func=_export)
    ver = sub.add_parser("verify", help="check hash chain and every receipt's signatures")
    ver.add_argument("--data-dir", help="node data directory (default: $CPN_HOME or ~/.local/share/cpn)")
    ver.add_argument("file", nargs="?", help="verify an exported JSON file instead of the local ledger")
    ver.set_defaults(func=_verify)
