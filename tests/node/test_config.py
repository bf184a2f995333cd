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
    assert cfg.execution.runtime == "runc" and not cfg.execution.enabled


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
        ('[node]\nbootstrap = ["/ip4/1.2.3.4/tcp/1"]\n', "node.bootstrap"),
        ('[node]\nlisten = ["/ip4/1.2.3.4/udp/1"]\n', "node.listen"),
        ("[negotiation]\nreservation_s = 0\n", "negotiation.reservation_s"),
        ('[negotiation]\nallowed_peers = ["bob"]\n', "negotiation.allowed_peers"),
        ("[negotiation]\nmax_job = 5\n", "negotiation.max_job"),
        ('[transfer]\nserve_granted = "no"\n', "transfer.serve_granted"),
        ("[transfer]\nserve_grant = true\n", "transfer.serve_grant"),
        ('[transfer]\ndata_host = "example.org"\n', "transfer.data_host"),
        ("[transfer]\nquota_mib = -1\n", "transfer.quota_mib"),
        ("[execution]\nenabled = 1\n", "execution.enabled"),
        ('[execution]\nrunc = "x"\n', "execution.runc"),
        ('[discovery]\nfake_gpus = "warp9:1"\n', "discovery.fake_gpus"),
        ("[probe]\nx = 1\n", "probe"),
        ("[store]\nx = 1\n", "store"),
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


def test_every_section_is_typed_and_documented() -> None:
    """One mechanism: every key has a type, a default and a line of documentation."""
    from node.config import SECTIONS, reference

    rows = reference()
    assert {r[0] for r in rows} == set(SECTIONS)
    for section, key, kind, _default, doc, _flag in rows:
        assert doc and kind in ("bool", "int", "str", "list[str]"), (section, key, kind)
    cfg = load_config(None)
    assert cfg.transfer.quota_bytes is None and cfg.transfer.serve_granted is True
    assert load_config(None, {"transfer.quota_mib": 2}).transfer.quota_bytes == 2 << 20
