"""Config: TOML validated at start, errors name the key, CLI overrides win."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cpn.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CPN_HOME", str(tmp_path / "home"))
    cfg = load_config(None)
    assert cfg.data_dir == tmp_path / "home"
    assert cfg.api_socket == tmp_path / "home" / "api.sock"
    assert cfg.metrics.port == 0
    assert cfg.discovery.advert_lifetime_s <= 600


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[node]\nlisten = ["/ip4/127.0.0.1/tcp/5000"]\nlog_level = "debug"\n'
        '[discovery]\nadvert_lifetime_s = 120\n[execution]\nruntime = "runc"\n',
    )
    cfg = load_config(path)
    assert cfg.node.listen == ["/ip4/127.0.0.1/tcp/5000"]
    assert cfg.node.log_level == "debug"
    assert cfg.discovery.advert_lifetime_s == 120
    assert cfg.raw["execution"] == {"runtime": "runc"}


def test_cli_overrides_win_and_none_means_not_given(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nlisten = ["/ip4/127.0.0.1/tcp/5000"]\nlog_level = "debug"\n')
    cfg = load_config(path, {"node.listen": ["/ip4/127.0.0.1/tcp/6000"], "node.log_level": None})
    assert cfg.node.listen == ["/ip4/127.0.0.1/tcp/6000"]
    assert cfg.node.log_level == "debug"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[node]\nlisen = []\n", "node.lisen"),
        ('[node]\nlog_level = "loud"\n', "node.log_level"),
        ('[metrics]\nport = "9100"\n', "metrics.port"),
        ("[metrics]\nport = 70000\n", "metrics.port"),
        ("[discovery]\nadvert_lifetime_s = 3600\n", "discovery.advert_lifetime_s"),
        ("[discovery]\nenabled = 1\n", "discovery.enabled"),
        ('[node]\nbootstrap = ["/ip4/1.2.3.4/tcp/1"]\n', "node.bootstrap[0]"),
        ("[nodes]\nx = 1\n", "nodes"),
        ("node = 3\n", "node"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert str(err.value).startswith(key + ":")


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[node\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_override_is_validated_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^metrics\.port:"):
        load_config(None, {"metrics.port": -1})
