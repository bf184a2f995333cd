"""node/reach.py: address scopes, what is announced, verdicts, NAT type, choices, token bucket."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load_config
from node.reach import (
    DialBack,
    Observation,
    RelayBook,
    RelayChoice,
    RelayPolicy,
    Scope,
    TokenBucket,
    announce,
    choose_relays,
    choose_servers,
    circuit_addr,
    ip_scope,
    is_circuit,
    nat_type,
    public_ip,
    split_circuit,
    verdict,
)

RELAY = "12D3KooWHr5jeQnHj9He9DNo7gMWXFRfAZeRcupsCSqJUw8emXgR"
ME = "12D3KooWCrDQpX4nnAZphz6WZGx7MJhGJo5NWJ2ZtsoCcRh7Rrbb"


@pytest.mark.parametrize(
    ("ip", "scope"),
    [
        ("198.51.100.10", Scope.PUBLIC),  # documentation ranges: the testbed's "internet"
        ("203.0.113.2", Scope.PUBLIC),
        ("192.0.2.1", Scope.PUBLIC),
        ("8.8.8.8", Scope.PUBLIC),
        ("10.1.0.2", Scope.PRIVATE),
        ("172.16.5.4", Scope.PRIVATE),
        ("172.32.0.1", Scope.PUBLIC),  # just outside 172.16/12
        ("192.168.1.2", Scope.PRIVATE),
        ("100.64.0.1", Scope.PRIVATE),  # carrier-grade NAT
        ("169.254.1.1", Scope.PRIVATE),
        ("0.0.0.0", Scope.PRIVATE),
        ("127.0.0.1", Scope.LOOPBACK),
        ("127.8.9.10", Scope.LOOPBACK),
        ("::1", Scope.LOOPBACK),
        ("fd00::1", Scope.PRIVATE),
        ("fe80::1", Scope.PRIVATE),
        ("2001:db8::1", Scope.PUBLIC),
        ("::ffff:192.168.1.2", Scope.PRIVATE),
        ("not-an-ip", Scope.PRIVATE),
    ],
)
def test_ip_scope_uses_an_explicit_list(ip: str, scope: Scope) -> None:
    assert ip_scope(ip) is scope


def test_circuit_addresses() -> None:
    addr = circuit_addr("/ip4/198.51.100.10/tcp/4001", RELAY)
    assert addr == f"/ip4/198.51.100.10/tcp/4001/p2p/{RELAY}/p2p-circuit"
    assert is_circuit(addr) and not is_circuit("/ip4/198.51.100.10/tcp/4001")
    assert split_circuit(addr) == ("/ip4/198.51.100.10/tcp/4001", RELAY, None)
    assert split_circuit(f"{addr}/p2p/{ME}") == ("/ip4/198.51.100.10/tcp/4001", RELAY, ME)
    assert split_circuit("/ip4/198.51.100.10/tcp/4001") is None
    assert split_circuit(f"/p2p/{RELAY}/p2p-circuit") is None  # no transport to reach the relay
    assert split_circuit(f"/ip4/1.2.3.4/tcp/1/p2p-circuit/p2p/{ME}") is None  # no relay peer
    assert split_circuit("garbage") is None


def test_verdict_is_the_majority_of_answers() -> None:
    ok = DialBack("a", True, "/ip4/198.51.100.11/tcp/4001")
    assert verdict([ok, DialBack("b", True, ok.addr), DialBack("c", False)]) == (
        "public", ("/ip4/198.51.100.11/tcp/4001",))
    assert verdict([ok, DialBack("b", False), DialBack("c", False)]) == ("private", ())
    assert verdict([ok, DialBack("b", False)]) == ("unknown", ())  # a tie decides nothing
    assert verdict([DialBack("a", None), DialBack("b", None)]) == ("unknown", ())
    assert verdict([DialBack("a", None), DialBack("b", False)]) == ("private", ())  # silence abstains
    assert verdict([]) == ("unknown", ())


def obs(observer: str, ip: str, port: int, local: tuple[str, int]) -> Observation:
    return Observation(observer, ip, port, local[0], local[1])


def test_public_ip_needs_verification_or_two_observers() -> None:
    one = [obs("a", "198.51.100.100", 40000, ("192.168.1.2", 40000))]
    assert public_ip(one) is None
    two = one + [obs("b", "198.51.100.100", 41000, ("192.168.1.2", 41000))]
    assert public_ip(two) == "198.51.100.100"
    same_peer_twice = one + [obs("a", "198.51.100.100", 41000, ("192.168.1.2", 41000))]
    assert public_ip(same_peer_twice) is None
    lan = [obs(p, "192.168.1.9", 1, ("192.168.1.2", 1)) for p in "ab"]
    assert public_ip(lan) is None  # a LAN peer's view is not our public IP
    assert public_ip(one, verified=["/ip4/198.51.100.100/tcp/4001"]) == "198.51.100.100"
    assert public_ip([], verified=["/ip4/127.0.0.1/tcp/4001"]) is None


def test_nat_type_from_ports_peers_see() -> None:
    assert nat_type([]) == "unknown"
    assert nat_type([obs("a", "203.0.113.2", 5000, ("203.0.113.2", 5000))]) == "none"
    eim = [obs(p, "198.51.100.100", 40000 + i, ("192.168.1.2", 40000 + i))
           for i, p in enumerate("ab")]
    assert nat_type(eim) == "eim"
    sym = eim + [obs("c", "198.51.100.102", 19231, ("10.1.0.2", 40007))]
    assert nat_type(sym) == "symmetric"
    assert nat_type([obs("a", "192.168.1.9", 1, ("192.168.1.2", 2))]) == "unknown"


PUB = "/ip4/198.51.100.11/tcp/4001"
LAN = "/ip4/192.168.1.2/tcp/4001"
LOOP = "/ip4/127.0.0.1/tcp/4001"
CIRCUIT = circuit_addr("/ip4/198.51.100.10/tcp/4001", RELAY)


def test_announce_loopback_only_to_local_peers() -> None:
    assert announce([LOOP], audience={Scope.LOOPBACK}, status="unknown") == ((LOOP,), ())
    assert announce([LOOP], audience=set(), status="unknown") == ((LOOP,), ())  # no peers yet
    assert announce([LOOP], audience={Scope.LOOPBACK, Scope.PRIVATE}, status="public") == ((), ())
    assert announce([LOOP], audience={Scope.PUBLIC}, status="public", verified=[LOOP]) == ((), ())


def test_announce_private_addresses_never_to_the_internet() -> None:
    assert announce([LAN], audience={Scope.PRIVATE}, status="unknown") == ((LAN,), ())
    for status in ("public", "private", "unknown"):
        direct, relays = announce([LAN], audience={Scope.PUBLIC, Scope.PRIVATE}, status=status,
                                  verified=[LAN], relay_addrs=[CIRCUIT])
        assert direct == () and relays == (CIRCUIT,)


def test_announce_public_addresses_once_verified() -> None:
    internet = {Scope.PUBLIC}
    assert announce([PUB], audience=internet, status="unknown") == ((), ())
    assert announce([PUB], audience=internet, status="private") == ((), ())  # e.g. firewalled
    assert announce([PUB], audience=internet, status="public", verified=[PUB]) == ((PUB,), ())
    # A port forward: the router's address was verified, we listen on a private one.
    fwd = "/ip4/198.51.100.100/tcp/4001"
    assert announce([LAN], audience=internet, status="public", verified=[fwd]) == ((fwd,), ())
    # No peer on the internet yet (the first node of a network): nobody to mislead;
    # announced so, it is kept (``keep``) while the first check runs, not after.
    assert announce([PUB], audience=set(), status="unknown") == ((PUB,), ())
    assert announce([PUB], audience=internet, status="unknown", keep=[PUB]) == ((PUB,), ())
    assert announce([PUB], audience=internet, status="private", keep=[PUB]) == ((), ())


def test_announce_expands_a_wildcard_listen_address() -> None:
    wild = ["/ip4/0.0.0.0/tcp/4001"]
    direct, _ = announce(wild, audience={Scope.PUBLIC}, status="public",
                         observed_ips=["198.51.100.11"], verified=[PUB])
    assert direct == (PUB,)
    direct, _ = announce(wild, audience={Scope.LOOPBACK}, status="unknown")
    assert direct == (LOOP,)
    direct, _ = announce(wild, audience={Scope.PRIVATE}, status="unknown",
                         observed_ips=["192.168.1.2"])
    assert direct == (LAN,)
    # Circuit addresses among listen addresses are never announced as direct.
    assert announce([CIRCUIT], audience=set(), status="unknown") == ((), ())


def test_choose_servers_prefers_peers_on_the_internet() -> None:
    peers = {"p1": "198.51.100.10", "p2": "192.168.1.7", "p3": "198.51.100.12", "p4": "127.0.0.1"}
    assert choose_servers(peers) == ["p1", "p3"]
    assert choose_servers({"p2": "192.168.1.7", "p4": "127.0.0.1"}) == ["p2", "p4"]
    many = {f"p{i}": f"198.51.100.{i}" for i in range(10, 20)}
    assert len(choose_servers(many)) == 4
    assert choose_servers({}) == []


def test_choose_relays_bootstrap_first_skipping_held_and_failed() -> None:
    book = RelayBook()
    cands = [RelayChoice("x", False), RelayChoice("b1", True), RelayChoice("y", False),
             RelayChoice("b2", True)]
    assert choose_relays(cands, holding=[], book=book, now=0, want=2) == ["b1", "b2", "x", "y"]
    assert choose_relays(cands, holding=["b1"], book=book, now=0, want=2) == ["b2", "x", "y"]
    assert choose_relays(cands, holding=["b1", "x"], book=book, now=0, want=2) == []
    book.failed("b2", now=0)  # backs off 2 s, then 4 s, 8 s ... (at most max_s)
    assert book.next_retry(now=0) == 2
    assert choose_relays(cands, holding=["b1"], book=book, now=1, want=2) == ["x", "y"]
    assert choose_relays(cands, holding=["b1"], book=book, now=2, want=2) == ["b2", "x", "y"]
    book.failed("b2", now=2)
    assert not book.usable("b2", now=5) and book.usable("b2", now=6)
    for _ in range(20):
        book.failed("b2", now=6)
    assert book.failed_until["b2"] == 6 + book.max_s
    book.succeeded("b2")
    assert book.usable("b2", now=6) and book.next_retry(now=6) is None


def test_token_bucket_paces_to_its_rate() -> None:
    bucket = TokenBucket(rate=1000, burst=500, now=0.0)
    assert bucket.take(500, now=0.0) == 0.0  # the burst is there at once
    assert bucket.take(1000, now=0.0) == pytest.approx(1.0)  # then 1000 B/s
    assert bucket.take(1000, now=1.0) == pytest.approx(1.0)  # the debt carries over
    assert bucket.take(0, now=10.0) == 0.0  # idle time refills up to the burst only
    assert bucket.tokens == 500
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0)


def test_relay_section_becomes_the_policy(tmp_path: Path) -> None:
    cfg = load_config(None, {"relay.circuit_mib": 64, "relay.circuit_rate_kib": 512})
    policy = cfg.relay.policy()
    assert policy == RelayPolicy(circuit_bytes=64 << 20, circuit_rate=512 << 10)
    assert policy.max_reservations > 4  # py-libp2p's default would hold 4 private nodes
    assert load_config(None).relay.policy() == RelayPolicy()
    with pytest.raises(ConfigError, match=r"^relay\.reservation_ttl_s:"):
        load_config(None, {"relay.reservation_ttl_s": 30})  # py-libp2p's refresher spins at <= 30 s
