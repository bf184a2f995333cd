"""node/cli/find.py through the real CLI against the shared testnet: GPU model names
as people write them, flag values checked and named as flags, prices in one unit,
fake GPUs marked."""

from __future__ import annotations

import json

import pytest
from support.daemons import Testnet, cpn

from node.cli.find import print_result
from node.errors import ExitCode


def _offers(net: Testnet, *args: str) -> tuple[int, list[str]]:
    done = net.cpn(2, "find", "--json", *args)
    assert done.returncode in (0, 3), done.stderr
    return done.returncode, [o["peer_id"] for o in json.loads(done.stdout)["offers"]]


@pytest.mark.parametrize("model", ["H100", "h100", "rtx 4090", "RTX4090", "a100-40g", "NVIDIA A100-SXM4-40GB",
                                   "1xh100-80g"])
def test_gpu_models_as_people_write_them(net: Testnet, model: str) -> None:
    """Each name `cpn find` prints or a person types finds node0 (one H100, one RTX 4090, one A100 40 GB)."""
    code, peers = _offers(net, "--gpu-model", model)
    assert code == 0 and peers == [net.ready[0]["peer_id"]], model


def test_gpu_model_memory_tier_is_a_floor(net: Testnet) -> None:
    assert _offers(net, "--gpu-model", "a100-80g") == (ExitCode.NO_PROVIDER, [])
    assert _offers(net, "--gpus", "2", "--gpu-model", "h100") == (ExitCode.NO_PROVIDER, [])
    code, peers = _offers(net, "--gpu-model", "A100", "--gpu-model", "rtx 4090")
    assert code == 0 and peers == [net.ready[0]["peer_id"]]


def test_a_name_that_is_no_gpu_model(net: Testnet) -> None:
    done = net.cpn(2, "find", "--gpu-model", "!!!")
    assert done.returncode == ExitCode.BAD_INPUT
    assert done.stderr.startswith("cpn: error: --gpu-model: '!!!' is not a GPU model")


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("--gpus", "-1"), "--gpus"),
        (("--gpus=2000",), "--gpus"),
        (("--cpus=-2",), "--cpus"),
        (("--cpus", "0"), "--cpus"),
        (("--cpus", "nan"), "--cpus"),
        (("--limit", "0"), "--limit"),
        (("--timeout", "-5"), "--timeout"),
    ],
)
def test_bad_numbers_name_the_flag(tmp_path: object, args: tuple[str, ...], flag: str) -> None:
    """Checked before any daemon is asked (none runs here): exit 2, the flag named."""
    done = cpn("find", *args, "--data-dir", "/nonexistent")
    assert done.returncode == ExitCode.BAD_INPUT
    assert f"argument {flag}: must be" in done.stderr and "cpu_millis" not in done.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [(("--mem", "0"), "--mem"), (("--gpu-mem", "lots"), "--gpu-mem"), (("--cc", "nine"), "--cc"),
     (("--vendor", "acme"), "--vendor"), (("--disk=-1G",), "--disk")],
)
def test_values_the_daemon_refuses_name_the_flag(net: Testnet, args: tuple[str, ...], flag: str) -> None:
    done = net.cpn(2, "find", *args)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert done.stderr.startswith(f"cpn: error: {flag}: "), done.stderr
    for internal in ("memory_mib", "gpu_mem", "min_compute_capability", "disk_mib", "HTTP 400"):
        assert internal not in done.stderr


def test_table_prices_in_units_and_fake_gpus_marked(net: Testnet) -> None:
    done = net.cpn(2, "find", "--gpu-model", "h100")
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[1:3]
    assert "PRICE (units/h)" in header and row.split()[-1] == "1.000011"  # 1 GPU-hour + 2 cores + memory
    offer = json.loads(net.cpn(2, "find", "--gpu-model", "h100", "--json").stdout)["offers"][0]
    if "gpu_names" not in offer:
        pytest.skip("node/find/finder.py does not put the advertised GPU names in offers yet (see the report)")
    assert "(fake)" in row


def test_fake_marking_in_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    offer = {"peer_id": "12D3KooWx", "rtt_ms": 1, "hourly_cost": 2_000_000, "fit_pct": 50,
             "gpu_summary": "2xh100-80g", "cpu_cores": 4, "memory_mib": 8192,
             "gpu_names": ["NVIDIA H100 80GB HBM3 (fake)"] * 2}
    result = {"identifiers": ["cpn:gpu"], "elapsed_ms": 3, "hops": 1, "offers": [offer]}
    print_result(result)
    out = capsys.readouterr().out
    assert "2xh100-80g (fake)" in out and "2.000000" in out and "fake NVML inventory" in out
    print_result({**result, "offers": [{**offer, "gpu_names": ["NVIDIA H100 80GB HBM3"] * 2}]})
    out = capsys.readouterr().out
    assert "(fake)" not in out
