"""node/api/routes/dashboard.py: the GPU sampler's rate limit and stall guard, ledger totals."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from node.api.routes.dashboard import SAMPLE_TIMEOUT_S, GpuSampler, LedgerTotals
from node.find.nvml import FakeNvml, RealNvml
from node.find.probe import probe


class Counting(FakeNvml):
    """The fake NVML, counting device enumerations (one per sample)."""

    def __init__(self, stall: threading.Event | None = None) -> None:
        spec = {"gpus": [{"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "cc": "9.0",
                          "free_mib": 60000, "utilisation": 37}]}
        super().__init__(spec, seed="t")
        self.stall = stall
        self.counts = 0

    def device_count(self) -> int:
        self.counts += 1
        if self.stall is not None:
            self.stall.wait(30)  # a lost GPU: NVML blocks
        return super().device_count()


async def test_sampler_asks_nvml_at_most_once_a_second(mock_clock: trio.testing.MockClock) -> None:
    nv = Counting()
    sampler = GpuSampler(lambda: nv)
    sample, error, stale = await sampler.sample()
    uuid = nv.gpus[0].uuid
    assert sample[uuid] == {"memory_total_mib": 81559, "memory_used_mib": 81559 - 60000,
                            "utilisation_gpu_pct": 37, "utilisation_memory_pct": 37}
    assert error is None and not stale
    for _ in range(20):  # twenty clients within the same second: one NVML pass
        await sampler.sample()
        mock_clock.jump(0.04)
    assert nv.counts == 1
    mock_clock.jump(0.3)
    await sampler.sample()
    assert nv.counts == 2 and sampler.samples == 2


async def test_a_stalled_nvml_gets_the_last_sample_marked_stale(mock_clock: trio.testing.MockClock) -> None:
    stall = threading.Event()
    nv = Counting()
    sampler = GpuSampler(lambda: nv)
    first, _, _ = await sampler.sample()
    nv.stall = stall
    mock_clock.jump(1.5)
    got: list[Any] = []

    async def ask() -> None:
        got.append(await sampler.sample())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(SAMPLE_TIMEOUT_S + 0.1)
    assert got == [(first, None, True)]
    stall.set()  # let the abandoned worker thread finish


async def test_nvml_unavailable_is_an_error_not_an_exception(mock_clock: trio.testing.MockClock) -> None:
    broken = FakeNvml({"gpus": [], "fail": {"init": "NVML Shared Library Not Found"}})
    sample, error, stale = await GpuSampler(lambda: broken).sample()
    assert sample == {} and error == "NVML Shared Library Not Found" and not stale


def test_ledger_totals_per_peer(tmp_path: Path) -> None:
    me, a, b = "12D3KooWme", "12D3KooWa", "12D3KooWb"
    totals = LedgerTotals(tmp_path, me, agreements=None)  # type: ignore[arg-type]  # report() reads rows only
    row = {"seq": 0, "outcome": "succeeded", "exit_code": 0}
    totals.rows = [
        {**row, "provider": me, "submitter": a, "accepted": True, "price": 500},  # earned from a
        {**row, "provider": me, "submitter": a, "accepted": True, "price": 250},
        {**row, "provider": b, "submitter": me, "accepted": True, "price": 100},  # spent on b
        {**row, "provider": b, "submitter": me, "accepted": False, "price": 900},  # disputed: in no total
        {**row, "provider": me, "submitter": b, "accepted": True, "price": None},  # no agreement here
        {**row, "provider": "", "submitter": "", "accepted": False, "invalid": "bad_signature"},
    ]
    report = totals.report(limit=2)
    assert report["totals"] == {"earned": 750, "spent": 100, "disputed": 1, "unpriced": 1, "entries": 6}
    peers = {p["peer"]: p for p in report["peers"]}
    assert peers[a] == {"peer": a, "earned": 750, "spent": 0, "jobs": 2, "disputed": 0}
    assert peers[b] == {"peer": b, "earned": 0, "spent": 100, "jobs": 3, "disputed": 1}
    assert [e.get("invalid") for e in report["entries"]] == ["bad_signature", None]  # newest first


@pytest.mark.gpu
async def test_sampler_reads_real_nvml(tmp_path: Path) -> None:
    """The real twin of the fake-backend tests: live figures for every GPU the probe saw."""
    report = await probe(tmp_path)
    sample, error, stale = await GpuSampler(RealNvml).sample()
    assert error is None and not stale
    assert set(sample) == {g.uuid for g in report.gpus}
    for figures in sample.values():
        assert figures["memory_total_mib"] > 0 and 0 <= figures["memory_used_mib"] <= figures["memory_total_mib"]
