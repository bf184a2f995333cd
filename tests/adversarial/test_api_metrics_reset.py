"""Issue 12, attack 2: one TCP reset on the metrics port killed the daemon.

Any local user could do it (BrokenResourceError escaped ``Metrics._handle`` into
the root nursery).  /metrics is now served by the daemon's one hardened HTTP
server; a burst of resets, mid-request and mid-response, costs those connections
only, and an honest scrape and the local API answer right after.
(tests/node/api/test_web.py has the rest: silent connections, slowloris,
oversized headers, a handler that raises.)
"""

from __future__ import annotations

import socket
import struct
from functools import partial
from pathlib import Path

import pytest
import trio

from node.api.client import ApiClient
from node.config import load_config
from node.daemon import run_node

pytestmark = pytest.mark.adversarial


async def test_tcp_resets_on_the_metrics_port_leave_the_node_serving(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = load_config(None, {"node.data_dir": str(tmp_path / "d"), "node.listen": ["/ip4/127.0.0.1/tcp/0"],
                             "metrics.port": port})
    async with trio.open_nursery() as nursery:
        node = await nursery.start(partial(run_node, cfg))
        for request in (b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port) * 20:
            attacker = trio.socket.socket()
            await attacker.connect(("127.0.0.1", port))
            await attacker.send(request)
            attacker.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            attacker.close()  # RST
        honest = trio.socket.socket()
        await honest.connect(("127.0.0.1", port))
        await honest.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n" % port)
        answer = b""
        while chunk := await honest.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 OK") and b"cpn_peers_connected" in answer
        health = await trio.to_thread.run_sync(ApiClient(node.data_dir, timeout=10).get, "/v1/health")
        assert health["status"] == "ok"
        node.stop()
        nursery.cancel_scope.cancel()
