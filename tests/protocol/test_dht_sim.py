"""bench/dht_sim.py runs protocol/kademlia.py over a small simulated network and reports sane numbers.

Not a benchmark (no speed is asserted): it checks that the simulator drives
the real lookup and provide code to sensible results, deterministically.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SIM = Path(__file__).resolve().parents[2] / "bench" / "dht_sim.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dht_sim", SIM)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["dht_sim"] = mod
    spec.loader.exec_module(mod)
    return mod


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    sim = _load()
    assert sim.main([*args, "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    return result


def test_small_network_with_churn_reports_sane_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    r = _run(capsys, "--nodes", "200", "--churn", "0.35", "--lookups", "20", "--hours", "0.5",
             "--warmup", "300")  # fmt: skip
    assert r["nodes"] == 200 and r["lookups"] >= 55  # 3 classes x 20, less finders that left
    assert r["outcomes"].get("complete", 0) >= 0.9 * r["lookups"]
    for cls in (1, 20, 1000):  # (the "1000" class is all 200 nodes here)
        assert r[f"findability_{cls}"] >= 0.95
    assert 1 <= r["hops_p50"] <= r["hops_p99"] <= 6
    assert 0.01 < r["latency_p50_s"] <= r["latency_p99_s"] < 30
    assert 10 <= r["messages_per_lookup"] <= 256
    assert r["pages_1000"] > 0 and r["pages_1"] == 0  # only full answers are paged
    assert r["limit10_messages"] < r["messages_1000"]  # an early stop costs less
    assert r["provides"] > 200 and r["provide_holders_p50"] == 20
    assert r["joins"] > 0


def test_liars_are_survived_and_runs_are_deterministic(capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--nodes", "120", "--liars", "0.1", "--lookups", "10", "--hours", "0.3",
            "--warmup", "200", "--seed", "7")  # fmt: skip
    a = _run(capsys, *args)
    b = _run(capsys, *args)
    assert a["bogus_candidates_per_lookup"] > 0
    assert min(a["findability_1"], a["findability_20"], a["findability_1000"]) >= 0.9
    a.pop("wall_s"), b.pop("wall_s")
    assert a == b
