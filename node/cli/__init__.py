"""The ``cpn`` command line.  Each subcommand module here defines
``register(subparsers)`` and sets ``func`` on its parsers; :data:`COMMANDS`
lists them.  Commands are thin clients of the daemon's local API
(:mod:`node.api.client`), except ``cpn node run``, which runs the daemon.

Global options (:data:`GLOBAL_OPTIONS`: ``--data-dir``, ``--json``,
``--log-level``) are accepted before the command and after it, at any depth
(``cpn --data-dir X find`` and ``cpn find --data-dir X``).  Every failure is
one line on stderr and an exit status from :class:`node.errors.ExitCode`.

Start-up time matters (a script may run ``cpn`` thousands of times): this
module and the command modules import only the standard library at the top;
each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from node.errors import ExitCode, UserError

__all__ = ["COMMANDS", "CliError", "GLOBAL_OPTIONS", "build_parser", "main", "int_range", "number_range"]

#: The subcommand modules (``node.cli.<name>``), in help order.
COMMANDS = ("node", "status", "find", "submit", "jobs", "transfers", "image", "ledger")

#: A user-facing failure: printed as ``cpn: error: ...`` with exit status 1 (or ``code``).
CliError = UserError

LOG_LEVELS = ("debug", "info", "warning", "error")

#: (flags, argparse keywords, default at the top level) of each global option.
GLOBAL_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any], Any], ...] = (
    (("--data-dir",), {"metavar": "DIR", "help": "data dir of the node (default $CPN_HOME or ~/.local/share/cpn)"},
     None),
    (("--json",), {"action": "store_true", "help": "print JSON (one document, or NDJSON for streams)"}, False),
    (("--log-level",), {"choices": LOG_LEVELS,
                        "help": "the daemon's log level (cpn node run); debug also prints tracebacks"}, None),
)


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    group = parser.add_argument_group("global options (before or after the command)")
    for flags, kwargs, default in GLOBAL_OPTIONS:
        # Below the top level the default is SUPPRESS: an option not given after
        # the command must not overwrite one given before it.
        group.add_argument(*flags, **kwargs, default=default if top else argparse.SUPPRESS)


class _CommandParser(argparse.ArgumentParser):
    """Every (sub)command parser: carries the global options itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _add_global_options(self, top=False)


class _Version(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            v = version("cpn")
        except PackageNotFoundError:  # a checkout run without installing
            v = "unknown (not installed)"
        print(f"cpn {v} (Python {sys.version.split()[0]})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpn", description="CPN: a peer-to-peer computing power network.",
        epilog="Exit status: 0 ok, 1 error, 2 bad input, 3 no provider, 4 refused, 5 job failed, "
        "6 transfer failed, 7 daemon not running, 8 cancelled, 9 node could not start "
        "(docs/submitters.md).",
    )
    parser.add_argument("--version", action=_Version)
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_CommandParser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


# --------------------------------------------------------------------------- flag values


def int_range(lo: int, hi: int) -> Any:
    """An argparse ``type``: an integer in ``lo..hi`` (argparse names the flag)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number (got {text!r})") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo} to {hi} (got {value})")
        return value

    return parse


def number_range(lo: float, hi: float, *, above: bool = False) -> Any:
    """An argparse ``type``: a finite number in ``lo..hi`` (``above``: greater than ``lo``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number (got {text!r})") from None
        if value != value or not (lo < value if above else lo <= value) or value > hi:
            lower = f"above {lo:g}" if above else f"at least {lo:g}"
            raise argparse.ArgumentTypeError(f"must be a number {lower} and at most {hi:g} (got {text})")
        return value

    return parse


# --------------------------------------------------------------------------- running


def _quiet_stdout() -> None:
    """stdout's reader went away: point the descriptor at /dev/null so the
    interpreter's final flush does not print a BrokenPipeError of its own."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is no file descriptor (tests capture it)
        pass


def _error(message: str) -> None:
    try:
        print(f"cpn: error: {message}", file=sys.stderr)
    except (BrokenPipeError, ValueError):  # stderr is gone too: nothing left to tell
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args: argparse.Namespace | None = None
    try:
        try:
            args = build_parser().parse_args(argv)  # a bad command line exits 2, naming the flag
            result = args.func(args)
        finally:
            sys.stdout.flush()  # a reader that went away shows here, not at exit
    except BrokenPipeError:  # `cpn jobs | head -3`: the reader has all it wanted
        _quiet_stdout()
        return ExitCode.BROKEN_PIPE
    except UserError as exc:
        _error(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a bug: one line, the traceback on request
        text = f"unexpected {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        if args is not None and args.log_level == "debug":
            import traceback

            traceback.print_exc()
            _error(text)
        else:
            _error(f"{text} (run with --log-level debug for the traceback)")
        return ExitCode.ERROR
    return int(result or 0)
