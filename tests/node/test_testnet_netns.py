"""``tools/testnet up --netns``: two daemons, each in its own network namespace
behind a bridge, find each other; ``down`` leaves no namespace, link or
process behind.  Needs root and iproute2 (marker ``netns``).  Execution stays
off (no podman), which keeps it to a few seconds.  The testnet state goes to
a temporary ``$CPN_TESTNET_DIR`` so a developer's ``.testnet/`` is never
touched."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CPN = str(ROOT / ".venv" / "bin" / "cpn")
pytestmark = pytest.mark.netns


def run(*cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_netns_testnet_up_find_down(tmp_path: Path) -> None:
    state_dir = tmp_path / "tn"
    env = dict(os.environ, CPN_TESTNET_DIR=str(state_dir))
    testnet = str(ROOT / "tools" / "testnet")
    try:
        up = run(testnet, "up", "-n", "2", "--netns", "--json", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        nodes = json.loads(up.stdout)
        state = json.loads((state_dir / "state.json").read_text())
        prefix = state["net"]["prefix"]
        assert prefix.startswith("cpn-tn-") and len(nodes) == 2
        # Each node listens on its own link-local address, inside its namespace.
        for i, node in enumerate(nodes):
            assert node["addr"].startswith(f"/ip4/169.254.1.{i + 1}/tcp/"), node["addr"]
            assert node["netns"] == f"{prefix}n{i}"
            ns = run("ip", "netns", "identify", str(node["pid"]), env=env)
            assert ns.stdout.split() == [node["netns"]]

        status = run(testnet, "status", "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        rows = json.loads(status.stdout)
        assert [(r["health"], r["mode"], r["peers"]) for r in rows] == [("ok", "netns", 1)] * 2

        # node1 (asked from the host through its API socket) finds node0 across the bridge.
        found = run(CPN, "find", "--cpus", "1", "--json", "--timeout", "10",
                    "--data-dir", nodes[1]["data_dir"], env=env)
        assert found.returncode == 0, found.stdout + found.stderr
        offers = {o["peer_id"]: o["addrs"] for o in json.loads(found.stdout)["offers"]}
        assert nodes[0]["peer_id"] in offers
        assert offers[nodes[0]["peer_id"]][0].startswith("/ip4/169.254.1.1/tcp/")
    finally:
        down = run(testnet, "down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not state_dir.exists()
    assert not [n for n in run("ip", "netns", "list", env=env).stdout.split() if n.startswith(prefix)]
    assert prefix not in run("ip", "link", env=env).stdout
    for node in nodes:  # exited (a zombie awaiting init's reaping has an empty cmdline)
        try:
            cmdline = Path(f"/proc/{node['pid']}/cmdline").read_bytes()
        except FileNotFoundError:
            cmdline = b""
        assert node["data_dir"].encode() not in cmdline
