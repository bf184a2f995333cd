"""Daemon configuration: one TOML file, validated when it is loaded, overridden by flags.

Every section is a frozen dataclass declared here, and every key carries its
type, default, documentation and rule (:func:`setting`).  One loader checks
them all the same way: an unknown section or key, a wrong type or a broken
rule is a :class:`ConfigError` whose message starts with the dotted key and
says the rule (``negotiation.reservation_s: must be 1..600 (got 0)``), so a
typo never silently falls back to a default.  Command-line flags override
through the same path (``load_config(path, {"node.listen": [...]})``).
Services receive their section, already valid; none reads raw tables.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from node.reach import RelayPolicy

__all__ = [
    "Config",
    "ConfigError",
    "NodeSection",
    "ApiSection",
    "MetricsSection",
    "DashboardSection",
    "DiscoverySection",
    "NegotiationSection",
    "TransferSection",
    "ExecutionSection",
    "JobsSection",
    "RelaySection",
    "load_config",
    "config_from_dict",
    "default_data_dir",
    "SECTIONS",
]

LOG_LEVELS = ("debug", "info", "warning", "error")

#: A rule: ``None`` if the value is acceptable, else what it must be.
Rule = Callable[[Any], str | None]


class ConfigError(Exception):
    """The configuration is invalid.  The message starts with the offending key."""


def default_data_dir() -> Path:
    """``$CPN_HOME`` or ``~/.local/share/cpn``."""
    env = os.environ.get("CPN_HOME")
    return Path(env) if env else Path.home() / ".local" / "share" / "cpn"


def setting(default: Any, doc: str, *, rule: Rule | None = None, flag: str = "") -> Any:
    """A config key: its default, one-line documentation, rule and command-line flag."""
    meta = {"doc": doc, "rule": rule, "flag": flag}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------- rules


#: What each rule requires, in words (the operator docs' "Rule" column).
RULE_TEXT: dict[Rule, str] = {}


def _described(rule: Rule, text: str) -> Rule:
    RULE_TEXT[rule] = text
    return rule


def between(lo: int, hi: int, unit: str = "") -> Rule:
    return _described(lambda v: None if lo <= v <= hi else f"must be {lo}..{hi}{unit}", f"{lo}..{hi}{unit}")


def at_least(lo: int, unit: str = "") -> Rule:
    return _described(lambda v: None if v >= lo else f"must be at least {lo}{unit}", f">= {lo}{unit}")


def one_of(*choices: str) -> Rule:
    return _described(lambda v: None if v in choices else f"must be one of {', '.join(choices)}",
                      " or ".join(f"`{c}`" for c in choices))


def _listen_addrs(v: list[str]) -> str | None:
    """at least one `/ip4/.../tcp/PORT` or `/ip6/.../tcp/PORT`"""
    if not v:
        return "needs at least one address"
    for addr in v:
        if not addr.startswith(("/ip4/", "/ip6/")) or "/tcp/" not in addr:
            return f"{addr!r} is not a multiaddr like /ip4/0.0.0.0/tcp/4001"
    return None


def _peer_addrs(v: list[str]) -> str | None:
    """multiaddrs ending in `/p2p/<peer id>`"""
    from node.addrs import AddrError, split_peer

    for addr in v:
        try:
            transport, peer = split_peer(addr)
        except AddrError as exc:
            return str(exc)
        if peer is None or not transport:
            return f"{addr!r} must be an address ending in /p2p/<peer id>"
    return None


def _ip_literal(v: str) -> str | None:
    """an IP address"""
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"must be an IP address (got {v!r})"
    return None


def _fake_gpus(v: str) -> str | None:
    """empty, `model:count,...` or a JSON file"""
    if not v:
        return None
    from node.find.nvml import load_fake_nvml

    try:
        load_fake_nvml(v)
    except ValueError as exc:
        return str(exc)
    return None


def _peer_ids(v: list[str]) -> str | None:
    """peer IDs"""
    from protocol.errors import ProtocolError
    from protocol.identity import validate_peer_id

    for p in v:
        try:
            validate_peer_id(p)
        except ProtocolError:
            return f"{p!r} is not a peer ID"
    return None


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class NodeSection:
    """``[node]``: identity, addresses and logging."""

    data_dir: str = setting(
        "", "Data directory. Empty: `$CPN_HOME`, else `~/.local/share/cpn`.", flag="--data-dir"
    )
    listen: list[str] = setting(
        ["/ip4/0.0.0.0/tcp/4001"],
        "libp2p listen addresses (`/ip4/...` or `/ip6/...`, TCP). At least one.",
        rule=_listen_addrs,
        flag="--listen",
    )
    bootstrap: list[str] = setting(
        [],
        "Peers to join the DHT through; each ends in `/p2p/<peer id>`. None: a network of its own.",
        rule=_peer_addrs,
        flag="--bootstrap",
    )
    log_level: str = setting(
        "info", "`debug`, `info`, `warning` or `error`; also py-libp2p's logs.",
        rule=one_of(*LOG_LEVELS), flag="--log-level",
    )
    peer_log_per_minute: int = setting(
        6, "Log lines one remote peer can cause per minute (the rest are counted, not printed).",
        rule=between(1, 10_000),
    )


@dataclass(frozen=True)
class ApiSection:
    """``[api]``: the local API socket."""

    socket: str = setting("", "Path of the local API socket (mode 0600). Empty: `<data_dir>/api.sock`.")


@dataclass(frozen=True)
class MetricsSection:
    """``[metrics]``: Prometheus text format on localhost."""

    port: int = setting(
        0, "0 disables; else Prometheus metrics on `127.0.0.1:<port>`.",
        rule=between(0, 65535), flag="--metrics-port",
    )


@dataclass(frozen=True)
class DashboardSection:
    """``[dashboard]``: the read-only web dashboard on localhost."""

    port: int = setting(0, "0 disables; else the dashboard on `http://127.0.0.1:<port>/` (see docs/dashboard.md).",
                        rule=between(0, 65535), flag="--dashboard-port")
    private: bool = setting(
        True, "Require the token in `<data_dir>/dashboard.token` (mode 0600) for reads too, not only for "
        "actions; `false` lets every local user read the dashboard (job logs included).")


@dataclass(frozen=True)
class DiscoverySection:
    """``[discovery]``: probing and advertising (spec/dht.md)."""

    enabled: bool = setting(True, "Advertise. `false`: the node routes and searches but offers nothing.")
    advert_lifetime_s: int = setting(
        600, "Validity of one signed advert; a fresh one is published half-way through (at once when the free "
        "capacity changes). Shorter: a dead provider's advert goes sooner, for more DHT traffic.",
        rule=between(30, 600, " seconds")
    )
    reprovide_interval_s: int = setting(
        3600,
        "Re-announce DHT provider records at most this far apart (records live 3 h on CPN nodes).",
        rule=between(60, 3600, " seconds"),
    )
    fake_gpus: str = setting(
        "", "Testnets only: a fake NVML inventory (`h100:2,a100-40g:1` or a JSON file).",
        rule=_fake_gpus, flag="--fake-gpus",
    )
    price_gpu_hour: int = setting(1_000_000, "Price per GPU-hour, micro-units.", rule=at_least(0))
    price_cpu_core_hour: int = setting(10_000, "Price per CPU-core-hour, micro-units.", rule=at_least(0))
    price_memory_gib_hour: int = setting(1_000, "Price per GiB-hour of memory, micro-units.", rule=at_least(0))
    find_max_candidates: int = setting(
        64, "Providers one find checks at most (known-good ones first); the rest are skipped.",
        rule=between(1, 10_000),
    )
    find_failure_memory_s: int = setting(
        300,
        "The longest a finder skips a provider that failed checks (unreachable, invalid, gone): "
        "15 s after one failure, doubling with each failure in a row, at most this.",
        rule=between(0, 86_400, " seconds"),
    )


@dataclass(frozen=True)
class NegotiationSection:
    """``[negotiation]``: who may get quotes, for what, and how long capacity is held."""

    allowed_peers: list[str] = setting([], "Peer IDs allowed to get quotes. Empty: everyone.", rule=_peer_ids)
    max_job_s: int = setting(24 * 3600, "Longest run time accepted (`run_s`).", rule=at_least(1, " seconds"))
    max_image_mib: int = setting(64 * 1024, "Largest image plus inputs accepted.", rule=at_least(1, " MiB"))
    min_price: int = setting(0, "The least any job pays here, micro-units.", rule=at_least(0))
    reservation_s: int = setting(30, "How long a quote holds capacity.", rule=between(1, 600, " seconds"))
    max_transfer_s: int = setting(
        3600, "Longest `transfer_s` accepted; offers asking more are refused `policy_denied`.",
        rule=at_least(1, " seconds"),
    )
    max_queue_s: int = setting(
        3600, "Longest `queue_s` accepted; offers asking more are refused `policy_denied`.",
        rule=at_least(1, " seconds"),
    )
    max_fetch_failures: int = setting(
        8, "Failed fetches in a row (submitter unreachable or unauthorised) after which an agreed "
        "job's transfer is given up and its capacity released.", rule=between(1, 1000),
    )
    max_negotiations_per_peer: int = setting(
        4, "Negotiation streams one peer may have open at once; more are reset unread.",
        rule=between(1, 1000),
    )
    max_reservations_per_peer: int = setting(
        4, "Quotes (reserved capacity) one peer may hold at once; more offers are refused `busy`.",
        rule=between(1, 1000),
    )
    max_agreements_per_peer: int = setting(
        8, "Open agreements (not yet finished) one peer may hold; more offers are refused `busy`.",
        rule=between(1, 10_000),
    )
    reservations_per_minute: int = setting(
        30, "Quotes one peer may get per minute that it does not accept (bursts of "
        "`max_reservations_per_peer`); more offers are refused `busy` (rate limited).",
        rule=between(1, 100_000),
    )
    abandon_backoff_s: int = setting(
        30, "A peer that let a quote lapse (no accept, no cancel) is refused `busy` this long, "
        "doubling per further lapse within an hour (at most 64x). 0: off.",
        rule=between(0, 3600, " seconds"),
    )


@dataclass(frozen=True)
class TransferSection:
    """``[transfer]``: the blob store and the bulk data plane (spec/transfer.md)."""

    data_host: str = setting(
        "127.0.0.1", "IP address the data plane listens on and hands out in tickets: set it to an address "
        "peers can reach (the default works on one machine only).", rule=_ip_literal
    )
    quota_mib: int = setting(0, "Upper bound of the blob store. 0: unlimited.", rule=at_least(0, " MiB"))
    serve_granted: bool = setting(
        True, "Serve cached blobs to a submitter's other providers holding its FetchGrant."
    )
    data_handshake_s: int = setting(
        5, "Seconds a data connection has to send its preamble and first frame.", rule=between(1, 60, " seconds")
    )
    data_stall_s: int = setting(
        20, "Seconds one chunk frame may take to leave; a slower reader is dropped.",
        rule=between(1, 600, " seconds"),
    )
    data_conns: int = setting(512, "Open data-plane connections in all.", rule=between(1, 65536))
    data_conns_per_addr: int = setting(
        32, "Open data-plane connections per source IP address.", rule=between(1, 65536)
    )
    data_conns_per_peer: int = setting(
        8, "Admitted data-plane connections per peer ID (keep it below data_threads).", rule=between(1, 4096)
    )
    data_threads: int = setting(
        32, "Worker threads serving chunks (fetching has as many of its own).", rule=between(1, 1024)
    )
    tickets_per_peer: int = setting(
        64, "Unused data-plane tickets one peer may hold; the oldest goes first.", rule=between(1, 4096)
    )
    punch: bool = setting(
        True, "Punch TCP connections for bulk data between a symmetric NAT and an EIM NAT (a few hundred SYNs "
        "per transfer, towards the other peer's public address only); off: such transfers go through a relay."
    )
    cache_idle_s: int = setting(
        3 * 24 * 3600, "Unpinned blobs other peers delivered (a cache) are deleted after this long unused.",
        rule=at_least(60, " seconds"),
    )

    @property
    def quota_bytes(self) -> int | None:
        return self.quota_mib << 20 if self.quota_mib else None


@dataclass(frozen=True)
class ExecutionSection:
    """``[execution]``: the container runtime (podman)."""

    enabled: bool = setting(False, "Run the container self-test at start and accept container jobs.")
    runtime: str = setting("", "OCI runtime for podman (`runc`, `crun`). Empty: chosen by the self-test.")
    podman_root: str = setting("", "Private containers-storage root (`podman --root`). Empty: podman's own.")
    podman_runroot: str = setting("", "`podman --runroot`. Empty: podman's, or `<podman_root>/run`.")
    cdi_kind: str = setting("nvidia.com/gpu", "CDI device kind GPUs are requested as.")
    max_image_unpacked_mib: int = setting(
        32 * 1024, "Largest uncompressed size of one job's image layers (a gzip bomb stops here).",
        rule=at_least(1, " MiB"),
    )
    result_retention_s: int = setting(
        7 * 24 * 3600, "A result's outputs and log are kept this long when no receipt arrives.",
        rule=at_least(60, " seconds"),
    )
    image_idle_s: int = setting(
        7 * 24 * 3600, "Images CPN loaded into podman are removed after this long unused.",
        rule=at_least(60, " seconds"),
    )


@dataclass(frozen=True)
class JobsSection:
    """``[jobs]``: jobs this node submits (the submitter side of spec/jobflow.md)."""

    log_memory_lines: int = setting(
        2000, "Live log lines of one job kept in memory; all are spilled to a file in the data dir.",
        rule=between(10, 1_000_000),
    )
    max_log_mib: int = setting(
        64, "Live log of one job spilled to disk at most; later lines are dropped (the verified "
        "log still arrives with the result).", rule=between(1, 1 << 20, " MiB"),
    )
    live_log_kib_per_s: int = setting(
        1024, "A job's watch stream is read at most this fast (a flooding provider is slowed at its "
        "end, not paid for with our CPU); the full log still comes with the result.",
        rule=between(16, 1 << 20, " KiB/s"),
    )
    run_grace_s: int = setting(
        300, "A job without a result this long after `transfer_s + queue_s + run_s` from its "
        "agreement is given up (the provider is told to cancel).", rule=between(1, 86_400, " seconds"),
    )


@dataclass(frozen=True)
class RelaySection:
    """``[relay]``: circuit relay v2 for nodes behind NAT (docs/operators.md).

    A node that AutoNAT finds publicly reachable relays for private nodes
    (control traffic: negotiation, job status, adverts; bulk data goes direct
    wherever the NATs allow).  A private node reserves slots on other relays.
    """

    enabled: bool = setting(
        True, "Relay for nodes behind NAT while this node is publicly reachable.")
    reservations: int = setting(
        2, "Relays a node behind NAT holds slots on.", rule=between(1, 8))
    max_reservations: int = setting(
        128, "Nodes behind NAT this relay holds slots for.", rule=between(1, 100_000))
    reservation_ttl_s: int = setting(
        3600, "Lifetime of one slot; nodes renew it before it ends.",
        rule=between(300, 86_400, " seconds"))
    circuit_mib: int = setting(
        128, "Data one relayed connection may carry (both ways); then it is reset.",
        rule=between(1, 1 << 20, " MiB"))
    circuit_duration_s: int = setting(
        3600, "Lifetime of one relayed connection.", rule=between(60, 86_400, " seconds"))
    circuit_rate_kib: int = setting(
        2048, "Bandwidth of one relayed connection, each way (KiB/s).",
        rule=between(16, 1 << 24, " KiB/s"))
    total_rate_kib: int = setting(
        16384, "Bandwidth of all relayed connections together (KiB/s).",
        rule=between(16, 1 << 26, " KiB/s"))
    max_circuits: int = setting(256, "Relayed connections at once.", rule=between(1, 100_000))
    max_circuits_per_peer: int = setting(
        16, "Relayed connections one peer may be part of at once.", rule=between(1, 1024))

    def policy(self) -> RelayPolicy:
        """As a :class:`node.reach.RelayPolicy` (what the libp2p adapter takes)."""
        from node.reach import RelayPolicy

        return RelayPolicy(
            enabled=self.enabled, reservations=self.reservations,
            max_reservations=self.max_reservations, reservation_ttl_s=self.reservation_ttl_s,
            circuit_bytes=self.circuit_mib << 20, circuit_duration_s=self.circuit_duration_s,
            circuit_rate=self.circuit_rate_kib << 10, total_rate=self.total_rate_kib << 10,
            max_circuits=self.max_circuits, max_circuits_per_peer=self.max_circuits_per_peer,
        )


@dataclass(frozen=True)
class Config:
    """The validated configuration of one daemon."""

    node: NodeSection = field(default_factory=NodeSection)
    api: ApiSection = field(default_factory=ApiSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    dashboard: DashboardSection = field(default_factory=DashboardSection)
    discovery: DiscoverySection = field(default_factory=DiscoverySection)
    negotiation: NegotiationSection = field(default_factory=NegotiationSection)
    transfer: TransferSection = field(default_factory=TransferSection)
    execution: ExecutionSection = field(default_factory=ExecutionSection)
    jobs: JobsSection = field(default_factory=JobsSection)
    relay: RelaySection = field(default_factory=RelaySection)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir).expanduser() if self.node.data_dir else default_data_dir()

    @property
    def api_socket(self) -> Path:
        return Path(self.api.socket) if self.api.socket else self.data_dir / "api.sock"


#: Section name -> dataclass, in file order.
SECTIONS: dict[str, type[Any]] = dict(typing.get_type_hints(Config))


# --------------------------------------------------------------------------- loading


def _type_problem(value: Any, hint: Any) -> str | None:
    if hint is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else "must be an integer"
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "must be a finite number"
    if hint is str:
        return None if isinstance(value, str) else "must be a string"
    if typing.get_origin(hint) is list:
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else "must be a list of strings"
    raise TypeError(f"config: no check for type {hint!r}")  # pragma: no cover - a bug here


def _build_section(name: str, table: Any) -> Any:
    cls = SECTIONS[name]
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: must be a table ([{name}])")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in fields:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(fields)})")
    for key, value in table.items():
        problem = _type_problem(value, hints[key])
        rule = fields[key].metadata.get("rule")
        if problem is None and rule is not None:
            problem = rule(value)
        if problem is not None:
            raise ConfigError(f"{name}.{key}: {problem} (got {value!r})")
    return cls(**table)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document (unknown sections and keys are errors)."""
    sections: dict[str, Any] = {}
    for name, table in data.items():
        if name not in SECTIONS:
            raise ConfigError(f"{name}: unknown section (known: {', '.join(SECTIONS)})")
        sections[name] = _build_section(name, table)
    return Config(**sections)


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read ``path`` (if given), apply ``overrides`` (``{"node.listen": [...]}``), validate.

    Overrides come from command-line flags and win over the file; ``None``
    values are ignored (flag not given).
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: cannot read it: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        table = data.setdefault(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{section}: must be a table ([{section}])")
        table[key] = value
    return config_from_dict(data)


def reference() -> list[tuple[str, str, str, Any, str, str]]:
    """Every key as ``(section, key, type, default, doc, flag)``: the operator docs' table."""
    out = []
    for name, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            hint = hints[f.name]
            kind = "list[str]" if typing.get_origin(hint) is list else hint.__name__
            out.append((name, f.name, kind, default, f.metadata["doc"], f.metadata["flag"]))
    return out


_TOML_TYPES = {"bool": "bool", "int": "integer", "str": "string", "float": "number", "list[str]": "list of strings"}


def reference_markdown() -> str:
    """The config reference of docs/operators.md, one table per section (generated:
    ``tools/config-doc`` writes it; a test checks the doc is current)."""
    import json

    lines: list[str] = []
    for name, cls in SECTIONS.items():
        doc = (cls.__doc__ or "").strip().split(":", 1)[-1].strip()
        doc = doc[:1].upper() + doc[1:]
        lines += [f"### `[{name}]`", "", doc, "", "| Key | Type | Default | Rule | Meaning |",
                  "|-----|------|---------|------|---------|"]
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            kind = "list[str]" if typing.get_origin(hint) is list else hint.__name__
            default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
            rule = f.metadata["rule"]
            text = RULE_TEXT.get(rule, "") if rule is not None else ""
            if not text and rule is not None and rule.__doc__:
                text = rule.__doc__.strip()
            flag = f" Flag: `{f.metadata['flag']}`." if f.metadata["flag"] else ""
            doc_text = f.metadata["doc"].replace("|", "\\|")
            lines.append(f"| `{f.name}` | {_TOML_TYPES[kind]} | `{json.dumps(default)}` | {text} | {doc_text}{flag} |")
        lines.append("")
    return "\n".join(lines)
