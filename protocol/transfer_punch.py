"""Punched TCP (the ``punch`` data path, spec/transfer.md section 3.7), tags 77-79.

DCUtR's TCP simultaneous open needs each side to predict the port the
other's NAT maps it to.  A symmetric NAT maps every destination to a new
random port, so between a symmetric side and a port-restricted EIM side it
always fails.  The birthday punch does not predict: the symmetric side (the
*sprayer*) opens :data:`SPRAY_SOCKETS` connections to the EIM side's one
mapped ``ip:port`` (each gets a random external port on its NAT); the EIM
side (the *prober*) then sends SYNs from that one port to
:data:`PROBES_PER_ROUND` random ports of the sprayer's public IP, for up to
:data:`PROBE_ROUNDS` rounds.  A probe that hits one of the sprayer's mapped
ports meets its SYN: a TCP simultaneous open (or a plain handshake), which is
then used exactly like a data-plane TCP connection (preamble, ticket, keys).

Signed envelopes on the libp2p stream ``/cpn/transfer/punch/0.1.0``, opened by
the fetcher on the (relayed) connection it has to the holder:
``PunchRequest`` (fetcher), ``PunchReply`` (holder), ``PunchGo`` (the fetcher,
when it is the sprayer, once its connections are out; a sprayer holder
replies only once its own are out).  Also here: who takes which role, the
probe ports from a seed, and the odds.  No IO.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math

from .errors import ValidationError
from .wire import Message, message

__all__ = [
    "PUNCH_PROTOCOL_ID",
    "ROLE_SPRAY",
    "ROLE_PROBE",
    "ROLES",
    "PORT_MIN",
    "PORT_MAX",
    "PORT_SPACE",
    "SPRAY_SOCKETS",
    "PROBES_PER_ROUND",
    "PROBE_ROUNDS",
    "MAX_SPRAY",
    "MAX_PROBES",
    "ROUND_S",
    "PUNCH_S",
    "PunchRequest",
    "PunchReply",
    "PunchGo",
    "punch_role",
    "complementary",
    "probe_ports",
    "success_probability",
]

PUNCH_PROTOCOL_ID = "/cpn/transfer/punch/0.1.0"
ROLE_SPRAY = "spray"  #: a symmetric NAT: many connections to the prober's one mapped address
ROLE_PROBE = "probe"  #: a port-preserving EIM NAT (or a filter without NAT): SYNs from one port
ROLES = (ROLE_SPRAY, ROLE_PROBE)
#: The ports a NAT maps to when no range is configured (Linux ``masquerade
#: fully-random`` draws uniformly from 1024-65535): the space probes are drawn from.
PORT_MIN = 1024
PORT_MAX = 65535
PORT_SPACE = PORT_MAX - PORT_MIN + 1
SPRAY_SOCKETS = 384  #: connections a sprayer opens (reference)
PROBES_PER_ROUND = 384  #: distinct ports a prober sends SYNs to per round (reference)
PROBE_ROUNDS = 2  #: rounds of fresh random ports, each open ROUND_S
#: P(success) = 1 - (1 - 384/64512)^768 ~ 0.990 (:func:`success_probability`)
MAX_SPRAY = 512  #: connections a sprayer MUST NOT exceed per punch (``PunchGo.sockets``)
MAX_PROBES = 1024  #: SYNs a prober MUST NOT exceed per punch (all rounds)
ROUND_S = 1.0  #: seconds one round of probes stays open (a hit answers within one round trip)
PUNCH_S = 6.0  #: seconds a whole punch may take on either side, messages included


def _endpoint(role: str, ip: str, port: int) -> None:
    """Shared by PunchRequest and PunchReply, in field order."""
    if role not in ROLES:
        raise ValidationError("role", f"one of {', '.join(ROLES)}")
    try:
        addr = ipaddress.IPv4Address(ip)
    except ValueError:
        raise ValidationError("ip", "an IPv4 literal") from None
    if addr.is_unspecified or addr.is_loopback or addr.is_multicast or addr.is_link_local:
        raise ValidationError("ip", "a unicast address another host can send to")
    if role == ROLE_PROBE and not PORT_MIN <= port <= PORT_MAX:
        raise ValidationError("port", f"the prober's mapped port, {PORT_MIN}..{PORT_MAX}")
    if role == ROLE_SPRAY and port != 0:
        raise ValidationError("port", "0 for a sprayer (its ports are random)")


@message(tag=77, domain="cpn/transfer/punch-request")
class PunchRequest(Message):
    """Fetcher to holder: punch a TCP connection for this ticket."""

    ticket_id: bytes  #: a live ticket the holder issued to this peer, with path ``punch``
    role: str  #: the fetcher's role: ``spray`` or ``probe``
    ip: str  #: the fetcher's public IPv4 address as its peers observe it
    port: int  #: probe: the mapped port its SYNs will come from; spray: 0

    def check(self) -> None:
        if len(self.ticket_id) != 16:
            raise ValidationError("ticket_id", "must be 16 bytes")
        _endpoint(self.role, self.ip, self.port)


@message(tag=78, domain="cpn/transfer/punch-reply")
class PunchReply(Message):
    """Holder to fetcher: the holder's side.  A sprayer holder sends it once its
    connections are out; a prober holder once its port is bound."""

    role: str  #: the holder's role, the other one than the request's
    ip: str  #: the holder's public IPv4 address as its peers observe it
    port: int  #: probe: the mapped port its SYNs will come from; spray: 0

    def check(self) -> None:
        _endpoint(self.role, self.ip, self.port)


@message(tag=79, domain="cpn/transfer/punch-go")
class PunchGo(Message):
    """Fetcher (sprayer) to holder (prober): my connections are out, probe now."""

    sockets: int  #: connections opened, 1..MAX_SPRAY

    def check(self) -> None:
        if not 0 < self.sockets <= MAX_SPRAY:
            raise ValidationError("sockets", f"1..{MAX_SPRAY}")


def punch_role(nat_type: str, status: str) -> str | None:
    """The role a node takes from its NAT type and reachability (spec §3.7).

    ``symmetric``: spray.  ``eim`` (port-preserving, endpoint-independent):
    probe.  ``none`` while private (a stateful filter without translation: the
    mapped port is the local port): probe.  Anything else (public, unknown
    NAT): no role, no punch."""
    if status == "public":
        return None
    if nat_type == "symmetric":
        return ROLE_SPRAY
    if nat_type == "eim" or (nat_type == "none" and status == "private"):
        return ROLE_PROBE
    return None


def complementary(mine: str | None, theirs: str | None) -> bool:
    """A punch needs exactly one sprayer and one prober."""
    return {mine, theirs} == {ROLE_SPRAY, ROLE_PROBE}


def probe_ports(seed: bytes, count: int, exclude: frozenset[int] = frozenset()) -> tuple[int, ...]:
    """``count`` distinct ports in PORT_MIN..PORT_MAX, none in ``exclude``, drawn
    from ``seed`` (16 or more random bytes the caller supplies: this module
    has no randomness of its own): 16-bit words of SHA-256(seed || counter),
    rejection-sampled, in the order drawn."""
    if len(seed) < 16:
        raise ValueError("seed: at least 16 bytes")
    if not 0 <= count <= PORT_SPACE - len(exclude):
        raise ValueError(f"count: 0..{PORT_SPACE - len(exclude)}")
    out: dict[int, None] = {}
    block = 0
    while len(out) < count:
        digest = hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        block += 1
        for i in range(0, 32, 2):
            port = int.from_bytes(digest[i : i + 2], "big")
            if PORT_MIN <= port <= PORT_MAX and port not in exclude and port not in out:
                out[port] = None
                if len(out) == count:
                    break
    return tuple(out)


def success_probability(spray: int, probes: int, space: int = PORT_SPACE) -> float:
    """P(at least one of ``probes`` distinct random ports is one of the sprayer's
    ``spray`` uniformly mapped ports): 1 - (1 - spray/space)^probes."""
    if not 0 <= spray <= space or probes < 0:
        raise ValueError("0 <= spray <= space, probes >= 0")
    if spray == space:
        return 1.0 if probes else 0.0
    return -math.expm1(probes * math.log1p(-spray / space))
