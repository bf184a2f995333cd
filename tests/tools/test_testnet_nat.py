"""``tools/testnet up --nat``: real daemons in the NAT testbed (a public
bootstrap node and a node behind an EIM NAT), then ``down`` leaves no
namespace, link, nft rule or process behind.  Needs root, iproute2 and nft
(marker ``netns``).  The testnet state goes to a temporary
``$CPN_TESTNET_DIR``, so a developer's ``.testnet/`` is never touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTNET = str(ROOT / "tools" / "testnet")
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("nft") is None,
                       reason="netns: nft is not installed (tools/install installs nftables)"),
]


def run(*cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_nat_testnet_up_status_exec_down(tmp_path: Path) -> None:
    state_dir = tmp_path / "tn"
    env = dict(os.environ, CPN_TESTNET_DIR=str(state_dir))
    prefix = ""
    nodes: list[dict[str, str]] = []
    try:
        up = run(TESTNET, "up", "--nat", "--topology", "pub=public:1,home=eim:1", "--json",
                 env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        nodes = json.loads(up.stdout)
        prefix = json.loads((state_dir / "state.json").read_text())["net"]["prefix"]
        by_name = {n["name"]: n for n in nodes}
        assert sorted(by_name) == ["home-0", "pub-0"]
        pub, home = by_name["pub-0"], by_name["home-0"]
        assert pub["roles"] == ["bootstrap", "relay"] and home["roles"] == []
        # Each daemon listens on its own address, in its own namespace.
        assert pub["addr"].startswith("/ip4/198.51.100.10/tcp/"), pub["addr"]
        assert home["addr"].startswith("/ip4/192.168.1.2/tcp/"), home["addr"]
        assert home["public_ip"] == "198.51.100.100"
        for node in nodes:
            assert node["netns"] == prefix + node["name"]
            ns = run("ip", "netns", "identify", str(node["pid"]), env=env)
            assert ns.stdout.split() == [node["netns"]]

        status = run(TESTNET, "status", "--json", env=env)
        assert status.returncode == 0, status.stdout + status.stderr
        report = json.loads(status.stdout)
        assert report["net"]["mode"] == "nat"
        assert [(r["name"], r["health"], r["mode"]) for r in report["nodes"]] == [
            ("pub-0", "ok", "nat"), ("home-0", "ok", "nat")]
        # The node behind the NAT dialled out to the bootstrap node: they are connected.
        peers = run(str(ROOT / ".venv" / "bin" / "python"), "-c",
                    "import sys, json; from node.api.client import ApiClient; "
                    "print(json.dumps(ApiClient(socket_path=sys.argv[1], timeout=10)"
                    ".get('/v1/peers')))", pub["api"], env=env)
        assert peers.returncode == 0, peers.stderr
        assert home["peer_id"] in json.loads(peers.stdout)["connected"]

        # `exec` runs a command in a host's namespace; the router holds the NAT rule.
        addr = run(TESTNET, "exec", "home-0", "--", "ip", "-4", "-o", "addr", "show", "eth0",
                   env=env)
        assert addr.returncode == 0 and "192.168.1.2/24" in addr.stdout, addr.stderr
        rules = run(TESTNET, "exec", "r-home", "--", "nft", "list", "table", "ip", "cpn_nat",
                    env=env)
        assert rules.returncode == 0 and "masquerade" in rules.stdout, rules.stderr
    finally:
        down = run(TESTNET, "down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not state_dir.exists()
    assert prefix and not [n for n in run("ip", "netns", "list", env=env).stdout.split()
                           if n.startswith(prefix)]
    root_rules = run("nft", "list", "ruleset", env=env).stdout
    assert "cpn_filter" not in root_rules and "cpn_nat" not in root_rules
    for node in nodes:  # exited (a zombie awaiting init's reaping has an empty cmdline)
        try:
            cmdline = Path(f"/proc/{node['pid']}/cmdline").read_bytes()
        except FileNotFoundError:
            cmdline = b""
        assert node["data_dir"].encode() not in cmdline
