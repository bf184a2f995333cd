"""The daemon's 127.0.0.1 ports (dashboard, /metrics) under attack, in-process.

Each test runs one real daemon (``run_node``: libp2p on 127.0.0.1, the API
socket, the TCP ports from its config) and attacks it the way issue 12 found
or a local user could: TCP resets mid-request and mid-response, hundreds of
silent connections, a head that never ends, an oversized header, a handler
that raises.  After each, an honest client still gets /metrics, the dashboard
routes and the local API.  (Before the HTTP server was shared, one reset on
the metrics port raised BrokenResourceError out of ``Metrics._handle`` and
took the whole daemon down.)
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio

from node.api.client import ApiClient
from node.api.dashboard import TOKEN_FILE, load_token
from node.config import load_config
from node.daemon import Node, run_node

LOOP = "/ip4/127.0.0.1/tcp/0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def node_with(tmp_path: Path, **over: Any) -> AsyncIterator[Node]:
    # reads open to local users: these tests are about the server's limits, not the token
    cfg = load_config(None, {"node.data_dir": str(tmp_path / "d"), "node.listen": [LOOP],
                             "discovery.fake_gpus": "h100:2", "dashboard.private": False, **over})
    async with trio.open_nursery() as nursery:
        node = await nursery.start(partial(run_node, cfg))
        yield node
        node.stop()
        nursery.cancel_scope.cancel()


async def connect(port: int) -> trio.socket.SocketType:
    s = trio.socket.socket()
    await s.connect(("127.0.0.1", port))
    return s


async def http(port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None,
               body: bytes = b"") -> tuple[int, bytes]:
    """One request (``Connection: close``): the status and the body."""
    s = await connect(port)
    head = {"Host": f"127.0.0.1:{port}", "Connection": "close", **(headers or {})}
    if body or method == "POST":
        head["Content-Length"] = str(len(body))
    text = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    await s.send(text.encode() + body)
    data = b""
    while chunk := await s.recv(65536):
        data += chunk
    s.close()
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    return int(head_bytes.split(b" ", 2)[1]), payload


def reset(s: trio.socket.SocketType) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


async def honest(node: Node) -> None:
    """Everything a well-behaved client asks still works."""
    ports = node.web.ports
    status, text = await http(ports["metrics"], "/metrics")
    assert status == 200 and b"# TYPE cpn_peers_connected gauge" in text
    status, body = await http(ports["dashboard"], "/v1/id")
    assert status == 200 and json.loads(body)["peer_id"] == node.peer_id
    status, body = await http(ports["dashboard"], "/v1/dashboard/gpus")
    assert status == 200 and [g["model"] for g in json.loads(body)["gpus"]] == ["h100", "h100"]
    health = await trio.to_thread.run_sync(ApiClient(node.data_dir, timeout=10).get, "/v1/health")
    assert health["status"] == "ok"


async def test_resets_on_the_metrics_port_do_not_kill_the_daemon(tmp_path: Path) -> None:
    ports = {"metrics.port": free_port(), "dashboard.port": free_port()}
    async with node_with(tmp_path, **ports) as node:
        await honest(node)
        for port in node.web.ports.values():
            for _ in range(10):
                s = await connect(port)  # reset in the middle of the request head
                await s.send(b"GET /metr")
                reset(s)
                s = await connect(port)  # reset after the request, before the answer is read
                await s.send(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                reset(s)
        s = await connect(node.web.ports["dashboard"])  # reset in the middle of an answer
        await s.send(f"GET /static/app.js HTTP/1.1\r\nHost: 127.0.0.1:{node.web.ports['dashboard']}\r\n\r\n".encode())
        assert await s.recv(100)
        reset(s)
        await honest(node)
        assert node.api.stats["errors"] == 0


async def test_silent_connections_slowloris_and_big_headers_leave_honest_clients_served(tmp_path: Path) -> None:
    ports = {"metrics.port": free_port(), "dashboard.port": free_port()}
    async with node_with(tmp_path, **ports) as node:
        held = []
        for port in node.web.ports.values():
            for i in range(200):  # 200 silent connections per port: over the cap of 64
                s = await connect(port)
                if i % 2:  # half of them a slowloris: a head that never ends
                    await s.send(f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-A: ".encode())
                held.append(s)
        api_socks = []
        for _ in range(150):  # the local API socket too (cap 128)
            u = trio.socket.socket(socket.AF_UNIX)
            await u.connect(str(node.config.api_socket))
            api_socks.append(u)
        await honest(node)
        assert node.api.stats["evicted"] >= 2 * (200 - 64) + (150 - 128)
        status, body = await http(node.web.ports["dashboard"], "/v1/id", headers={"X-Big": "a" * 40_000})
        assert status == 431
        await honest(node)
        for s in held + api_socks:
            s.close()


async def test_a_handler_that_raises_is_a_500_and_the_node_serves_on(tmp_path: Path) -> None:
    ports = {"metrics.port": free_port(), "dashboard.port": free_port()}
    async with node_with(tmp_path, **ports) as node:
        (node.data_dir / "ledger.sqlite").write_bytes(b"this is not a database" * 100)
        status, body = await http(node.web.ports["dashboard"], "/v1/dashboard/ledger")
        assert status == 500 and json.loads(body)["error"] == "internal_error"
        assert "DatabaseError" in json.loads(body)["detail"]
        assert node.api.stats["errors"] == 1
        await honest(node)


async def test_actions_need_the_token_and_foreign_hosts_get_nothing(tmp_path: Path) -> None:
    ports = {"metrics.port": free_port(), "dashboard.port": free_port()}
    async with node_with(tmp_path, **ports) as node:
        port = node.web.ports["dashboard"]
        token_file = node.data_dir / TOKEN_FILE
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        cancel = "/v1/jobs/0123abcd/cancel"
        assert (await http(port, cancel, method="POST"))[0] == 401
        assert (await http(port, cancel, method="POST", headers={"Authorization": "Bearer nope"}))[0] == 401
        status, body = await http(port, cancel, method="POST", headers={"Authorization": f"Bearer {token}"})
        assert status == 404 and json.loads(body)["error"] == "not_found"  # authorised: no such job
        # the dashboard port only reads: the API's other actions are not there at all
        assert (await http(port, "/v1/jobs", method="POST", headers={"Authorization": f"Bearer {token}"}))[0] == 405
        assert (await http(port, "/v1/find", method="POST"))[0] == 404
        # DNS rebinding: a page of another site, re-pointed to 127.0.0.1, reads nothing
        status, body = await http(port, "/v1/id", headers={"Host": f"evil.example:{port}"})
        assert status == 403 and json.loads(body)["error"] == "bad_host"
        # the metrics port serves metrics only
        assert (await http(node.web.ports["metrics"], "/v1/id"))[0] == 404
        assert (await http(node.web.ports["metrics"], "/"))[0] == 404


async def test_private_dashboard_needs_the_token_to_read(tmp_path: Path) -> None:
    port = free_port()  # metrics and dashboard on one port
    async with node_with(tmp_path, **{"metrics.port": port, "dashboard.port": port,
                                      "dashboard.private": True}) as node:
        assert node.web.ports == {"dashboard": port, "metrics": port}
        token = load_token(node.data_dir)
        assert (await http(port, "/v1/id"))[0] == 401
        status, body = await http(port, "/v1/id", headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and json.loads(body)["peer_id"] == node.peer_id
        status, page = await http(port, "/")  # pages hold no data: they load without the token
        assert status == 200 and b"<script src=\"/static/app.js\">" in page
        assert (await http(port, "/metrics"))[0] == 200


def test_a_token_others_could_read_is_replaced(tmp_path: Path) -> None:
    first = load_token(tmp_path)
    assert load_token(tmp_path) == first
    path = tmp_path / TOKEN_FILE
    os.chmod(path, 0o644)
    second = load_token(tmp_path)
    assert second != first and stat.S_IMODE(path.stat().st_mode) == 0o600
