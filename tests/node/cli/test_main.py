"""node/cli/__init__.py: global options on either side of the command, one-line
errors and exit statuses, `cpn --version`, a reader that closes stdout early."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from support.daemons import CPN, ROOT, Testnet, cpn

from node.cli import build_parser, main
from node.errors import ExitCode


@pytest.mark.parametrize(
    "argv",
    [
        ["--data-dir", "D", "--json", "find", "--gpus", "1"],
        ["find", "--data-dir", "D", "--json", "--gpus", "1"],
        ["--data-dir", "D", "find", "--json", "--gpus", "1"],
        ["--json", "find", "--gpus", "1", "--data-dir", "D"],
    ],
)
def test_global_options_before_or_after_the_command(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.data_dir, args.json, args.gpus) == ("D", True, 1)


def test_global_options_reach_nested_commands() -> None:
    for argv in (["--data-dir", "D", "job", "show", "abcd"], ["job", "show", "abcd", "--data-dir", "D"],
                 ["--log-level", "debug", "--data-dir", "D", "node", "run"],
                 ["node", "run", "--data-dir", "D", "--log-level", "debug"]):
        args = build_parser().parse_args(argv)
        assert args.data_dir == "D", argv
    assert build_parser().parse_args(["status"]).data_dir is None  # not given anywhere: the default


def test_global_data_dir_first_against_a_daemon(net: Testnet) -> None:
    """`cpn --data-dir X status` (as docs and tools/testnet write it) and `cpn status --data-dir X`;
    node0 itself was started as `cpn --data-dir X node run`."""
    first = cpn("--data-dir", str(net.dirs[0]), "--json", "status")
    after = cpn("status", "--json", "--data-dir", str(net.dirs[0]))
    assert first.returncode == after.returncode == 0, first.stderr + after.stderr
    assert json.loads(first.stdout)["node"]["peer_id"] == json.loads(after.stdout)["node"]["peer_id"] \
        == net.ready[0]["peer_id"]


def test_version() -> None:
    out = cpn("--version")
    assert out.returncode == 0 and out.stdout.startswith("cpn 0.") and out.stderr == ""


def _closed_stdout(*args: str) -> subprocess.CompletedProcess[str]:
    """Run cpn with a stdout whose reader is already gone: its first write fails (EPIPE)."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([CPN, *args], cwd=ROOT, stdout=w, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(w)


@pytest.mark.parametrize(("args", "code"), [(("--version",), ExitCode.BROKEN_PIPE), (("--help",), 0),
                                            (("find", "--help"), 0)])  # argparse's help ignores EPIPE
def test_closed_stdout_is_no_traceback(args: tuple[str, ...], code: int) -> None:
    done = _closed_stdout(*args)
    assert done.stderr == "" and done.returncode == code


def test_jobs_into_a_closed_pipe(net: Testnet) -> None:
    """`cpn jobs | head -3` used to end in a BrokenPipeError traceback."""
    done = _closed_stdout("jobs", "--data-dir", str(net.dirs[2]))
    assert done.stderr == "" and done.returncode == ExitCode.BROKEN_PIPE
    shell = subprocess.run(f"{CPN} --help | head -1", shell=True, cwd=ROOT, capture_output=True, text=True,
                           timeout=60)
    assert shell.stdout.startswith("usage: cpn") and shell.stderr == ""


def test_no_daemon_is_exit_7_in_one_line(tmp_path: Path) -> None:
    for args in (("status",), ("jobs",), ("peers",), ("id",), ("job", "show", "abcd")):
        done = cpn(*args, "--data-dir", str(tmp_path / "none"))
        assert done.returncode == ExitCode.NO_DAEMON, args
        assert done.stderr.count("\n") == 1 and "daemon is not running" in done.stderr, done.stderr


def test_unexpected_error_is_one_line_and_a_hint(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import node.cli.status as status

    def broken(args: object) -> int:
        raise RuntimeError("a bug\nwith two lines")

    monkeypatch.setattr(status, "cmd_status", broken)
    assert main(["status"]) == ExitCode.ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected RuntimeError: a bug (run" in err
    assert "--log-level debug" in err and "Traceback" not in err
    assert main(["status", "--log-level", "debug"]) == ExitCode.ERROR
    assert "Traceback" in capsys.readouterr().err
