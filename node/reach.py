"""Reachability: which of our addresses a peer can use, and how a node learns it.

Pure logic (no libp2p, no IO, no clock): the adapter (:mod:`node.p2p.nat`)
feeds it what the network told us and acts on the answers.

* **Address scope** with an explicit list of ranges that are not reachable
  from the internet (:data:`PRIVATE_NETWORKS`).  Python's
  ``ipaddress.is_private`` / ``is_global`` are not used: they call the
  documentation ranges private (198.51.100.0/24 is ``is_private``), and the
  NAT testbed uses those ranges for its public hosts.
* **What to announce** (:func:`announce`): a loopback address only to a
  node whose peers are all on this host, a private address only while no
  peer reaches us from the public internet, a public address only once
  AutoNAT verified it (a firewalled host's address looks public), and the
  relay circuit addresses of a private node.
* **Verdicts**: AutoNAT answers from several servers -> public / private by
  majority (:func:`verdict`); identify's observations -> our public IP
  (agreed by two observers, :func:`public_ip`) and the NAT's mapping
  behaviour (:func:`nat_type`).
* **Choices**: AutoNAT servers (:func:`choose_servers`) and relays
  (:func:`choose_relays`); the relay's bandwidth limit (:class:`TokenBucket`).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from node.addrs import AddrError, parse

__all__ = [
    "PRIVATE_NETWORKS",
    "Scope",
    "ip_scope",
    "addr_ip",
    "addr_scope",
    "is_circuit",
    "circuit_addr",
    "split_circuit",
    "Status",
    "NatType",
    "Path",
    "PATHS",
    "Reachability",
    "DialBack",
    "Observation",
    "verdict",
    "public_ip",
    "nat_type",
    "announce",
    "choose_servers",
    "choose_relays",
    "TokenBucket",
    "RelayPolicy",
]

#: Ranges a peer on the public internet cannot dial.  Carrier-grade NAT
#: (100.64.0.0/10) is in the list: an address there is behind the ISP's NAT.
PRIVATE_NETWORKS: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",  # link-local
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
    )
)
LOOPBACK_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
UNSPECIFIED = ("0.0.0.0", "::")


class Scope(enum.Enum):
    """Who can dial an address: this host only, its own network, anyone."""

    LOOPBACK = "loopback"
    PRIVATE = "private"
    PUBLIC = "public"


Status = Literal["public", "private", "unknown"]
#: ``none``: no NAT (our own address is what peers see: public or firewalled);
#: ``eim``: the NAT keeps a connection's source port for every destination
#: (endpoint-independent, port-preserving: TCP hole punching works);
#: ``symmetric``: peers see another port than the one we used (hole punching
#: by port prediction fails); ``unknown``: nothing observed yet.
NatType = Literal["none", "eim", "symmetric", "unknown"]
#: How a connection to a peer was made: dialled directly; through a relay
#: only; upgraded from relayed to direct by a DCUtR hole punch (simultaneous
#: open); or made direct by a plain dial after a relayed one (the dialable
#: side was dialled by the other: "reversed").
Path = Literal["direct", "relayed", "hole-punched", "reversed"]
PATHS: tuple[Path, ...] = ("direct", "relayed", "hole-punched", "reversed")


@functools.lru_cache(maxsize=4096)
def ip_scope(ip: str) -> Scope:
    """The scope of an IP literal (an unparsable one counts as private: never announced)."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return Scope.PRIVATE
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if any(a in n for n in LOOPBACK_NETWORKS):
        return Scope.LOOPBACK
    if a.is_unspecified or any(a in n for n in PRIVATE_NETWORKS):
        return Scope.PRIVATE
    return Scope.PUBLIC


def _items(addr: str) -> list[tuple[str, str]]:
    try:
        return [(p.name, str(v) if v is not None else "") for p, v in parse(addr).items()]
    except AddrError:
        return []


def addr_ip(addr: str) -> str | None:
    """The first IP of a multiaddr (the relay's, for a circuit address)."""
    for name, value in _items(addr):
        if name in ("ip4", "ip6"):
            return value
    return None


def addr_port(addr: str) -> int | None:
    for name, value in _items(addr):
        if name == "tcp":
            return int(value)
    return None


def is_circuit(addr: str) -> bool:
    return any(name == "p2p-circuit" for name, _ in _items(addr))


def addr_scope(addr: str) -> Scope | None:
    """The scope of a direct address's IP (None for a circuit or IP-less address)."""
    if is_circuit(addr):
        return None
    ip = addr_ip(addr)
    return ip_scope(ip) if ip is not None else None


def circuit_addr(relay_transport: str, relay_id: str) -> str:
    """``<relay address>/p2p/<relay>/p2p-circuit``: how peers reach us through a relay."""
    return f"{relay_transport}/p2p/{relay_id}/p2p-circuit"


def split_circuit(addr: str) -> tuple[str, str, str | None] | None:
    """``(relay transport, relay peer ID, target peer ID or None)`` of a circuit address.

    None when ``addr`` is not ``<transport>/p2p/<relay>/p2p-circuit[/p2p/<target>]``
    with a non-empty transport.
    """
    items = _items(addr)
    names = [n for n, _ in items]
    if names.count("p2p-circuit") != 1:
        return None
    i = names.index("p2p-circuit")
    if i < 2 or names[i - 1] != "p2p":
        return None
    rest = items[i + 1 :]
    if rest and (len(rest) != 1 or rest[0][0] != "p2p"):
        return None
    transport = "".join(f"/{n}/{v}" for n, v in items[: i - 1])
    return transport, items[i - 1][1], rest[0][1] if rest else None


# --------------------------------------------------------------------------- the value


@dataclass(frozen=True)
class Reachability:
    """What this node knows about how others can reach it (``GET /v1/id``)."""

    status: Status = "unknown"  #: AutoNAT's majority verdict
    public_ip: str | None = None  #: what the internet sees us as (verified or agreed)
    nat_type: NatType = "unknown"
    direct_addrs: tuple[str, ...] = ()  #: direct addresses we announce (verified where public)
    relay_addrs: tuple[str, ...] = ()  #: ``.../p2p/<relay>/p2p-circuit`` we hold slots on
    servers: int = 0  #: AutoNAT servers that answered the last check

    @property
    def addrs(self) -> tuple[str, ...]:
        """Everything announced: direct addresses first, then relay addresses."""
        return self.direct_addrs + self.relay_addrs

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "public_ip": self.public_ip,
            "nat_type": self.nat_type,
            "direct_addrs": list(self.direct_addrs),
            "relay_addrs": list(self.relay_addrs),
            "autonat_servers": self.servers,
        }


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class DialBack:
    """One AutoNAT server's answer: ``ok`` True (it dialled ``addr``), False (it
    could not, or refused every address), None (no answer: abstains)."""

    server: str
    ok: bool | None
    addr: str | None = None


def verdict(answers: Iterable[DialBack]) -> tuple[Status, tuple[str, ...]]:
    """Majority of the servers that answered; ties and silence are ``unknown``.

    Returns the status and the addresses servers reached us at (verified).
    """
    answers = list(answers)
    yes = [a for a in answers if a.ok is True]
    no = sum(1 for a in answers if a.ok is False)
    verified = tuple(dict.fromkeys(a.addr for a in yes if a.addr))
    if len(yes) > no:
        return "public", verified
    if no > len(yes):
        return "private", ()
    return "unknown", ()


@dataclass(frozen=True)
class Observation:
    """What one peer saw of one direct connection we dialled (identify's observed address)."""

    observer: str  #: the peer (or its network group: one vote per group)
    observed_ip: str
    observed_port: int
    local_ip: str
    local_port: int


def public_ip(observations: Iterable[Observation], verified: Iterable[str] = ()) -> str | None:
    """Our public IP: a verified address's IP, else a public observed IP that at
    least two different observers agree on (the most reported)."""
    for addr in verified:
        ip = addr_ip(addr)
        if ip is not None and ip_scope(ip) is Scope.PUBLIC:
            return ip
    votes: dict[str, set[str]] = {}
    for o in observations:
        if ip_scope(o.observed_ip) is Scope.PUBLIC:
            votes.setdefault(o.observed_ip, set()).add(o.observer)
    agreed = [(len(v), ip) for ip, v in votes.items() if len(v) >= 2]
    return max(agreed)[1] if agreed else None


def nat_type(observations: Iterable[Observation]) -> NatType:
    """The NAT's mapping behaviour from connections seen from the public side.

    The same IP as ours: no NAT.  Otherwise the NAT kept our source port on
    every observed connection (port-preserving, endpoint-independent: EIM) or
    changed it on some (symmetric, or a port-rewriting NAT: both defeat port
    prediction).  Only observations of public observed IPs count: a peer on
    our own LAN sees our private address and says nothing about the NAT.
    """
    seen = [o for o in observations if ip_scope(o.observed_ip) is Scope.PUBLIC]
    if not seen:
        return "unknown"
    if any(o.observed_ip == o.local_ip for o in seen):
        return "none"
    if all(o.observed_port == o.local_port for o in seen):
        return "eim"
    return "symmetric"


# --------------------------------------------------------------------------- announcing


def _expand(listen: Sequence[str], observed_ips: Iterable[str], loopback: bool) -> list[str]:
    """Listen addresses with a wildcard IP replaced by the IPs peers see us at
    (and 127.0.0.1 when peers on this host may dial it)."""
    ips = list(dict.fromkeys(observed_ips))
    out: list[str] = []
    for addr in listen:
        if is_circuit(addr):
            continue
        ip, port = addr_ip(addr), addr_port(addr)
        if ip not in UNSPECIFIED or port is None:
            out.append(addr)
            continue
        v6 = ip == "::"
        for o in ips + (["::1" if v6 else "127.0.0.1"] if loopback else []):
            if (":" in o) == v6:
                out.append(f"/ip{6 if v6 else 4}/{o}/tcp/{port}")
    return list(dict.fromkeys(out))


def announce(
    listen: Sequence[str],
    *,
    audience: Iterable[Scope],
    status: Status,
    verified: Iterable[str] = (),
    observed_ips: Iterable[str] = (),
    relay_addrs: Sequence[str] = (),
    keep: Iterable[str] = (),
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The addresses to announce to peers: ``(direct, relay)``.

    ``audience`` is the scopes of the addresses our peers reach us from (the
    remote IPs of our direct connections; empty when we have none yet).
    One list goes to every peer (identify, kad provider records, the signed
    advert), so an address is announced only if *every* peer could use it:

    * loopback: all peers are on this host (a loopback testnet);
    * private: no peer reaches us from the public internet (a LAN);
    * public: verified by AutoNAT, or no peer is on the public internet (and
      then, in ``keep``, until the first verdict: the first node of a network
      announced it before anyone could check it, and should not go silent while
      the first check runs);
    * relay addresses: always (only a private node holds reservations).
    """
    scopes = frozenset(audience)
    local_only = scopes <= {Scope.LOOPBACK}
    internet = Scope.PUBLIC in scopes
    checked = set(verified)
    kept = set(keep) if status == "unknown" else set()
    direct: list[str] = []
    for addr in _expand(listen, observed_ips, local_only):
        scope = addr_scope(addr)
        if scope is Scope.LOOPBACK and local_only:
            direct.append(addr)
        elif scope is Scope.PRIVATE and not internet:
            direct.append(addr)
        elif scope is Scope.PUBLIC and (
            not internet or (status == "public" and addr in checked) or addr in kept
        ):
            direct.append(addr)
    if status == "public":
        # A verified address we do not listen on (a port forward on the router).
        direct += [a for a in verified if a not in direct and addr_scope(a) is Scope.PUBLIC]
    return tuple(dict.fromkeys(direct)), tuple(dict.fromkeys(relay_addrs))


# --------------------------------------------------------------------------- choices


def choose_servers(peers: Mapping[str, str], limit: int = 4) -> list[str]:
    """AutoNAT servers among directly connected peers (peer -> remote IP).

    A server must see us from outside our network for its dial-back to mean
    anything: when any peer reaches us from a public address only those are
    asked; otherwise (a LAN or loopback network) any peer.  Sorted by peer ID,
    so repeated checks ask the same servers.
    """
    public = sorted(p for p, ip in peers.items() if ip_scope(ip) is Scope.PUBLIC)
    return (public or sorted(peers))[:limit]


@dataclass
class RelayChoice:
    """A relay we could reserve a slot on."""

    peer: str
    bootstrap: bool  #: named in ``node.bootstrap`` (tried first)


@dataclass
class RelayBook:
    """Relays that refused or failed us recently: not asked again before their
    back-off ends (``base_s``, doubling with each failure in a row, at most
    ``max_s``; a relay that just started may not offer relaying yet)."""

    base_s: float = 2.0
    max_s: float = 300.0
    failed_until: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def failed(self, peer: str, now: float) -> None:
        if len(self.failed_until) >= 1024:  # forget back-offs long over
            for p in [p for p, u in self.failed_until.items() if u + self.max_s < now]:
                self.failed_until.pop(p, None)
                self.failures.pop(p, None)
        n = self.failures[peer] = self.failures.get(peer, 0) + 1
        self.failed_until[peer] = now + min(self.max_s, self.base_s * 2 ** (n - 1))

    def succeeded(self, peer: str) -> None:
        self.failures.pop(peer, None)
        self.failed_until.pop(peer, None)

    def usable(self, peer: str, now: float) -> bool:
        until = self.failed_until.get(peer)
        return until is None or until <= now

    def next_retry(self, now: float) -> float | None:
        """Seconds until the first back-off ends (None: nobody is backing off)."""
        waits = [u - now for u in self.failed_until.values() if u > now]
        return min(waits) if waits else None


def choose_relays(
    candidates: Iterable[RelayChoice], *, holding: Iterable[str], book: RelayBook, now: float,
    want: int,
) -> list[str]:
    """The relays to try next so that ``want`` are held: bootstrap nodes first
    (operators run them to be relays), then other public peers in the order
    given, skipping those held and those that failed recently."""
    held = set(holding)
    need = want - len(held)
    if need <= 0:
        return []
    ordered = sorted(candidates, key=lambda c: not c.bootstrap)  # stable: keeps given order
    out = [c.peer for c in ordered if c.peer not in held and book.usable(c.peer, now)]
    return list(dict.fromkeys(out))


def audience_of(remote_ips: Iterable[str]) -> frozenset[Scope]:
    return frozenset(ip_scope(ip) for ip in remote_ips)


def majority_ip(ips: Iterable[str]) -> str | None:
    """The most common value (ties: the smallest), or None."""
    c = Counter(ips)
    if not c:
        return None
    return min(c, key=lambda ip: (-c[ip], ip))


# --------------------------------------------------------------------------- relays


@dataclass(frozen=True)
class RelayPolicy:
    """Relay settings (``[relay]`` in the config, :class:`node.config.RelaySection`).

    ``enabled`` and the limits apply when this node is public (it relays for
    others); ``reservations`` when it is private (slots it holds elsewhere).
    """

    enabled: bool = True
    reservations: int = 2
    max_reservations: int = 128
    reservation_ttl_s: int = 3600
    circuit_bytes: int = 128 << 20  #: both directions together; then the circuit is reset
    circuit_duration_s: int = 3600
    circuit_rate: int = 2 << 20  #: bytes per second, each direction of one circuit
    total_rate: int = 16 << 20  #: bytes per second, all circuits together
    max_circuits: int = 256
    max_circuits_per_peer: int = 16


# --------------------------------------------------------------------------- bandwidth


class TokenBucket:
    """A token bucket in bytes: ``rate`` bytes per second, at most ``burst`` saved.

    :meth:`take` spends ``n`` bytes at time ``now`` and returns how long the
    caller must wait before sending them (0 when they were in the bucket);
    the debt is carried, so a sender waiting as told sends at ``rate``.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = float(rate)
        self.burst = float(burst)
        self.tokens = float(burst)
        self.at = now

    def take(self, n: int, now: float) -> float:
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.at) * self.rate)
        self.at = max(self.at, now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
