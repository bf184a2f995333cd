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
        raise CliError(f"no ledger at {path} (a node's ledger.sqlite is in its --data-dir)")
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
    from node.errors import ExitCode
    from node.ledger import verify_export

    if args.file:
        try:
            doc = json.loads(Path(args.file).read_text())
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read {args.file}: {exc}", ExitCode.BAD_INPUT) from None
        report = verify_export(doc)
        source = str(args.file)
    else:
        with _open(args) as ledger:
            report = ledger.verify()
            source = str(ledger.path)
    if args.json:
        print(json.dumps({"source": source, **report.to_json()}, indent=2))
        return 0 if report.ok else 1
    for problem in report.problems:
        print(problem, file=sys.stderr)
    if not report.ok:
        raise CliError(f"ledger does NOT verify ({len(report.problems)} problem(s))")
    print(f"ok: {report.count} entries, head {report.head.hex()}")
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("ledger", help="export or verify the hash-chained receipt ledger")
    sub = parser.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    exp = sub.add_parser("export", help="print the ledger as JSON for settlement (it is JSON anyway)")
    exp.add_argument("-o", "--output", help="write to this file instead of stdout")
    exp.set_defaults(func=_export)
    ver = sub.add_parser(
        "verify", help="check hash chain, every receipt's signatures and an export's summaries",
        description="Exit status 0 when everything verifies, 1 when anything does not (the problems are "
        "listed; with --json in the document's problems).",
    )
    ver.add_argument("file", nargs="?", help="verify an exported JSON file instead of the local ledger")
    ver.set_defaults(func=_verify)
