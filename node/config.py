"""Daemon configuration: a TOML file, validated at start, overridden by CLI flags.

Every known key has a type and a default (the dataclasses below).  Validation
fails fast with :class:`ConfigError` naming the dotted key (``discovery.
advert_lifetime_s: must be an integer``) so a typo never silently falls back
to a default.  Sections that belong to other areas of the node and are not
described here are listed in :data:`RAW_SECTIONS` and handed over as plain
tables (``config.raw["execution"]``); those areas validate them.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Config",
    "NodeSection",
    "ApiSection",
    "MetricsSection",
    "DiscoverySection",
    "ConfigError",
    "load_config",
    "default_data_dir",
    "RAW_SECTIONS",
]

#: Sections owned by other subsystems: passed through as tables, validated there.
RAW_SECTIONS = frozenset({"negotiation", "transfer", "execution", "probe", "store"})

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """The configuration is invalid.  The message starts with the offending key."""


def default_data_dir() -> Path:
    """``$CPN_HOME`` or ``~/.local/share/cpn``."""
    env = os.environ.get("CPN_HOME")
    return Path(env) if env else Path.home() / ".local" / "share" / "cpn"


@dataclass
class NodeSection:
    data_dir: str = ""  #: empty: default_data_dir()
    listen: list[str] = field(default_factory=lambda: ["/ip4/0.0.0.0/tcp/4001"])
    bootstrap: list[str] = field(default_factory=list)
    log_level: str = "info"

    def check(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"node.log_level: must be one of {', '.join(LOG_LEVELS)}")
        for i, addr in enumerate(self.listen):
            if not addr.startswith("/ip4/") and not addr.startswith("/ip6/"):
                raise ConfigError(
                    f"node.listen[{i}]: must be a multiaddr like /ip4/0.0.0.0/tcp/4001"
                )
        if not self.listen:
            raise ConfigError("node.listen: needs at least one address")
        for i, addr in enumerate(self.bootstrap):
            if "/p2p/" not in addr:
                raise ConfigError(f"node.bootstrap[{i}]: must end in /p2p/<peer id>")


@dataclass
class ApiSection:
    socket: str = ""  #: empty: <data_dir>/api.sock

    def check(self) -> None:
        pass


@dataclass
class MetricsSection:
    port: int = 0  #: 0 disables; otherwise served on 127.0.0.1:<port>

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("metrics.port: must be 0 (off) or a TCP port")


@dataclass
class DiscoverySection:
    enabled: bool = True
    advert_lifetime_s: int = 300  #: validity of one advert; at most 600
    reprovide_interval_s: int = 3600  #: re-announce provider records this often
    fake_gpus: str = ""  #: fake NVML inventory (spec or JSON file) for testnets
    price_gpu_hour: int = 1_000_000  #: micro-units per GPU-hour
    price_cpu_core_hour: int = 10_000
    price_memory_gib_hour: int = 1_000

    def check(self) -> None:
        if not 30 <= self.advert_lifetime_s <= 600:
            raise ConfigError("discovery.advert_lifetime_s: must be 30..600 seconds")
        if self.reprovide_interval_s < 60:
            raise ConfigError("discovery.reprovide_interval_s: must be at least 60 seconds")
        for name in ("price_gpu_hour", "price_cpu_core_hour", "price_memory_gib_hour"):
            if getattr(self, name) < 0:
                raise ConfigError(f"discovery.{name}: must be >= 0")


@dataclass
class Config:
    """The validated configuration of one daemon."""

    node: NodeSection = field(default_factory=NodeSection)
    api: ApiSection = field(default_factory=ApiSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    discovery: DiscoverySection = field(default_factory=DiscoverySection)
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)  #: RAW_SECTIONS tables

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir).expanduser() if self.node.data_dir else default_data_dir()

    @property
    def api_socket(self) -> Path:
        return Path(self.api.socket) if self.api.socket else self.data_dir / "api.sock"


_SECTIONS = {
    "node": NodeSection,
    "api": ApiSection,
    "metrics": MetricsSection,
    "discovery": DiscoverySection,
}


def _check_value(key: str, value: Any, hint: Any) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false")
    elif hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key}: must be an integer")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: must be a string")
    elif typing.get_origin(hint) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: must be a list of strings")
    return value


def _build_section(name: str, table: Any) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(table, dict):
        raise ConfigError(f"{name}: must be a table ([{name}])")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in table:
        if key not in names:
            raise ConfigError(f"{name}.{key}: unknown key (known: {', '.join(sorted(names))})")
    values = {k: _check_value(f"{name}.{k}", v, hints[k]) for k, v in table.items()}
    section = cls(**values)
    section.check()
    return section


def config_from_dict(data: dict[str, Any]) -> Config:
    """Validate a parsed TOML document."""
    cfg = Config()
    for name, table in data.items():
        if name in _SECTIONS:
            setattr(cfg, name, _build_section(name, table))
        elif name in RAW_SECTIONS:
            if not isinstance(table, dict):
                raise ConfigError(f"{name}: must be a table ([{name}])")
            cfg.raw[name] = table
        else:
            known = sorted([*_SECTIONS, *RAW_SECTIONS])
            raise ConfigError(f"{name}: unknown section (known: {', '.join(known)})")
    return cfg


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
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, key = dotted.split(".", 1)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section}: must be a table ([{section}])")
        data[section][key] = value
    return config_from_dict(data)
