"""NAT traversal of the libp2p adapter across real NATs (marker ``netns``).

Real CPN hosts (``node.p2p.open_host``, one process per host:
tests/support/nat_host.py) in the NAT testbed of tools/netlab.py: public
hosts, endpoint-independent (EIM) and symmetric NATs, a firewall, all real
nftables rules in network namespaces.  Checked: each host's reachability
verdict and NAT type; private hosts announce relay circuits and nothing
else, and no private or loopback address ends up in a public peer's
peerstore; two hosts behind EIM NATs are hole punched (DCUtR) to a direct
connection; two behind symmetric NATs stay relayed and their streams work;
a private host whose relay dies reserves on another one.

Every wait is a driver command with a timeout (``wait`` returns when its
condition holds); no sleeps.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.natlab import NatLab, unavailable

from node.reach import Scope, addr_scope, split_circuit

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("nft") is None,
                       reason="netns: nft is not installed (tools/install installs nftables)"),
]

TOPOLOGY = "pub=public:3,eim1=eim,eim2=eim,sym1=symmetric,sym2=symmetric,fw1=firewall"
PRIVATE = ("eim1-0", "eim2-0", "sym1-0", "sym2-0", "fw1-0")


def ok(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["ok"], answer
    return answer


def usable(addr: str) -> bool:
    """A public peer can use this address: a public direct address, or a circuit
    through a relay at a public address."""
    circuit = split_circuit(addr)
    target = circuit[0] if circuit else addr
    return addr_scope(target) is Scope.PUBLIC


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatLab]:
    why = unavailable()
    if why:
        pytest.skip(f"netns: {why}")
    logs: Path = tmp_path_factory.mktemp("natlab")
    with NatLab(TOPOLOGY, log_dir=logs) as lab:
        for name in ("pub-0", "pub-1", "pub-2", *PRIVATE):
            lab.start(name)
        for name in ("pub-0", "pub-1", "pub-2"):
            ok(lab.cmd(name, "wait", status="public", timeout=30))
        for name in PRIVATE:
            ok(lab.cmd(name, "wait", status="private", relays=2, timeout=60))
        yield lab


def test_each_host_knows_its_reachability(lab: NatLab) -> None:
    expect = {"eim1-0": "eim", "eim2-0": "eim", "sym1-0": "symmetric", "sym2-0": "symmetric",
              "fw1-0": "none", "pub-0": "none", "pub-1": "none", "pub-2": "none"}
    for name, nat in expect.items():
        info = ok(lab.cmd(name, "info"))
        reach = info["reach"]
        host = lab.hosts[name]
        listen = f"/ip4/{host['ip']}/tcp/4001"
        if host["kind"] == "public":
            assert reach["status"] == "public", (name, reach)
            assert info["announced"] == [listen] and reach["public_ip"] == host["ip"]
            assert info["offering"]  # public nodes relay for others
            continue
        assert reach["status"] == "private", (name, reach)
        assert reach["nat_type"] == nat or (nat == "none" and reach["nat_type"] == "unknown"), (
            name, reach)
        # Announced: circuits through two public relays, and no direct address at all
        # (a firewalled host's address looks public but nobody can dial it).
        assert reach["direct_addrs"] == [] and len(reach["relay_addrs"]) >= 2, (name, reach)
        assert info["announced"] == reach["relay_addrs"]
        relays = {split_circuit(a)[1] for a in info["announced"]}  # type: ignore[index]
        assert relays == set(info["relays"]) and len(relays) == 2
        assert relays <= {lab.peer(p) for p in ("pub-0", "pub-1", "pub-2")}
        assert all(usable(a) for a in info["announced"])
        assert not info["offering"]


def test_no_private_or_loopback_address_reaches_a_public_peer(lab: NatLab) -> None:
    private_ips = {lab.hosts[n]["ip"] for n in PRIVATE}
    for name in ("pub-0", "pub-1", "pub-2"):
        seen = ok(lab.cmd(name, "peerstore"))["addrs"]
        for peer, addrs in seen.items():
            bad = [a for a in addrs if not usable(a)]
            assert bad == [], (name, peer, bad)
            assert not any(ip in a for ip in private_ips for a in addrs)


def test_two_eim_nats_are_hole_punched(lab: NatLab) -> None:
    target = ok(lab.cmd("eim1-0", "info"))
    first = ok(lab.cmd("eim2-0", "echo", peer=target["peer_id"], addrs=target["announced"],
                       size=256 << 10))
    assert first["bytes"] == 256 << 10  # through a relay, or already punched
    eim1, eim2 = lab.peer("eim1-0"), lab.peer("eim2-0")
    ok(lab.cmd("eim2-0", "wait", peer=eim1, paths=["hole-punched"], timeout=40))
    ok(lab.cmd("eim1-0", "wait", peer=eim2, paths=["hole-punched"], timeout=10))
    again = ok(lab.cmd("eim2-0", "echo", peer=eim1, size=1 << 20))
    assert again["path"] == "hole-punched" and again["bytes"] == 1 << 20


def test_two_symmetric_nats_stay_relayed_and_work(lab: NatLab) -> None:
    target = ok(lab.cmd("sym1-0", "info"))
    sym1 = target["peer_id"]
    first = ok(lab.cmd("sym2-0", "echo", peer=sym1, addrs=target["announced"], size=256 << 10))
    assert first["path"] == "relayed"
    # One whole DCUtR attempt (exchange over the relay, three rounds of dials) fails:
    ok(lab.cmd("sym2-0", "wait", peer=sym1, punch_tries=1, timeout=90))
    again = ok(lab.cmd("sym2-0", "echo", peer=sym1, size=256 << 10))
    assert again["path"] == "relayed" and again["bytes"] == 256 << 10
    assert ok(lab.cmd("sym1-0", "info"))["paths"][lab.peer("sym2-0")] == "relayed"


def test_a_private_host_whose_relay_dies_reserves_elsewhere(tmp_path: Path) -> None:
    why = unavailable()
    if why:
        pytest.skip(f"netns: {why}")
    with NatLab("pub=public:3,home=eim,cgn=symmetric", log_dir=tmp_path) as lab:
        for name in ("pub-0", "pub-1", "pub-2", "home-0", "cgn-0"):
            lab.start(name)
        for name in ("home-0", "cgn-0"):
            ok(lab.cmd(name, "wait", status="private", relays=2, timeout=60))
        before = ok(lab.cmd("home-0", "info"))
        names = {lab.peer(n): n for n in ("pub-0", "pub-1", "pub-2")}
        dead = before["relays"][0]
        lab.stop(names[dead], kill=True)  # SIGKILL: no goodbye
        after = ok(lab.cmd("home-0", "wait", relays=2, without_relay=dead, timeout=60))
        assert dead not in after["relays"] and len(after["relays"]) == 2
        assert not any(dead in a for a in after["announced"])
        assert all(usable(a) for a in after["announced"])
        # A peer that only knows the new announcement reaches home-0 through it.
        reply = ok(lab.cmd("cgn-0", "echo", peer=after["peer_id"], addrs=after["announced"],
                           size=64 << 10))
        assert reply["bytes"] == 64 << 10 and reply["path"] in ("relayed", "hole-punched")
