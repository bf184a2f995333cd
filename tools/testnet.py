"""A local CPN testnet: N daemons in separate processes on 127.0.0.1.

    tools/testnet up -n 5 [--fake-gpus mix|SPEC[;SPEC...]] [--execution 0,1]
                                                             start, wait until healthy, print table
    tools/testnet up --nat [--topology SPEC] [--rate R] [--no-nodes]
                                                             the NAT testbed (root; see below)
    tools/testnet status                                     health of each node
    tools/testnet exec HOST -- CMD...                        CMD in a host's namespace
    tools/testnet down                                       stop exactly those PIDs, remove state

State lives in ``.testnet/`` at the repository root (gitignored; or in
``$CPN_TESTNET_DIR``): one data dir
per node, its logs, and ``state.json`` with each node's PID, which ``down``
uses to stop exactly those processes (after checking each PID still runs our
command for that data dir, so a recycled PID is never signalled).

``--fake-gpus`` gives nodes fake NVML inventories (see node/find/nvml.py): ``mix``
cycles through a realistic set of providers; otherwise a ``;``-separated list
of compact specs (``h100:2;a100-40g:1;none``) is cycled through.

``--netns`` (root only; iproute2, nsenter) runs each node in its own network
namespace instead of on 127.0.0.1, so traffic between nodes crosses real
(virtual) links that ``tc netem`` can slow down or make lossy:

    tools/testnet up -n 3 --netns [--netem "delay 25ms loss 0.5%" [--netem-optional]]

The script creates namespaces ``cpn-tn-<id>-n0..`` (one per node) and
``cpn-tn-<id>-hub`` holding a bridge; each node's ``eth0`` is one end of a veth
pair whose other end is enslaved to that bridge.  Both ends are created
directly inside their namespaces, so nothing appears on the host's
interfaces.  Node i gets 169.254.1.<i+1>/16 (link-local, on eth0 only; no
default route, no NAT, no forwarding), listens there (libp2p and
``[transfer] data_host``) and runs via ``nsenter --net`` (not ``ip netns
exec``, which remounts /sys and would hide the cgroups podman needs).  API
sockets stay in the data dirs, so ``cpn --data-dir .testnet/nodeI ...`` from
the host works unchanged.  ``--netem SPEC`` adds ``tc qdisc add dev eth0 root
netem SPEC`` in every node namespace (each direction of a link is delayed
once, so ``delay 25ms`` gives 50 ms RTT); without the kernel's ``sch_netem``
module ``up`` fails naming it, or with ``--netem-optional`` warns and goes on
without.  Every namespace and link is written to ``state.json`` *before* it is
created, so ``down`` removes exactly those (and stops exactly its PIDs) even
after an ``up`` that failed half-way or was killed.

``--nat`` (root only; also needs nftables) builds the NAT testbed of
``tools/netlab.py`` and runs one node per host in it:

    tools/testnet up --nat [--topology SPEC] [--rate 100mbit] [--no-nodes]
    tools/testnet exec HOST -- CMD...          run CMD in HOST's namespace

A public segment (198.51.100.0/24, a bridge in ``cpn-tn-<id>-hub``) holds the
public hosts and the WAN side of one router namespace per private segment;
the routers NAT with nftables: ``eim`` (port-preserving masquerade:
endpoint-independent mapping), ``symmetric`` (``masquerade fully-random``),
``firewall`` (no NAT, public 203.0.113.x hosts, new inbound connections
dropped).  The default topology is pub-0..2 (pub-0 the bootstrap node),
eim1-0, eim2-0, sym1-0, sym2-0, fw1-0, fw2-0; ``--topology
'pub=public:2,home=eim:1'`` (or a JSON list, see tools/netlab.py) changes
it.  Every node listens on its own address (private ones behind NATs), so
today a node behind a router can dial out (to the bootstrap node) but
nobody can dial it.  ``--rate`` shapes each link to the public segment with
TBF in both directions (this kernel has no sch_netem for delay).
``--no-nodes`` builds only the network (for experiments; ``exec`` runs a
command in a host).  ``status`` prints the hosts, their addresses and the
address the public segment sees; ``down`` deletes every namespace (and so
every link, bridge and nft table) it made.  Docs: docs/testbed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: ``$CPN_TESTNET_DIR`` moves it (tests use a temporary one, never a developer's testnet).
STATE_DIR = Path(os.environ.get("CPN_TESTNET_DIR") or ROOT / ".testnet")
STATE = STATE_DIR / "state.json"
CPN = [str(ROOT / ".venv" / "bin" / "cpn")]

MIX = ["h100:8", "a100-40g:2", "rtx4090:1", "none", "l4:4", "h100:1,a100-80g:1", "t4:2", "l40s:2"]

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import netlab  # noqa: E402  (tools/netlab.py)


def _fake_for(spec: str | None, i: int) -> str | None:
    if not spec:
        return None
    specs = MIX if spec == "mix" else spec.split(";")
    chosen = specs[i % len(specs)].strip()
    return None if chosen in ("", "none") else chosen


def _read_ready(out: Path, event: str = "ready") -> dict[str, Any] | None:
    try:
        for line in out.read_text().splitlines():
            if line.startswith("{"):
                obj = json.loads(line)
                if obj.get("event") == event:
                    return obj
    except (FileNotFoundError, ValueError):
        pass
    return None


_PROCS: dict[int, subprocess.Popen[bytes]] = {}

#: The ``--netns`` resources of the running testnet (None in loopback mode):
#: {"prefix", "hub", "bridge", "namespaces": [...], "links": [[ns, dev], ...],
#:  "netem": SPEC | ""}.  Saved with the nodes; ``down`` removes what it lists.
_NET: dict[str, Any] | None = None

NETEM_HINT = (
    "the kernel lacks the sch_netem module (tc netem); load it with `modprobe sch_netem` "
    "(Debian: part of the linux-image package; some cloud/VM kernels leave it out)"
)


_ip = netlab.ip


def _must(proc: subprocess.CompletedProcess[str], what: str) -> None:
    if proc.returncode != 0:
        raise SystemExit(f"testnet: {what} failed: {proc.stderr.strip()}")


def _node_ip(i: int) -> str:
    return f"169.254.{1 + i // 250}.{1 + i % 250}"


def _netns_preflight(flag: str = "--netns") -> None:
    if os.geteuid() != 0:
        raise SystemExit(
            f"testnet: {flag} needs root (it creates network namespaces, veth pairs and a bridge); "
            f"run it as root, or leave out {flag} for the 127.0.0.1 testnet"
        )
    reason = netlab.preflight(nat=flag == "--nat")
    if reason:
        raise SystemExit(f"testnet: {flag} {reason}")


def _net_setup(n: int, netem: str | None, netem_optional: bool) -> None:
    """Create the hub namespace + bridge and one namespace + veth per node.

    Each resource is recorded in ``_NET`` and saved *before* it is created, so a
    failure at any point leaves ``down`` a complete list to remove."""
    global _NET
    prefix = netlab.new_prefix()  # another testnet's namespaces stay untouched
    hub, bridge = prefix + "hub", prefix + "br"
    _NET = {"prefix": prefix, "hub": hub, "bridge": bridge, "namespaces": [], "links": [],
            "netem": ""}

    def record(key: str, value: Any) -> None:
        assert _NET is not None
        _NET[key].append(value)
        _save([])

    def add_netns(name: str) -> None:
        assert _NET is not None
        record("namespaces", name)
        added = _ip("netns", "add", name)
        if added.returncode != 0:  # not ours after all: `down` must not delete it
            _NET["namespaces"].remove(name)
            _save([])
            _must(added, f"ip netns add {name}")

    add_netns(hub)
    record("links", [hub, bridge])
    _must(_ip("-n", hub, "link", "add", bridge, "type", "bridge"), "creating the bridge")
    _must(_ip("-n", hub, "link", "set", bridge, "up"), "bringing the bridge up")
    for i in range(n):
        ns, port = f"{prefix}n{i}", f"{prefix}{i}"  # port: <= 15 chars (IFNAMSIZ)
        add_netns(ns)
        record("links", [hub, port])
        _must(
            _ip("-n", hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns),
            f"creating the veth pair for node{i}",
        )
        _must(_ip("-n", hub, "link", "set", port, "master", bridge, "up"), f"attaching {port}")
        _must(_ip("-n", ns, "addr", "add", f"{_node_ip(i)}/16", "dev", "eth0"), f"addressing node{i}")
        _must(_ip("-n", ns, "link", "set", "eth0", "up"), f"bringing up eth0 of node{i}")
        _must(_ip("-n", ns, "link", "set", "lo", "up"), f"bringing up lo of node{i}")
        if netem and (i == 0 or _NET["netem"]):
            tc = subprocess.run(
                ["tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "netem", *netem.split()],
                capture_output=True, text=True, check=False,
            )
            if tc.returncode == 0:
                _NET["netem"] = netem
                continue
            err = tc.stderr.strip()
            if "unknown" in err.lower() or "no such file" in err.lower():
                if not netem_optional:
                    raise SystemExit(f"testnet: --netem: {NETEM_HINT} (tc said: {err})")
                print(f"testnet: warning: --netem ignored: {NETEM_HINT} (tc said: {err})",
                      file=sys.stderr)
            else:
                raise SystemExit(f"testnet: --netem {netem!r}: tc rejected it: {err}")
    _save([])


def _nat_setup(topology: list[dict[str, Any]], rate: str | None) -> dict[str, Any]:
    """Plan and build the NAT testbed; every resource is saved before it is made."""
    global _NET
    layout = netlab.plan(topology, netlab.new_prefix())
    _NET = {"mode": "nat", "prefix": layout["prefix"], "hub": layout["hub"],
            "namespaces": [], "links": [], "rate": rate or "", "layout": layout}
    netlab.build(layout, _NET, on_change=lambda: _save([]), rate=rate)
    _save([])
    return layout


def _net_teardown(net: dict[str, Any]) -> list[str]:
    """Delete exactly the links and namespaces in ``net``; returns what is left over."""
    return netlab.teardown(net)


def _start(
    i: int,
    bootstrap: list[str],
    fake: str | None,
    log_level: str,
    execution: bool = False,
    host_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Start node ``i``: on 127.0.0.1, in ``--netns`` namespace ``n<i>``, or
    (``host_info``, from a NAT layout) in that host's namespace."""
    name = host_info["name"] if host_info else f"node{i}"
    data = STATE_DIR / name
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    extra: list[str] = []
    conf = ""
    if execution:  # runs containers (podman self-test at start-up, host storage)
        conf += "[execution]\nenabled = true\n"
    host, prefix, ns = "127.0.0.1", [], ""
    if _NET is not None:  # in its namespace; nsenter keeps the host's /sys (cgroups)
        host, ns = (host_info["ip"], host_info["ns"]) if host_info else (
            _node_ip(i), f"{_NET['prefix']}n{i}")
        prefix = netlab.in_ns(ns, [])
        conf += f'[transfer]\ndata_host = "{host}"\n'
    if conf:
        (data / "config.toml").write_text(conf)
        extra = ["--config", str(data / "config.toml")]
    cmd = [
        *prefix,
        *CPN,
        "node",
        "run",
        "--data-dir",
        str(data),
        "--listen",
        f"/ip4/{host}/tcp/0",
        "--log-level",
        log_level,
        *extra,
    ]
    for b in bootstrap:
        cmd += ["--bootstrap", b]
    if fake:
        cmd += ["--fake-gpus", fake]
    with open(data / "stdout.log", "wb") as out, open(data / "node.log", "wb") as err:
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives this command; Ctrl-C here does not reach it
        )
    _PROCS[proc.pid] = proc
    node = {
        "name": name,
        "pid": proc.pid,
        "data_dir": str(data),
        "fake_gpus": fake or "",
        "execution": execution,
        "netns": ns,
        "cmd": cmd,
    }
    if host_info:
        node.update({k: host_info[k] for k in ("segment", "kind", "ip", "public_ip", "roles")})
    return node


def _wait_ready(nodes: list[dict[str, Any]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = [n for n in nodes if "peer_id" not in n]
    while pending:
        for n in list(pending):
            ready = _read_ready(Path(n["data_dir"]) / "stdout.log")
            if ready:
                n.update(peer_id=ready["peer_id"], addr=ready["addrs"][0], api=ready["api"])
                pending.remove(n)
            elif _PROCS[n["pid"]].poll() is not None:
                log = (Path(n["data_dir"]) / "node.log").read_text()[-2000:]
                raise SystemExit(f"testnet: {n['name']} exited during start-up:\n{log}")
        if time.monotonic() > deadline:
            names = ", ".join(n["name"] for n in pending)
            raise SystemExit(
                f"testnet: {names} not ready after {timeout:g} s (see .testnet/*/node.log)"
            )
        time.sleep(0.1)


def _wait_announced(nodes: list[dict[str, Any]], timeout: float) -> None:
    """Until every node printed its "announced" line: its identifiers are in the
    DHT, so a find from any node sees it (a node is ready before that)."""
    deadline = time.monotonic() + timeout
    pending = list(nodes)
    while pending:
        pending = [n for n in pending
                   if _read_ready(Path(n["data_dir"]) / "stdout.log", "announced") is None]
        for n in pending:
            if _PROCS[n["pid"]].poll() is not None:
                raise SystemExit(f"testnet: {n['name']} exited after start-up:\n{_log_tail(n)}")
        if pending and time.monotonic() > deadline:
            names = ", ".join(n["name"] for n in pending)
            raise SystemExit(
                f"testnet: {names} not announced in the DHT after {timeout:g} s "
                "(see .testnet/*/node.log)"
            )
        if pending:
            time.sleep(0.1)


def _alive(n: dict[str, Any]) -> bool:
    """True if ``n['pid']`` still runs *our* daemon for that data dir."""
    try:
        cmdline = Path(f"/proc/{n['pid']}/cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return n["data_dir"].encode() in cmdline and CPN[0].encode() in cmdline


def _save(nodes: list[dict[str, Any]]) -> None:
    tmp = STATE.with_suffix(".tmp")
    tmp.write_text(json.dumps({"nodes": nodes, "net": _NET}, indent=2))
    os.replace(tmp, STATE)


def load_state() -> list[dict[str, Any]]:
    try:
        return list(json.loads(STATE.read_text())["nodes"])
    except FileNotFoundError:
        return []


def load_net() -> dict[str, Any] | None:
    """The ``--netns`` resources recorded in the state file (None: loopback mode)."""
    try:
        net = json.loads(STATE.read_text()).get("net")
    except FileNotFoundError:
        return None
    return dict(net) if net else None


def mode_line(net: dict[str, Any] | None) -> str:
    if net is None:
        return "mode: loopback (127.0.0.1)"
    if net.get("mode") == "nat":
        segs = "; ".join(
            f"{s['name']} {s['kind']} {s['subnet']}"
            + (f" via {net['layout']['routers'][s['name']]['wan_ip']}" if s.get("router") else "")
            for s in net["layout"]["segments"]
        )
        rate = f", TBF {net['rate']} each way" if net.get("rate") else ""
        return (f"mode: nat (namespaces {net['prefix']}*, public segment in {net['hub']}"
                f"{rate}; segments: {segs})")
    netem = f", netem {net['netem']!r} on each eth0" if net.get("netem") else ", no netem"
    return (f"mode: netns (namespaces {net['prefix']}*, bridge in {net['hub']}, "
            f"169.254.0.0/16{netem})")


def up(
    n: int,
    fake: str | None = None,
    log_level: str = "info",
    timeout: float = 120.0,
    execution: frozenset[int] = frozenset(),
    netns: bool = False,
    netem: str | None = None,
    netem_optional: bool = False,
    nat: bool = False,
    topology: list[dict[str, Any]] | None = None,
    rate: str | None = None,
    nodes_too: bool = True,
    announced: bool = True,
) -> list[dict[str, Any]]:
    """Start ``n`` nodes and wait until every one answers ``/v1/health`` and
    (``announced``) has announced its identifiers in the DHT.

    Nodes whose index is in ``execution`` run containers ([execution] enabled).
    ``netns``: each node in its own network namespace (see the module docstring).
    ``nat``: build the NAT testbed from ``topology`` (default
    ``netlab.DEFAULT_TOPOLOGY``; ``n`` is ignored) and run one node per host
    (none with ``nodes_too=False``); bootstrap-role hosts start first."""
    global _NET
    if load_state() or load_net():
        raise SystemExit("testnet: already up (run `tools/testnet down` first)")
    if netem and not netns:
        raise SystemExit("testnet: --netem needs --netns (loopback traffic cannot be shaped; "
                         "with --nat use --rate)")
    if nat and netns:
        raise SystemExit("testnet: --nat and --netns are two different layouts: pick one")
    if rate and not nat:
        raise SystemExit("testnet: --rate needs --nat")
    if netns or nat:
        _netns_preflight("--nat" if nat else "--netns")
    if nat:  # check the topology before anything is made
        try:
            netlab.plan(topology or netlab.DEFAULT_TOPOLOGY, "cpn-tn-check-")
            if rate:
                netlab.parse_rate(rate)
        except netlab.LabError as exc:
            raise SystemExit(f"testnet: {exc}") from None
    if STATE_DIR.exists():
        shutil.rmtree(STATE_DIR)
    STATE_DIR.mkdir(mode=0o700)
    _NET = None
    nodes: list[dict[str, Any]] = []
    try:
        if nat:
            try:
                layout = _nat_setup(topology or netlab.DEFAULT_TOPOLOGY, rate)
            except netlab.LabError as exc:
                raise SystemExit(f"testnet: {exc}") from None
            if not nodes_too:
                return []
            hosts = list(layout["hosts"].values())
            seeds_first = [h for h in hosts if "bootstrap" in h["roles"]] or hosts[:1]
            order = seeds_first + [h for h in hosts if h not in seeds_first]
            for i, h in enumerate(order):
                if h in seeds_first:  # one by one, each bootstrapping from the earlier ones
                    nodes.append(_start(i, [m["addr"] for m in nodes], _fake_for(fake, i),
                                        log_level, i in execution, host_info=h))
                    _save(nodes)
                    _wait_ready(nodes, timeout)
                    continue
                seeds = [m["addr"] for m in nodes[: len(seeds_first)]]
                nodes.append(_start(i, seeds, _fake_for(fake, i), log_level, i in execution,
                                    host_info=h))
                _save(nodes)
        else:
            if netns:
                _net_setup(n, netem, netem_optional)
            # Two seeds first; everyone else bootstraps from both.
            for i in range(min(n, 2)):
                nodes.append(
                    _start(i, [m["addr"] for m in nodes], _fake_for(fake, i), log_level,
                           i in execution)
                )
                _save(nodes)
                _wait_ready(nodes, timeout)
            seeds = [m["addr"] for m in nodes]
            for i in range(2, n):
                nodes.append(_start(i, seeds, _fake_for(fake, i), log_level, i in execution))
                _save(nodes)  # each PID on record at once: `down` after a killed `up` finds it
        _wait_ready(nodes, timeout)
        if announced:
            _wait_announced(nodes, timeout)
        _save(nodes)
        for node in nodes:
            try:
                _health(node)
            except Exception as exc:
                raise SystemExit(f"testnet: {node['name']} does not answer ({exc}):\n{_log_tail(node)}") from None
    except BaseException:
        _save(nodes)
        down()
        raise
    return nodes


def _log_tail(node: dict[str, Any]) -> str:
    try:
        return (Path(node["data_dir"]) / "node.log").read_text()[-2000:]
    except OSError as exc:
        return f"(no log: {exc})"


def _health(node: dict[str, Any]) -> dict[str, Any]:
    from node.api.client import ApiClient

    return ApiClient(socket_path=node["api"], timeout=10).get("/v1/health")  # type: ignore[no-any-return]


def status() -> list[dict[str, Any]]:
    nodes = load_state()
    net = load_net()
    mode = "loopback" if net is None else net.get("mode", "netns")
    out = []
    for node in nodes:
        row = dict(node, mode=mode)
        if not _alive(node):
            row["health"] = "dead"
        else:
            try:
                h = _health(node)
                row["health"] = h["status"]
                row["peers"] = h["peers"]
            except Exception as exc:  # CliError from the client: report, keep going
                row["health"] = f"no answer ({exc})"
        out.append(row)
    return out


def down(timeout: float = 15.0) -> int:
    """SIGTERM exactly our PIDs, wait, SIGKILL stragglers, delete exactly the
    recorded namespaces and links (``--netns``), remove ``.testnet/``."""
    global _NET
    nodes = load_state()
    net = load_net()
    if net is not None and os.geteuid() != 0:
        raise SystemExit("testnet: this testnet runs in network namespaces; `down` needs root")
    ours = [n for n in nodes if _alive(n)]
    for n in ours:
        os.kill(n["pid"], signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_alive(n) for n in ours) and time.monotonic() < deadline:
        time.sleep(0.1)
    killed = 0
    for n in ours:
        if _alive(n):
            os.kill(n["pid"], signal.SIGKILL)
            killed += 1
    for n in ours:  # reap if they are our children (bench runs up() in-process)
        try:
            os.waitpid(n["pid"], os.WNOHANG)
        except ChildProcessError:
            pass
    if net is not None:
        left = _net_teardown(net)
        if left:  # keep the state file: a later `down` retries exactly these
            raise SystemExit(f"testnet: could not delete namespaces {', '.join(left)}")
    _NET = None
    if STATE_DIR.exists():
        shutil.rmtree(STATE_DIR)
    return killed


def _host_rows(net: dict[str, Any] | None, nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per NAT-testbed host, with its node's columns where one runs there."""
    by_name = {n["name"]: n for n in nodes}
    rows = []
    for h in (net or {}).get("layout", {}).get("hosts", {}).values():
        row = dict(h, roles=",".join(h["roles"]) or "-")
        row.update({k: v for k, v in by_name.get(h["name"], {}).items() if k != "roles"})
        rows.append(row)
    return rows


def _exec(host: str, command: list[str]) -> int:
    """Replace this process with ``command`` run in ``host``'s network namespace."""
    net = load_net()
    if net is None:
        raise SystemExit("testnet: `exec` needs a --netns or --nat testnet")
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise SystemExit("testnet: exec HOST -- CMD [ARG...]")
    names = {n["name"]: n["netns"] for n in load_state() if n.get("netns")}
    names.update({h: v["ns"] for h, v in net.get("layout", {}).get("hosts", {}).items()})
    names.update({f"r-{r}": v["ns"] for r, v in net.get("layout", {}).get("routers", {}).items()})
    if host not in names:
        raise SystemExit(f"testnet: no host {host!r} (hosts: {', '.join(sorted(names))})")
    argv = netlab.in_ns(names[host], command)
    os.execvp(argv[0], argv)


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    data = [cols] + [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(r[i]) for r in data) for i in range(len(cols))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in data
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tools/testnet",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start N daemons")
    u.add_argument("-n", type=int, default=None, help="number of nodes (default 3; not --nat)")
    u.add_argument("--fake-gpus", help="'mix' or 'SPEC;SPEC;...' cycled over nodes")
    u.add_argument("--log-level", default="info")
    u.add_argument(
        "--execution",
        default="",
        metavar="I,J,...",
        help="indices of nodes that run containers ([execution] enabled = true), e.g. 0,1",
    )
    u.add_argument(
        "--netns",
        action="store_true",
        help="root only: each node in its own network namespace (cpn-tn-<id>-nI), veth pairs "
        "to a bridge in cpn-tn-<id>-hub, addresses 169.254.1.I+1/16 inside the namespaces only",
    )
    u.add_argument(
        "--netem",
        metavar="SPEC",
        help="with --netns: `tc qdisc add dev eth0 root netem SPEC` in every node namespace, "
        "e.g. 'delay 25ms loss 0.5%%' (fails if the kernel lacks sch_netem)",
    )
    u.add_argument(
        "--netem-optional",
        action="store_true",
        help="warn and go on without netem when the kernel lacks sch_netem",
    )
    u.add_argument(
        "--nat",
        action="store_true",
        help="root only, needs nftables: the NAT testbed (public segment, eim / symmetric NAT "
        "and firewall routers, one node per host; see tools/netlab.py, docs/testbed.md)",
    )
    u.add_argument(
        "--topology",
        metavar="SPEC",
        help="with --nat: NAME=KIND[:HOSTS],... (kinds: public, eim, symmetric, firewall; "
        "exactly one public segment) or a JSON list or @FILE; default: pub=public:3,"
        "eim1=eim,eim2=eim,sym1=symmetric,sym2=symmetric,fw1=firewall,fw2=firewall",
    )
    u.add_argument(
        "--rate",
        metavar="RATE",
        help="with --nat: TBF-shape every link to the public segment, both ways (e.g. 100mbit)",
    )
    u.add_argument(
        "--no-nodes",
        action="store_true",
        help="with --nat: build only the network, start no daemons (use `exec` to run things)",
    )
    u.add_argument("--json", action="store_true")
    s = sub.add_parser("status", help="health of each node (with --nat: and the hosts)")
    s.add_argument("--json", action="store_true")
    e = sub.add_parser("exec", help="--netns/--nat: run a command in a host's namespace",
                       description="tools/testnet exec HOST -- CMD [ARG...]: run CMD inside "
                       "HOST's network namespace (nsenter --net), e.g. tools/testnet exec "
                       "eim1-0 -- python3 -c ...; HOST is a node or host name.")
    e.add_argument("host")
    e.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("down", help="stop the nodes, delete the namespaces/links/nft rules it made, "
                   "remove .testnet/")
    args = p.parse_args(argv)
    if args.cmd == "up":
        nat = args.nat
        if args.n is not None and nat:
            p.error("-n does not apply to --nat (the topology says how many hosts)")
        n = 3 if args.n is None else args.n
        if not 1 <= n <= 200:
            p.error("-n must be 1..200")
        if (args.topology or args.no_nodes or args.rate) and not nat:
            p.error("--topology, --rate and --no-nodes need --nat")
        try:
            execution = frozenset(int(x) for x in args.execution.split(",") if x.strip())
        except ValueError:
            p.error("--execution takes node indices, e.g. 0,1")
        topology = None
        if args.topology:
            spec = args.topology
            if spec.startswith("@"):
                spec = Path(spec[1:]).read_text()
            try:
                topology = netlab.parse_topology(spec)
            except (netlab.LabError, ValueError) as exc:
                p.error(f"--topology: {exc}")
        nodes = up(n, args.fake_gpus, args.log_level, execution=execution,
                   netns=args.netns, netem=args.netem, netem_optional=args.netem_optional,
                   nat=nat, topology=topology, rate=args.rate, nodes_too=not args.no_nodes)
        if args.json:
            print(json.dumps(nodes if not args.no_nodes else _NET, indent=2))
        else:
            print(mode_line(_NET))
            if nat:
                print(_table(_host_rows(_NET, nodes),
                             ["name", "kind", "ip", "public_ip", "roles", "pid", "peer_id"]))
            else:
                print(_table(nodes, ["name", "pid", "peer_id", "addr", "api", "fake_gpus",
                                     "execution"]))
        return 0
    if args.cmd == "exec":
        return _exec(args.host, args.command)
    if args.cmd == "status":
        rows = status()
        net = load_net()
        if not rows and not (net and net.get("mode") == "nat"):
            print("testnet: not running")
            return 1
        if args.json:
            print(json.dumps(rows if net is None or net.get("mode") != "nat"
                             else {"net": net, "nodes": rows}, indent=2))
        else:
            print(mode_line(net))
            if net and net.get("mode") == "nat":
                print(_table(_host_rows(net, rows),
                             ["name", "kind", "ip", "public_ip", "roles", "pid", "health",
                              "peers", "peer_id"]))
            else:
                print(_table(rows, ["name", "pid", "health", "peers", "peer_id", "fake_gpus"]))
        return 0 if all(r["health"] == "ok" for r in rows) else 1
    killed = down()
    print("testnet: stopped" + (f" ({killed} needed SIGKILL)" if killed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
