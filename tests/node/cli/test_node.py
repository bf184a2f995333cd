"""node/cli/node.py and node/cli/startup.py: every start-up error of `cpn node run`
is one line naming the key or file and the fix, with a documented exit status
(2: bad config; 9: the node cannot start); never an exception-group traceback."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
from support.daemons import LOOP, Testnet, cpn

from node.cli import main
from node.errors import ExitCode


def _run(tmp_path: Path, *args: str, data: str = "x") -> tuple[int, str]:
    done = cpn("node", "run", "--data-dir", str(tmp_path / data), *args, timeout=60)
    return done.returncode, done.stderr


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr and "  | " not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("cpn: error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_a_second_daemon_on_the_same_data_dir(net: Testnet) -> None:
    done = cpn("node", "run", "--data-dir", str(net.dirs[1]), "--listen", LOOP, timeout=60)
    assert done.returncode == ExitCode.START_FAILED
    line = _one_error_line(done.stderr)
    assert "already running" in line and str(net.dirs[1]) in line and "another --data-dir" in line
    assert done.stderr.count("\n") == 1  # refused before any log line


def test_identity_key_readable_by_others(tmp_path: Path, net: Testnet) -> None:
    (tmp_path / "x").mkdir()
    key = tmp_path / "x" / "identity.key"
    shutil.copy(net.dirs[1] / "identity.key", key)
    key.chmod(0o644)
    code, err = _run(tmp_path, "--listen", LOOP)
    assert code == ExitCode.START_FAILED
    line = _one_error_line(err)
    assert str(key) in line and "mode 644" in line and "chmod 600" in line


def test_identity_key_of_the_wrong_size(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    key = tmp_path / "x" / "identity.key"
    key.write_bytes(b"short")
    key.chmod(0o600)
    code, err = _run(tmp_path, "--listen", LOOP)
    assert code == ExitCode.START_FAILED
    line = _one_error_line(err)
    assert str(key) in line and "32-byte" in line and "backup" in line


def test_listen_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:  # a listener with SO_REUSEPORT, as libp2p's own: still in use
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = _run(tmp_path, "--listen", f"/ip4/127.0.0.1/tcp/{port}")
    assert code == ExitCode.START_FAILED
    line = _one_error_line(err)
    assert "node.listen" in line and f"/tcp/{port} is already in use" in line and "another port" in line
    assert not (tmp_path / "x" / "api.sock").exists()


def test_listen_address_not_on_this_host(tmp_path: Path) -> None:
    code, err = _run(tmp_path, "--listen", "/ip4/192.0.2.7/tcp/0")  # TEST-NET-1: nobody's address
    assert code == ExitCode.START_FAILED
    line = _one_error_line(err)
    assert "node.listen" in line and "192.0.2.7 is not an address of this host" in line


def test_data_host_not_on_this_host(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[transfer]\ndata_host = "192.0.2.9"\n')
    code, err = _run(tmp_path, "--config", str(conf), "--listen", LOOP)
    assert code == ExitCode.START_FAILED
    assert "transfer.data_host" in _one_error_line(err)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (("--fake-gpus", "warp9:1"), "discovery.fake_gpus"),
        (("--listen", "/ip4/127.0.0.1/udp/1"), "node.listen"),
        (("--metrics-port", "70000"), "--metrics-port"),
    ],
)
def test_bad_settings_are_exit_2(tmp_path: Path, args: tuple[str, ...], key: str) -> None:
    code, err = _run(tmp_path, *args)
    assert code == ExitCode.BAD_INPUT
    assert key in err and "Traceback" not in err


def test_bad_config_sections(tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    for text, key in (('[execution]\nenabled = "yes"\n', "execution.enabled"),
                      ("[transfer]\nquota_mib = -1\n", "transfer.quota_mib"),
                      ("[execution]\nbogus = 1\n", "execution.bogus")):
        conf.write_text(text)
        code, err = _run(tmp_path, "--config", str(conf), "--listen", LOOP)
        assert code == ExitCode.BAD_INPUT
        assert _one_error_line(err).startswith(f"cpn: error: config: {key}")


def test_errors_inside_exception_groups_are_unwrapped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """trio wraps a service's failure in groups, one per nursery: the leaf is what matters."""
    import node.daemon
    import node.logs
    from node.keys import KeyFileError

    monkeypatch.setattr(node.logs, "setup_logging", lambda level: None)  # keep this process's logging

    def failing(exc: BaseException) -> None:
        def run(config: object) -> int:
            raise BaseExceptionGroup("outer", [ExceptionGroup("inner", [exc])])  # type: ignore[list-item]

        monkeypatch.setattr(node.daemon, "main", run)

    failing(KeyFileError("k is readable by others (mode 644); run chmod 600 on it"))
    assert main(["node", "run", "--data-dir", str(tmp_path / "a"), "--listen", LOOP]) == ExitCode.START_FAILED
    assert capsys.readouterr().err == "cpn: error: identity key: k is readable by others (mode 644); " \
        "run chmod 600 on it\n"
    failing(PermissionError(13, "Permission denied", str(tmp_path / "a" / "runs.sqlite")))
    assert main(["node", "run", "--data-dir", str(tmp_path / "a"), "--listen", LOOP]) == ExitCode.START_FAILED
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "runs.sqlite" in err and "must be writable" in err
    failing(RuntimeError("something new"))
    assert main(["node", "run", "--data-dir", str(tmp_path / "a"), "--listen", LOOP]) == ExitCode.START_FAILED
    err = capsys.readouterr().err
    assert err == "cpn: error: the node stopped on an unexpected error: RuntimeError: something new " \
        "(run with --log-level debug for the traceback)\n"
    assert main(["node", "run", "--data-dir", str(tmp_path / "a"), "--listen", LOOP,
                 "--log-level", "debug"]) == ExitCode.START_FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("RuntimeError: something new")
