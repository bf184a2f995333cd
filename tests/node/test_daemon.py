"""The daemon: identity, start-up, API, metrics, clean shutdown; in-process and as `cpn node run`."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio

from node.api.client import ApiClient
from node.config import load_config
from node.daemon import run_node
from node.keys import KEY_FILE, KeyFileError, load_or_create_key, peer_id_of
from protocol.advert import Advert, Tombstone

ROOT = Path(__file__).resolve().parents[2]
#: the installed entry point (``python -m node.cli`` would define a second CliError class)
CPN = str(Path(sys.executable).parent / "cpn")
LOOP = "/ip4/127.0.0.1/tcp/0"


def config(data_dir: Path, **over: Any) -> Any:
    return load_config(None, {"node.data_dir": str(data_dir), "node.listen": [LOOP], **over})


def test_key_created_private_and_reused(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "d")
    path = tmp_path / "d" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert peer_id_of(load_or_create_key(tmp_path / "d")) == peer_id_of(key)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_or_create_key(tmp_path / "d")
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(KeyFileError, match="32-byte"):
        load_or_create_key(tmp_path / "d")


async def test_node_starts_serves_api_and_stops_cleanly(tmp_path: Path) -> None:
    cfg = config(tmp_path / "d", **{"metrics.port": 0})
    async with trio.open_nursery() as nursery:
        node = await nursery.start(partial(run_node, cfg))
        assert isinstance(node.discovery.current.message, Advert)  # every service started
        client = ApiClient(tmp_path / "d")
        ident = await trio.to_thread.run_sync(client.get, "/v1/id")
        assert ident["peer_id"] == node.peer_id == peer_id_of(node.key)
        assert ident["addrs"][0].startswith("/ip4/127.0.0.1/tcp/")
        assert ident["sha256_backend"] == "libcrypto"
        health = await trio.to_thread.run_sync(client.get, "/v1/health")
        assert health["status"] == "ok"
        doc = await trio.to_thread.run_sync(client.get, "/v1/openapi.json")
        assert {"/v1/id", "/v1/health", "/v1/peers", "/v1/jobs", "/v1/agreements", "/v1/find"} <= set(doc["paths"])
        assert "cpn_peers_connected" in node.metrics.render()
        node.stop()
        with trio.fail_after(10):
            await node.stopped.wait()
    # every service ran its cleanup: the advert was withdrawn, the socket removed
    assert isinstance(node.discovery.current.message, Tombstone)
    assert not (tmp_path / "d" / "api.sock").exists()


async def test_metrics_port_serves_prometheus_text(tmp_path: Path) -> None:
    with socket.socket() as s:  # a free port: metrics.port = 0 means "off"
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    async with trio.open_nursery() as nursery:
        node = await nursery.start(partial(run_node, config(tmp_path / "d", **{"metrics.port": free})))
        port = node.web.ports["metrics"]
        node.metrics.counter("cpn_test_total", "a test counter").inc(kind="x")

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        text = await trio.to_thread.run_sync(scrape)
        assert "# TYPE cpn_peers_connected gauge" in text
        assert 'cpn_test_total{kind="x"} 1' in text
        node.stop()
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------------- real processes


def cpn(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CPN, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@contextmanager
def daemon(data_dir: Path, *extra: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any]]]:
    proc = subprocess.Popen(
        [
            CPN,
            "node",
            "run",
            "--data-dir",
            str(data_dir),
            "--listen",
            LOOP,
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the "ready" line (or exit)
        if not line:
            raise AssertionError(f"daemon exited: {proc.communicate(timeout=10)[1][-3000:]}")
        ready = json.loads(line)
        assert ready["event"] == "ready"
        yield proc, ready
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout:
            proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()


def test_cpn_node_run_find_and_sigterm(tmp_path: Path) -> None:
    with daemon(tmp_path / "a", "--fake-gpus", "h100:2") as (a, ready_a):
        with daemon(tmp_path / "b", "--bootstrap", ready_a["addrs"][0]) as (b, ready_b):
            ident = cpn("id", "--data-dir", str(tmp_path / "a"), "--json")
            assert ident.returncode == 0, ident.stderr
            info = json.loads(ident.stdout)
            assert info["peer_id"] == ready_a["peer_id"]
            ids = {i["id"]: i["cid"] for i in info["identifiers"]}
            assert ids["cpn:gpu/nvidia/h100/x2"].startswith("bafkrei")
            text = cpn("id", "--data-dir", str(tmp_path / "a"))
            assert "cpn:gpu/nvidia/h100" in text.stdout and "bafkrei" in text.stdout

            found = cpn(
                "find",
                "--data-dir",
                str(tmp_path / "b"),
                "--gpus",
                "2",
                "--gpu-model",
                "h100",
                "--json",
            )
            assert found.returncode == 0, found.stderr
            offers = json.loads(found.stdout)["offers"]
            assert [o["peer_id"] for o in offers] == [ready_a["peer_id"]]

            nothing = cpn("find", "--data-dir", str(tmp_path / "b"), "--gpus", "4")
            assert nothing.returncode == 3
            assert "no provider matched" in nothing.stdout and "gpu-count" in nothing.stdout

            b.send_signal(signal.SIGTERM)
            assert b.wait(timeout=20) == 0
            assert not (tmp_path / "b" / "api.sock").exists()
        a.send_signal(signal.SIGINT)
        assert a.wait(timeout=20) == 0
        assert "advert withdrawn" in (a.stderr.read() if a.stderr else "")
    # the identity survives restarts
    with daemon(tmp_path / "a") as (_, again):
        assert again["peer_id"] == ready_a["peer_id"]


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    no_daemon = cpn("id", "--data-dir", str(tmp_path / "none"))
    assert no_daemon.returncode == 7  # ExitCode.NO_DAEMON
    assert "daemon is not running" in no_daemon.stderr and "Traceback" not in no_daemon.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[discovery]\nadvert_lifetime_s = 5000\n")
    res = cpn("node", "run", "--config", str(bad), "--data-dir", str(tmp_path / "x"))
    assert res.returncode == 2  # ExitCode.BAD_INPUT
    assert "discovery.advert_lifetime_s" in res.stderr and "Traceback" not in res.stderr
    fake = cpn(
        "node", "run", "--data-dir", str(tmp_path / "y"), "--listen", LOOP, "--fake-gpus", "warp9:1"
    )
    assert fake.returncode == 2 and "discovery.fake_gpus" in fake.stderr
    assert not os.path.exists(tmp_path / "y" / KEY_FILE)  # refused before anything was made
    assert not (tmp_path / "y" / "api.sock").exists()


async def test_pure_python_sha256_is_announced_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without libcrypto the data plane is ~1000x slower: the start-up log says so."""
    from protocol import sha256

    monkeypatch.setattr(sha256, "BACKEND", "pure")
    with caplog.at_level("WARNING", logger="cpn"):
        async with trio.open_nursery() as nursery:
            node = await nursery.start(partial(run_node, config(tmp_path / "d")))
            node.stop()
    assert any("pure Python" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
