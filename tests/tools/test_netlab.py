"""tools/netlab.py: the NAT testbed's topology planner, and the NAT behaviour
it builds, checked with plain sockets between real network namespaces.

The namespace tests (marker ``netns``; they also need ``nft``) build the
default topology once (no daemons) and check what the public segment sees:
an EIM NAT keeps a connection's source port whatever the destination, a
symmetric NAT does not, a firewall passes its hosts' own addresses and
drops unsolicited inbound, TCP simultaneous open (hole punching) works
through two EIM NATs and not through two symmetric ones, and teardown
leaves nothing in the root namespace.  Every wait is a blocking socket call
with a timeout; "dropped" means the connect timed out (no RST, no ICMP).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))

import netlab  # noqa: E402

needs_nft = pytest.mark.skipif(shutil.which("nft") is None,
                               reason="netns: nft is not installed (tools/install installs nftables)")
netns = [pytest.mark.netns, needs_nft]

DROP_TIMEOUT = 1.0  #: a connect that has not completed by then was dropped (the lab is local)
OK_TIMEOUT = 10.0  #: generous bound for connects that must succeed


def _private(ip: str) -> bool:
    """What a daemon must treat as not publicly reachable."""
    a = ipaddress.ip_address(ip)
    return any(a in ipaddress.ip_network(n) for n in (
        "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
        "127.0.0.0/8", "169.254.0.0/16"))


# --------------------------------------------------------------------------- planning (no root)


def test_default_plan_addresses() -> None:
    layout = netlab.plan(netlab.DEFAULT_TOPOLOGY, "cpn-tn-test-")
    hosts = layout["hosts"]
    kinds = {h["kind"] for h in hosts.values()}
    assert kinds == {"public", "eim", "symmetric", "firewall"}
    for h in hosts.values():
        assert h["ns"].startswith("cpn-tn-test-")
        # What the public segment sees is never private; hosts behind NAT are.
        assert not _private(h["public_ip"])
        assert _private(h["ip"]) == (h["kind"] in ("eim", "symmetric"))
        if h["kind"] in ("public", "firewall"):
            assert h["public_ip"] == h["ip"]
        else:
            assert h["public_ip"] == layout["routers"][h["segment"]]["wan_ip"]
    assert hosts["pub-0"]["roles"] == ["bootstrap", "relay"]
    assert hosts["pub-1"]["roles"] == ["relay"]
    # Two home routers, same private subnet, different WAN addresses.
    assert hosts["eim1-0"]["ip"] == hosts["eim2-0"]["ip"]
    assert hosts["eim1-0"]["public_ip"] != hosts["eim2-0"]["public_ip"]
    # Firewall segments get disjoint public blocks.
    fw = [ipaddress.ip_network(r["subnet"]) for r in layout["routers"].values()
          if r["kind"] == "firewall"]
    assert len(fw) == 2 and not fw[0].overlaps(fw[1])
    public_ips = [h["public_ip"] for h in hosts.values() if h["kind"] in ("public", "firewall")]
    wan_ips = [r["wan_ip"] for r in layout["routers"].values()]
    assert len(set(public_ips + wan_ips)) == len(public_ips) + len(wan_ips)


def test_parse_topology_forms() -> None:
    compact = netlab.parse_topology("pub=public:2, home=eim ,cgn=symmetric:3")
    assert compact == [{"name": "pub", "kind": "public", "hosts": 2},
                       {"name": "home", "kind": "eim", "hosts": 1},
                       {"name": "cgn", "kind": "symmetric", "hosts": 3}]
    assert netlab.parse_topology(json.dumps(compact)) == compact
    with pytest.raises(netlab.LabError, match="NAME=KIND"):
        netlab.parse_topology("pub:public")


@pytest.mark.parametrize(("topology", "message"), [
    ([{"name": "a", "kind": "eim"}], "exactly one public segment"),
    ([{"name": "p", "kind": "public"}, {"name": "q", "kind": "public"}], "exactly one public"),
    ([{"name": "p", "kind": "public"}, {"name": "x", "kind": "cone"}], "not one of"),
    ([{"name": "p", "kind": "public"}, {"name": "p", "kind": "eim"}], "twice"),
    ([{"name": "P!", "kind": "public"}], "segment name"),
    ([{"name": "p", "kind": "public"}, {"name": "h", "kind": "eim", "subnet": "8.8.8.0/24"}],
     "RFC 1918"),
    ([{"name": "p", "kind": "public"}, {"name": "h", "kind": "eim", "roles": [["relay"]]}],
     "only public hosts"),
    ([{"name": "p", "kind": "public", "roles": [["exit"]]}], "unknown role"),
    ([{"name": "p", "kind": "public", "hosts": 99}], "hosts must be"),
])
def test_plan_rejects(topology: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(netlab.LabError, match=message):
        netlab.plan(topology, "cpn-tn-test-")


def test_parse_rate() -> None:
    assert netlab.parse_rate("100mbit") == 100_000_000
    assert netlab.parse_rate("1.5gbit") == 1_500_000_000
    for bad in ("fast", "100mb", "1kbit"):
        with pytest.raises(netlab.LabError):
            netlab.parse_rate(bad)


# --------------------------------------------------------------------------- namespaces


def _root_snapshot() -> tuple[set[str], str]:
    """The root namespace's link names and nft ruleset."""
    def out(*cmd: str) -> str:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    links = {line.split(":")[1].strip().split("@")[0]
             for line in out("ip", "-o", "link").splitlines()}
    return links, out("nft", "list", "ruleset")


def _assert_root_untouched(before: tuple[set[str], str]) -> None:
    """Nothing of ours in the root namespace: no link named as the lab names
    them, no nft table of ours.  (Other links may come and go meanwhile:
    other tests or engineers on a shared machine.)"""
    links, rules = _root_snapshot()
    ours = {n for n in links - before[0]
            if n.startswith(("p-", "r-")) or n in (netlab.WAN_DEV, netlab.LAN_DEV,
                                                     netlab.HUB_BRIDGE, netlab.HOST_DEV)}
    assert ours == set()
    assert "cpn_filter" not in rules and "cpn_nat" not in rules


@pytest.fixture(scope="module")
def lab() -> Iterator[dict[str, Any]]:
    if os.geteuid() != 0 or shutil.which("nft") is None:
        pytest.skip("netns: needs root and nft")
    before = _root_snapshot()
    state: dict[str, Any] = {}
    layout = netlab.plan(netlab.DEFAULT_TOPOLOGY, netlab.new_prefix())
    try:
        netlab.build(layout, state)
        yield layout
    finally:
        left = netlab.teardown(state)
    assert left == []
    _assert_root_untouched(before)


class Conn:
    """Sockets in the lab's namespaces, closed at the end of a test."""

    def __init__(self, layout: dict[str, Any]) -> None:
        self.layout = layout
        self.socks: list[socket.socket] = []

    def ns(self, host: str) -> str:
        return str(self.layout["hosts"][host]["ns"])

    def listen(self, host: str, port: int, reuse: bool = False) -> socket.socket:
        def setup(s: socket.socket) -> None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("0.0.0.0", port))
            s.listen(8)
            s.settimeout(OK_TIMEOUT)

        s = netlab.socket_in(self.ns(host), setup=setup)
        self.socks.append(s)
        return s

    def bound(self, host: str, port: int, timeout: float) -> socket.socket:
        """A TCP socket bound to ``port`` with SO_REUSEPORT (several may share it)."""
        def setup(s: socket.socket) -> None:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("0.0.0.0", port))
            s.settimeout(timeout)

        s = netlab.socket_in(self.ns(host), setup=setup)
        self.socks.append(s)
        return s

    def ip(self, host: str, key: str = "ip") -> str:
        return str(self.layout["hosts"][host][key])

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture
def conn(lab: dict[str, Any]) -> Iterator[Conn]:
    c = Conn(lab)
    yield c
    c.close()


def _observed(c: Conn, src: str, dsts: list[str], sport: int, lport: int) -> list[tuple[str, int]]:
    """Connect ``src`` (from source port ``sport``) to each of ``dsts`` at once;
    return the (address, port) each destination saw the connection come from."""
    listeners = [c.listen(d, lport) for d in dsts]
    seen = []
    for d, lst in zip(dsts, listeners, strict=True):
        s = c.bound(src, sport, OK_TIMEOUT)
        s.connect((c.ip(d), lport))
        accepted, peer = lst.accept()
        accepted.close()
        seen.append(peer)
    return seen


@pytest.mark.netns
@needs_nft
def test_public_reaches_public(conn: Conn) -> None:
    lst = conn.listen("pub-1", 7001)
    s = conn.bound("pub-0", 0, OK_TIMEOUT)
    s.connect((conn.ip("pub-1"), 7001))
    accepted, peer = lst.accept()
    s.sendall(b"ping")
    assert accepted.recv(4) == b"ping"
    accepted.close()
    assert peer[0] == conn.ip("pub-0")


@pytest.mark.netns
@needs_nft
def test_eim_keeps_the_source_port_across_destinations(conn: Conn) -> None:
    seen = _observed(conn, "eim1-0", ["pub-0", "pub-1", "pub-2"], sport=40000, lport=7002)
    assert seen == [(conn.ip("eim1-0", "public_ip"), 40000)] * 3


@pytest.mark.netns
@needs_nft
def test_symmetric_nat_changes_the_source_port(conn: Conn) -> None:
    seen = _observed(conn, "sym1-0", ["pub-0", "pub-1", "pub-2"], sport=40000, lport=7003)
    assert {ip for ip, _ in seen} == {conn.ip("sym1-0", "public_ip")}
    # fully-random: one port per connection, so three destinations see at least two ports
    assert len({port for _, port in seen}) > 1, seen


@pytest.mark.netns
@needs_nft
def test_firewall_passes_outbound_and_drops_unsolicited_inbound(conn: Conn) -> None:
    # Out: no NAT, the public segment sees the host's own (public) address and port.
    assert _observed(conn, "fw1-0", ["pub-0"], sport=40001, lport=7004) == [
        (conn.ip("fw1-0"), 40001)]
    # In: something listens, the address is routed, and still nothing gets through.
    conn.listen("fw1-0", 7005)
    s = conn.bound("pub-0", 0, DROP_TIMEOUT)
    with pytest.raises(TimeoutError):
        s.connect((conn.ip("fw1-0"), 7005))


@pytest.mark.netns
@needs_nft
def test_nat_mapping_accepts_only_the_peer_it_was_made_for(conn: Conn) -> None:
    # eim1-0 listens on 40002 and holds a connection from 40002 to pub-0; the
    # mapping WAN:40002 exists, but pub-1 cannot use it (port-restricted filtering).
    conn.listen("eim1-0", 40002, reuse=True)
    assert _observed(conn, "eim1-0", ["pub-0"], sport=40002, lport=7006) == [
        (conn.ip("eim1-0", "public_ip"), 40002)]
    s = conn.bound("pub-1", 0, DROP_TIMEOUT)
    with pytest.raises(TimeoutError):
        s.connect((conn.ip("eim1-0", "public_ip"), 40002))


def _simultaneous_open(c: Conn, a: str, b: str, port: int, timeout: float) -> dict[str, Any]:
    """Both hosts connect from ``port`` to the other's public address at once
    (what DCUtR does over TCP).  Returns, per host, the peer it reached and
    what it read, or the exception."""
    socks = {h: c.bound(h, port, timeout) for h in (a, b)}
    result: dict[str, Any] = {}

    def dial(me: str, other: str) -> None:
        try:
            socks[me].connect((c.ip(other, "public_ip"), port))
            socks[me].sendall(me.encode())
            result[me] = (socks[me].getpeername(), socks[me].recv(64).decode())
        except OSError as exc:
            result[me] = exc

    threads = [threading.Thread(target=dial, args=pair) for pair in ((a, b), (b, a))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return result


@pytest.mark.netns
@needs_nft
def test_hole_punch_through_two_eim_nats(conn: Conn) -> None:
    got = _simultaneous_open(conn, "eim1-0", "eim2-0", 41000, OK_TIMEOUT)
    assert got == {
        "eim1-0": ((conn.ip("eim2-0", "public_ip"), 41000), "eim2-0"),
        "eim2-0": ((conn.ip("eim1-0", "public_ip"), 41000), "eim1-0"),
    }


@pytest.mark.netns
@needs_nft
def test_hole_punch_fails_through_two_symmetric_nats(conn: Conn) -> None:
    got = _simultaneous_open(conn, "sym1-0", "sym2-0", 41001, 2 * DROP_TIMEOUT)
    assert all(isinstance(v, TimeoutError) for v in got.values()), got


@pytest.mark.netns
@needs_nft
def test_a_failed_build_is_torn_down_completely(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("netns: needs root")
    before = _root_snapshot()
    monkeypatch.setattr(netlab, "ruleset", lambda kind: "this is not nft\n")
    layout = netlab.plan(netlab.DEFAULT_TOPOLOGY, netlab.new_prefix())
    saved: list[str] = []
    state: dict[str, Any] = {}
    with pytest.raises(netlab.LabError, match="nft rules"):
        netlab.build(layout, state, on_change=lambda: saved.append(json.dumps(state)))
    # Recorded before made: the hub, its bridge, the first router and its link.
    assert layout["hub"] in state["namespaces"] and len(state["namespaces"]) == 2
    assert json.loads(saved[-1]) == state
    assert netlab.teardown(state) == []
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert layout["prefix"] not in listed
    _assert_root_untouched(before)
