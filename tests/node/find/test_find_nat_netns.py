"""A provider behind a NAT is found by a public finder (marker ``netns``).

Real daemons (``cpn node run``) in the NAT testbed (``tools/testnet up --nat``):
two public nodes and one behind an endpoint-independent NAT.  The private node
learns it is private, holds relay slots, and advertises relay circuits and no
private address; a public node's ``find`` fetches its advert through a relay
and offers it with exactly those addresses.  No advert anywhere carries a
private or loopback address.  The daemons report ready only once they know
their reachability (node.p2p.open_host waits for it), so nothing is polled.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from node.api.client import ApiClient
from node.reach import Scope, addr_scope, split_circuit

ROOT = Path(__file__).resolve().parents[3]
TESTNET = str(ROOT / "tools" / "testnet")
pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("nft") is None,
                       reason="netns: nft is not installed (tools/install installs nftables)"),
]


def run(*cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)


def usable_from_internet(addr: str) -> bool:
    circuit = split_circuit(addr)
    return addr_scope(circuit[0] if circuit else addr) is Scope.PUBLIC


def test_private_provider_found_through_a_relay(tmp_path: Path) -> None:
    env = dict(os.environ, CPN_TESTNET_DIR=str(tmp_path / "tn"))
    try:
        up = run(TESTNET, "up", "--nat", "--topology", "pub=public:2,home=eim:1", "--json",
                 env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        nodes: dict[str, dict[str, Any]] = {n["name"]: n for n in json.loads(up.stdout)}
        api = {name: ApiClient(socket_path=n["api"], timeout=60) for name, n in nodes.items()}
        home = nodes["home-0"]

        reach = api["home-0"].get("/v1/id")["reachability"]
        assert reach["status"] == "private" and reach["nat_type"] == "eim", reach
        assert reach["direct_addrs"] == [] and reach["relay_addrs"], reach
        relays = {split_circuit(a)[1] for a in reach["relay_addrs"]}  # type: ignore[index]
        assert relays <= {nodes["pub-0"]["peer_id"], nodes["pub-1"]["peer_id"]}
        for name in ("pub-0", "pub-1"):
            pub = api[name].get("/v1/id")["reachability"]
            assert pub["status"] == "public"
            assert pub["direct_addrs"] == [f"/ip4/{nodes[name]['ip']}/tcp/{nodes[name]['addr'].split('/')[4]}"]

        # Every advert, as its node serves it, carries only addresses the internet can use.
        for name in nodes:
            addrs = api[name].get("/v1/advert")["record"]["addrs"]
            assert addrs and all(usable_from_internet(a) for a in addrs), (name, addrs)
        # (A second relay slot may come after the first advert: that advert then follows.)
        advertised = api["home-0"].get("/v1/advert")["record"]["addrs"]
        assert advertised and all(split_circuit(a) is not None for a in advertised), advertised

        found = api["pub-1"].post("/v1/find", {"timeout": 20, "limit": 10})
        offers = {o["peer_id"]: o for o in found["offers"]}
        assert home["peer_id"] in offers, found["candidates"]
        addrs = offers[home["peer_id"]]["addrs"]
        assert addrs and all(split_circuit(a) is not None for a in addrs), addrs
        assert {split_circuit(a)[1] for a in addrs} <= relays | set(  # type: ignore[index]
            split_circuit(a)[1] for a in api["home-0"].get("/v1/id")["reachability"]["relay_addrs"])
        assert all(usable_from_internet(a) for a in addrs)
        assert not any("192.168." in a or "127.0.0.1" in a for o in offers.values()
                       for a in o["addrs"])
        path = api["pub-1"].get("/v1/id")["reachability"]["connections"].get(home["peer_id"])
        assert path in ("direct", "reversed", "hole-punched", "relayed")
    finally:
        down = run(TESTNET, "down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
