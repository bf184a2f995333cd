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
from typing import Any

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


def between(lo: int, hi: int, unit: str = "") -> Rule:
    return lambda v: None if lo <= v <= hi else f"must be {lo}..{hi}{unit}"


def at_least(lo: int, unit: str = "") -> Rule:
    return lambda v: None if v >= lo else f"must be at least {lo}{unit}"


def one_of(*choices: str) -> Rule:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _listen_addrs(v: list[str]) -> str | None:
    if not v:
        return "needs at least one address"
    for addr in v:
        if not addr.startswith(("/ip4/", "/ip6/")) or "/tcp/" not in addr:
            return f"{addr!r} is not a multiaddr like /ip4/0.0.0.0/tcp/4001"
    return None


def _peer_addrs(v: list[str]) -> str | None:
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
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return f"must be an IP address (got {v!r})"
    return None


def _fake_gpus(v: str) -> str | None:
    if not v:
        return None
    from node.find.nvml import load_fake_nvml

    try:
        load_fake_nvml(v)
    except ValueError as exc:
        return str(exc)
    return None


def _peer_ids(v: list[str]) -> str | None:
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

    port: int = setting(0, "0 disables; else the dashboard on `http://127.0.0.1:<port>/`.",
                        rule=between(0, 65535), flag="--dashboard-port")


@dataclass(frozen=True)
class DiscoverySection:
    """``[discovery]``: probing and advertising (spec/dht.md)."""

    enabled: bool = setting(True, "Advertise. `false`: the node routes and searches but offers nothing.")
    advert_lifetime_s: int = setting(
        300, "Validity of one signed advert; refreshed before it expires.", rule=between(30, 600, " seconds")
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


@dataclass(frozen=True)
class NegotiationSection:
    """``[negotiation]``: who may get quotes, for what, and how long capacity is held."""

    allowed_peers: list[str] = setting([], "Peer IDs allowed to get quotes. Empty: everyone.", rule=_peer_ids)
    max_job_s: int = setting(24 * 3600, "Longest run time accepted (`run_s`).", rule=at_least(1, " seconds"))
    max_image_mib: int = setting(64 * 1024, "Largest image plus inputs accepted.", rule=at_least(1, " MiB"))
    min_price: int = setting(0, "The least any job pays here, micro-units.", rule=at_least(0))
    reservation_s: int = setting(30, "How long a quote holds capacity.", rule=between(1, 600, " seconds"))


@dataclass(frozen=True)
class TransferSection:
    """``[transfer]``: the blob store and the bulk data plane (spec/transfer.md)."""

    data_host: str = setting(
        "127.0.0.1", "IP address the data plane listens on and hands out in tickets.", rule=_ip_literal
    )
    quota_mib: int = setting(0, "Upper bound of the blob store. 0: unlimited.", rule=at_least(0, " MiB"))
    serve_granted: bool = setting(
        True, "Serve cached blobs to a submitter's other providers holding its FetchGrant."
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
