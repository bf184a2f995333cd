"""Network namespaces, veth links, bridges and nftables NAT for CPN testbeds.

The plumbing behind ``tools/testnet up --netns`` and ``up --nat``, importable
by tests and bench scripts (``sys.path.insert(0, "tools"); import netlab``).

A NAT testbed is described by a small *topology*: a list of segments, each of
one kind, with some hosts::

    [{"name": "pub",  "kind": "public",    "hosts": 3},
     {"name": "eim1", "kind": "eim",       "hosts": 1},
     {"name": "sym1", "kind": "symmetric", "hosts": 1},
     {"name": "fw1",  "kind": "firewall",  "hosts": 1}]

(or compactly ``pub=public:3,eim1=eim,sym1=symmetric,fw1=firewall``).
:func:`plan` turns it into a *layout* (pure data: namespaces, addresses,
routes, nft rulesets), and :func:`build` creates it:

* **public** - hosts directly on the public segment, a bridge in the hub
  namespace, with addresses from 198.51.100.0/24 (TEST-NET-2, RFC 5737).
  Documentation ranges are neither RFC 1918, loopback, link-local nor the
  carrier-grade NAT range 100.64.0.0/10 (which a daemon must treat as not
  publicly reachable), so a daemon can tell these from private addresses.
  Mind that Python's ``ipaddress`` calls them ``is_private``: classify with an
  explicit list of private ranges, not ``is_private``/``is_global``.
* **eim** - a router namespace NATs a private segment with
  ``masquerade`` (port-preserving: a connection from source port P leaves
  as WAN:P whatever the destination while P is free on the WAN side, i.e.
  endpoint-independent mapping) and the conntrack filtering every Linux
  NAT does (only replies and related packets come in: address-and-port
  dependent filtering, a "port-restricted cone" home router).  TCP
  simultaneous open (hole punching) works through it.
* **symmetric** - the same with ``masquerade fully-random``: every
  connection gets a random WAN port (endpoint-dependent mapping), so a
  port learnt from one peer is useless to another and hole punching fails.
* **firewall** - a router *without* NAT in front of hosts with public
  addresses (a /28 of 203.0.113.0/24, TEST-NET-3, routed through the
  router): outbound and replies pass, new inbound connections are dropped.
  The hosts' own addresses look public, so only a reachability check
  (AutoNAT) can tell that nobody can dial them.

Every router drops (silently, like most home routers) new connections from
the WAN to itself and to its segment.  Private segments use RFC 1918
addresses: by default *every* eim segment is 192.168.1.0/24 (as two home
routers would be), so a private address learnt from a peer behind another
NAT reaches a different host, or nothing; symmetric segments get 10.<k>.0.0/24.

Every namespace and link is recorded (through ``on_change``) *before* it is
created, so :func:`teardown` removes exactly what was made even after a
build that failed half-way.  nft rules live only inside router namespaces
and go with them; the root namespace is never touched.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import re
import secrets
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import Any

PUBLIC_SUBNET = "198.51.100.0/24"  #: TEST-NET-2: the "internet" segment
FIREWALLED_SUPERNET = "203.0.113.0/24"  #: TEST-NET-3: one /28 per firewall segment
EIM_SUBNET = "192.168.1.0/24"  #: default for every eim segment (home routers)
KINDS = ("public", "eim", "symmetric", "firewall")
ROLES = ("bootstrap", "relay")
MAX_HOSTS_PER_SEGMENT = 13  # a firewall /28 has 14 usable addresses, one is the router

#: The default ``up --nat`` topology: the 4 kinds of the reach matrix, two
#: independent routers per private kind so "both sides behind an EIM NAT"
#: crosses two different NATs.
DEFAULT_TOPOLOGY: list[dict[str, Any]] = [
    {"name": "pub", "kind": "public", "hosts": 3},  # pub-0 bootstrap+relay, others relay
    {"name": "eim1", "kind": "eim", "hosts": 1},
    {"name": "eim2", "kind": "eim", "hosts": 1},
    {"name": "sym1", "kind": "symmetric", "hosts": 1},
    {"name": "sym2", "kind": "symmetric", "hosts": 1},
    {"name": "fw1", "kind": "firewall", "hosts": 1},
    {"name": "fw2", "kind": "firewall", "hosts": 1},
]

_NAME = re.compile(r"^[a-z][a-z0-9]{0,7}$")
WAN_DEV, LAN_DEV, HOST_DEV, HUB_BRIDGE = "wan0", "lan0", "eth0", "br0"


class LabError(Exception):
    """A topology that cannot be built, or a command that failed while building."""


# --------------------------------------------------------------------------- topology


def parse_topology(text: str) -> list[dict[str, Any]]:
    """Parse ``NAME=KIND[:HOSTS],...`` (or a JSON list) into a topology list."""
    text = text.strip()
    if text.startswith("["):
        import json

        value = json.loads(text)
        if not isinstance(value, list):
            raise LabError("a JSON topology is a list of segments")
        return value
    out: list[dict[str, Any]] = []
    for item in filter(None, (p.strip() for p in text.split(","))):
        m = re.fullmatch(r"([^=]+)=([a-z]+)(?::(\d+))?", item)
        if not m:
            raise LabError(f"bad segment {item!r}: expected NAME=KIND[:HOSTS]")
        out.append({"name": m[1], "kind": m[2], "hosts": int(m[3] or 1)})
    return out


def plan(topology: Sequence[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """The layout of ``topology`` under namespace prefix ``prefix`` (pure; no IO).

    Returns ``{"prefix", "hub", "segments": [...], "routers": {...},
    "hosts": {...}}``; each host: ``name, segment, kind, ns, ip, gateway,
    public_ip, roles`` (``public_ip`` is the address the public segment sees
    its connections come from: its own, or its router's WAN address)."""
    if not topology:
        raise LabError("empty topology")
    pub = ipaddress.ip_network(PUBLIC_SUBNET)
    # Public hosts from .10, router WAN addresses from .100: stable addresses
    # for docs and logs whatever the number of hosts.
    pub_hosts = (pub.network_address + i for i in range(10, 100))
    wan_addrs = (pub.network_address + i for i in range(100, 255))
    fw_blocks = iter(ipaddress.ip_network(FIREWALLED_SUPERNET).subnets(new_prefix=28))
    seen: set[str] = set()
    segments: list[dict[str, Any]] = []
    routers: dict[str, dict[str, Any]] = {}
    hosts: dict[str, dict[str, Any]] = {}
    sym_k = 0
    public_segments = [s for s in topology if s.get("kind") == "public"]
    if len(public_segments) != 1:
        raise LabError("a topology needs exactly one public segment")
    # Public hosts first (.2, .3, ...), then router WAN addresses.
    ordered = public_segments + [s for s in topology if s.get("kind") != "public"]
    for seg in ordered:
        name, kind = str(seg.get("name", "")), seg.get("kind")
        count = seg.get("hosts", 1)
        if not _NAME.match(name):
            raise LabError(f"segment name {name!r}: 1-8 of [a-z0-9], starting with a letter")
        if name in seen:
            raise LabError(f"segment {name!r} appears twice")
        seen.add(name)
        if kind not in KINDS:
            raise LabError(f"segment {name}: kind {kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(count, int) or not 0 <= count <= MAX_HOSTS_PER_SEGMENT:
            raise LabError(f"segment {name}: hosts must be 0..{MAX_HOSTS_PER_SEGMENT}")
        roles = seg.get("roles")
        if roles is None:  # default: the first public host bootstraps, all may relay
            roles = [["bootstrap", "relay"]] + [["relay"]] * (count - 1) if kind == "public" else []
        if kind != "public" and roles:
            raise LabError(f"segment {name}: only public hosts take roles")
        for r in roles:
            bad = [x for x in r if x not in ROLES]
            if bad:
                raise LabError(f"segment {name}: unknown role(s) {bad}; known: {ROLES}")
        entry: dict[str, Any] = {"name": name, "kind": kind, "hosts": []}
        if kind == "public":
            entry["subnet"] = PUBLIC_SUBNET
            for i in range(count):
                hn = f"{name}-{i}"
                hosts[hn] = {
                    "name": hn, "segment": name, "kind": kind, "ns": prefix + hn,
                    "ip": str(next(pub_hosts)), "plen": pub.prefixlen, "gateway": None,
                    "roles": list(roles[i]) if i < len(roles) else [],
                }
                hosts[hn]["public_ip"] = hosts[hn]["ip"]
                entry["hosts"].append(hn)
            segments.append(entry)
            continue
        if len(routers) >= 155:
            raise LabError("too many routers (155 at most)")
        if kind == "firewall":
            net = next(fw_blocks, None)
            if net is None:
                raise LabError("too many firewall segments (16 at most)")
            if seg.get("subnet"):
                raise LabError(f"segment {name}: firewall segments are addressed automatically")
        else:
            if kind == "eim":
                default = EIM_SUBNET
            else:
                sym_k += 1
                default = f"10.{sym_k}.0.0/24"
            try:
                net = ipaddress.ip_network(seg.get("subnet") or default)
            except ValueError as exc:
                raise LabError(f"segment {name}: {exc}") from None
            if not any(net.subnet_of(ipaddress.ip_network(p))
                       for p in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")):
                raise LabError(f"segment {name}: a NAT segment needs an RFC 1918 subnet")
            if net.num_addresses < count + 4:
                raise LabError(f"segment {name}: {net} is too small for {count} hosts")
        lan_hosts = iter(net.hosts())
        router = {
            "name": name, "kind": kind, "ns": f"{prefix}r-{name}",
            "wan_ip": str(next(wan_addrs)), "lan_ip": str(next(lan_hosts)),
            "subnet": str(net),
        }
        routers[name] = router
        entry["subnet"] = str(net)
        entry["router"] = router["ns"]
        for i in range(count):
            hn = f"{name}-{i}"
            ip = str(next(lan_hosts))
            hosts[hn] = {
                "name": hn, "segment": name, "kind": kind, "ns": prefix + hn, "ip": ip,
                "plen": net.prefixlen, "gateway": router["lan_ip"], "roles": [],
                "public_ip": ip if kind == "firewall" else router["wan_ip"],
            }
            entry["hosts"].append(hn)
        segments.append(entry)
    return {"prefix": prefix, "hub": prefix + "hub", "segments": segments,
            "routers": routers, "hosts": hosts}


def ruleset(kind: str) -> str:
    """The nft script for a router of ``kind`` (eim, symmetric or firewall).

    Forwarding: replies and related packets pass, anything from the segment
    passes, new connections from the WAN are dropped.  The router itself
    answers nothing on its WAN side.  NAT kinds masquerade what leaves on
    the WAN (``fully-random`` for symmetric)."""
    if kind not in ("eim", "symmetric", "firewall"):
        raise LabError(f"no router for kind {kind!r}")
    script = f"""\
table inet cpn_filter {{
  chain forward {{
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    iifname != "{WAN_DEV}" accept
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "{WAN_DEV}" ct state established,related accept
    iifname "{WAN_DEV}" drop
  }}
}}
"""
    if kind != "firewall":
        random = " fully-random" if kind == "symmetric" else ""
        script += f"""\
table ip cpn_nat {{
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname "{WAN_DEV}" masquerade{random}
  }}
}}
"""
    return script


# --------------------------------------------------------------------------- commands


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def must(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        raise LabError(f"{what} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def netns_path(ns: str) -> str:
    return f"/run/netns/{ns}"


def in_ns(ns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run in namespace ``ns``.  ``nsenter --net`` (not ``ip netns
    exec``, which remounts /sys and would hide the cgroups podman needs)."""
    return ["nsenter", f"--net={netns_path(ns)}", "--", *argv]


def run_in(ns: str, argv: Sequence[str], input: str | None = None,
           timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(in_ns(ns, argv), input=input, capture_output=True, text=True,
                          check=False, timeout=timeout)


def preflight(nat: bool = False) -> str | None:
    """None when namespaces (and, with ``nat``, nftables) can be used; else why not."""
    if os.geteuid() != 0:
        return "needs root (it creates network namespaces, veth pairs and bridges)"
    tools = ["ip", "nsenter", "tc"] + (["nft"] if nat else [])
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return (f"needs {', '.join(missing)} (apt-get install iproute2 util-linux"
                f"{' nftables' if nat else ''}; tools/install installs them)")
    return None


def new_prefix() -> str:
    """A ``cpn-tn-<id>-`` prefix no namespace here uses yet."""
    existing = ip("netns", "list").stdout.split()
    while True:
        prefix = f"cpn-tn-{secrets.token_hex(2)}-"
        if not any(name.startswith(prefix) for name in existing):
            return prefix


class Recorder:
    """Creates namespaces and links, recording each in ``state`` first.

    ``state`` has lists ``namespaces`` and ``links`` ([ns, dev]);
    ``on_change()`` persists it (testnet writes state.json)."""

    def __init__(self, state: dict[str, Any], on_change: Callable[[], None] = lambda: None):
        self.state = state
        state.setdefault("namespaces", [])
        state.setdefault("links", [])
        self.on_change = on_change

    def netns(self, name: str) -> None:
        self.state["namespaces"].append(name)
        self.on_change()
        added = ip("netns", "add", name)
        if added.returncode != 0:  # not ours after all: teardown must not delete it
            self.state["namespaces"].remove(name)
            self.on_change()
            must(added, f"ip netns add {name}")
        must(ip("-n", name, "link", "set", "lo", "up"), f"bringing up lo in {name}")

    def bridge(self, ns: str, dev: str) -> None:
        self.state["links"].append([ns, dev])
        self.on_change()
        must(ip("-n", ns, "link", "add", dev, "type", "bridge"), f"creating bridge {dev} in {ns}")
        must(ip("-n", ns, "link", "set", dev, "up"), f"bringing up {dev} in {ns}")

    def veth(self, ns_a: str, dev_a: str, ns_b: str, dev_b: str,
             master: str | None = None) -> None:
        """A veth pair made inside its namespaces (nothing appears on the host);
        ``dev_a`` is enslaved to bridge ``master`` (in ``ns_a``) when given."""
        self.state["links"].append([ns_a, dev_a])
        self.on_change()
        must(ip("-n", ns_a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b,
                "netns", ns_b), f"creating veth {ns_a}:{dev_a} <-> {ns_b}:{dev_b}")
        if master:
            must(ip("-n", ns_a, "link", "set", dev_a, "master", master), f"attaching {dev_a}")
        must(ip("-n", ns_a, "link", "set", dev_a, "up"), f"bringing up {dev_a}")
        must(ip("-n", ns_b, "link", "set", dev_b, "up"), f"bringing up {dev_b}")


def _sysctl(ns: str, key: str, value: str, required: bool = True) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    proc = run_in(ns, ["sh", "-c", f'[ -e {path} ] || exit 3; echo {value} > {path}'])
    if proc.returncode == 3 and not required:
        return
    must(proc, f"sysctl {key}={value} in {ns}")


def _tbf(ns: str, dev: str, rate: str) -> None:
    """Shape ``dev``'s egress in ``ns`` with a token bucket (no sch_netem here)."""
    bits = parse_rate(rate)
    burst = max(16 * 1024, bits // 8 // 100)  # >= 10 ms of traffic (HZ-independent)
    proc = subprocess.run(
        ["tc", "-n", ns, "qdisc", "add", "dev", dev, "root", "tbf", "rate", str(bits),
         "burst", str(burst), "latency", "50ms"], capture_output=True, text=True, check=False)
    must(proc, f"tc tbf on {ns}:{dev}")


def parse_rate(rate: str) -> int:
    """``100mbit`` / ``1gbit`` / ``500kbit`` / plain bits per second -> bits per second."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(k|m|g)?bit", rate.strip().lower())
    if not m:
        raise LabError(f"rate {rate!r}: expected e.g. 100mbit, 1gbit, 500kbit")
    bits = int(float(m[1]) * {None: 1, "k": 10**3, "m": 10**6, "g": 10**9}[m[2]])
    if bits < 8000:
        raise LabError(f"rate {rate!r} is too low (at least 8kbit)")
    return bits


def build(layout: dict[str, Any], state: dict[str, Any],
          on_change: Callable[[], None] = lambda: None, rate: str | None = None) -> None:
    """Create ``layout`` (from :func:`plan`), recording every resource in ``state``.

    ``rate``: shape every link to the public segment with TBF, both ways."""
    if rate:
        parse_rate(rate)  # fail before creating anything
    rec = Recorder(state, on_change)
    hub = layout["hub"]
    rec.netns(hub)
    _sysctl(hub, "net.bridge.bridge-nf-call-iptables", "0", required=False)
    rec.bridge(hub, HUB_BRIDGE)
    pub_len = ipaddress.ip_network(PUBLIC_SUBNET).prefixlen
    fw_routes = [(r["subnet"], r["wan_ip"], name) for name, r in layout["routers"].items()
                 if r["kind"] == "firewall"]

    def public_routes(ns: str, own_segment: str | None) -> None:
        for subnet, via, name in fw_routes:
            if name != own_segment:
                must(ip("-n", ns, "route", "add", subnet, "via", via), f"route {subnet} in {ns}")

    def wan_link(ns: str, dev: str, port: str) -> None:
        rec.veth(hub, port, ns, dev, master=HUB_BRIDGE)
        if rate:
            _tbf(hub, port, rate)
            _tbf(ns, dev, rate)

    for name, r in layout["routers"].items():
        ns = r["ns"]
        rec.netns(ns)
        wan_link(ns, WAN_DEV, f"r-{name}")
        must(ip("-n", ns, "addr", "add", f"{r['wan_ip']}/{pub_len}", "dev", WAN_DEV),
             f"addressing {ns}:{WAN_DEV}")
        rec.bridge(ns, LAN_DEV)
        plen = ipaddress.ip_network(r["subnet"]).prefixlen
        must(ip("-n", ns, "addr", "add", f"{r['lan_ip']}/{plen}", "dev", LAN_DEV),
             f"addressing {ns}:{LAN_DEV}")
        public_routes(ns, name)
        _sysctl(ns, "net.ipv4.ip_forward", "1")
        _sysctl(ns, "net.bridge.bridge-nf-call-iptables", "0", required=False)
        must(run_in(ns, ["nft", "-f", "-"], input=ruleset(r["kind"])), f"nft rules in {ns}")
    for h in layout["hosts"].values():
        ns = h["ns"]
        rec.netns(ns)
        if h["gateway"] is None:
            wan_link(ns, HOST_DEV, f"p-{h['name']}")
        else:
            router = layout["routers"][h["segment"]]["ns"]
            rec.veth(router, f"p-{h['name']}", ns, HOST_DEV, master=LAN_DEV)
        must(ip("-n", ns, "addr", "add", f"{h['ip']}/{h['plen']}", "dev", HOST_DEV),
             f"addressing {ns}")
        if h["gateway"] is None:
            public_routes(ns, None)
        else:
            must(ip("-n", ns, "route", "add", "default", "via", h["gateway"]),
                 f"default route in {ns}")


def teardown(state: dict[str, Any]) -> list[str]:
    """Delete exactly the links and namespaces in ``state``; returns those left over.

    Deleting a namespace also deletes its links, bridges and nft tables."""
    for ns, dev in reversed(state.get("links", [])):
        ip("-n", ns, "link", "delete", dev)  # absent (never created, or ns gone): fine
    for ns in reversed(state.get("namespaces", [])):
        ip("netns", "delete", ns)
    listed = ip("netns", "list").stdout.split()
    return [ns for ns in state.get("namespaces", []) if ns in listed]


# --------------------------------------------------------------------------- sockets

_CLONE_NEWNET = 0x40000000


def socket_in(ns: str, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM,
              setup: Callable[[socket.socket], None] | None = None) -> socket.socket:
    """A socket that lives in network namespace ``ns``, made from this process.

    ``setns(CLONE_NEWNET)`` switches only the calling thread, and a socket
    keeps the namespace it was created in, so a short-lived thread enters
    ``ns``, creates (and, via ``setup``, binds) the socket and exits.  A
    trio loop run in such a thread would likewise open all its sockets
    there."""
    result: list[socket.socket | BaseException] = []

    def worker() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path(ns), os.O_RDONLY)
            try:
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            s = socket.socket(family, type)
            try:
                if setup is not None:
                    setup(s)
            except BaseException:
                s.close()
                raise
            result.append(s)
        except BaseException as exc:  # handed to the caller below
            result.append(exc)

    t = threading.Thread(target=worker, name=f"netns:{ns}")
    t.start()
    t.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]
