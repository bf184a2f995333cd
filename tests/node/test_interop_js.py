"""Interop: a stock js-libp2p kad-dht finds a CPN daemon as a provider (issue 3).

The JS side (tests/node/interop/find_providers.mjs) is plain js-libp2p 3.x:
TCP, Noise, yamux, identify and ``@libp2p/kad-dht`` on ``/ipfs/kad/1.0.0``,
with no CPN code.  It dials one daemon and runs ``findProviders(CID)`` for a
compute identifier the daemon advertises; the daemon must be among the
providers.  Needs Node.js >= 20 and the packages installed once with
``npm ci --prefix tests/node/interop`` (or ``npm install``); skipped otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from functools import partial
from pathlib import Path

import pytest
import trio

from node.config import load_config
from node.daemon import run_node

INTEROP = Path(__file__).resolve().parent / "interop"
SCRIPT = INTEROP / "find_providers.mjs"


def _skip_reason() -> str | None:
    node = shutil.which("node")
    if node is None:
        return "node (Node.js >= 20) is not installed"
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"node --version failed: {exc}"
    if int(version.lstrip("v").split(".")[0]) < 20:
        return f"Node.js {version} is too old (js-libp2p 3.x needs >= 20)"
    if not (INTEROP / "node_modules" / "@libp2p" / "kad-dht").is_dir():
        return "js packages missing: run `npm install --prefix tests/node/interop`"
    return None


pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())),
]


async def test_js_libp2p_finds_daemon_as_provider(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        {
            "node.data_dir": str(tmp_path / "n0"),
            "node.listen": ["/ip4/127.0.0.1/tcp/0"],
            "discovery.fake_gpus": "h100:1",
        },
    )
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            node = await nursery.start(partial(run_node, cfg))
        try:
            by_id = {i["id"]: i["cid"] for i in node.discovery.advertised}
            cid = by_id["cpn:gpu/nvidia/h100"]
            addr = next(a for a in node.p2p.listen_addrs if "/tcp/" in a)
            with trio.fail_after(60):
                proc = await trio.run_process(
                    ["node", str(SCRIPT), addr, cid, "30000"],
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                )
            out = proc.stdout.decode().strip().splitlines()
            assert out, f"no output from the JS side: {proc.stderr.decode()[-2000:]}"
            answer = json.loads(out[-1])
            assert proc.returncode == 0, (answer, proc.stderr.decode()[-2000:])
            assert node.peer_id in answer["providers"]
            assert answer["self"] != node.peer_id
        finally:
            node.stop()
