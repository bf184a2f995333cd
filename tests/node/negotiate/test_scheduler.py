"""The capacity ledger: reservations, commitments, expiry (MockClock), the last-GPU race."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from node.negotiate.scheduler import NoCapacity, Scheduler
from protocol.jobspec import GpuRequirement, Resources
from protocol.negotiation import RefusalReason
from protocol.resources import GpuInfo, ResourceSet


def gpu(uuid: str, model: str = "h100", mib: int = 81920) -> GpuInfo:
    return GpuInfo(vendor="nvidia", model=model, name=f"NVIDIA {model.upper()}", uuid=uuid,
                   memory_mib=mib, compute_capability="9.0", mig=False)


NODE = ResourceSet(cpu_cores=8, cpu_model="x", memory_mib=65536, disk_mib=100_000,
                   gpus=(gpu("GPU-a"), gpu("GPU-b", "l4", 24576)))


def req(gpus: int = 1, mem: int = 16384, models: tuple[str, ...] = (), cpu: int = 1000) -> Resources:
    g = GpuRequirement(count=gpus, min_memory_mib=mem, vendor="nvidia", models=models,
                       min_compute_capability=None) if gpus else None
    return Resources(gpu=g, cpu_millis=cpu, memory_mib=1024, disk_mib=100)


async def test_reservation_expires_with_mock_clock(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    s = Scheduler(NODE, clock=trio.current_time, reservation_s=30)
    a = s.reserve("n1", req(models=("h100",)))
    assert a.gpu_uuids == ("GPU-a",)
    assert "GPU-a" not in s.free().gpu_uuids
    await trio.sleep(29)
    assert s.get("n1") is not None
    await trio.sleep(1)
    assert s.get("n1") is None
    assert s.free().gpu_uuids == ("GPU-a", "GPU-b")
    with pytest.raises(NoCapacity) as info:
        s.commit("n1")
    assert info.value.reason is RefusalReason.EXPIRED


async def test_commit_survives_expiry_release_frees(mock_clock: trio.testing.MockClock) -> None:
    mock_clock.autojump_threshold = 0
    s = Scheduler(NODE, clock=trio.current_time, reservation_s=30)
    s.reserve("n1", req())
    s.commit("n1")
    await trio.sleep(3600)
    assert s.get("n1") is not None and s.get("n1").committed  # type: ignore[union-attr]
    assert s.release("n1") and not s.release("n1")
    assert len(s.free().gpu_uuids) == 2


def test_smallest_fitting_gpu_first_and_reasons() -> None:
    clock = [0.0]
    s = Scheduler(NODE, clock=lambda: clock[0])
    assert s.reserve("small", req(mem=8000)).gpu_uuids == ("GPU-b",)  # the l4 fits: keep the h100
    for r, reason in [
        (req(models=("a100",)), RefusalReason.NO_MATCHING_GPU),
        (req(gpus=3), RefusalReason.NO_MATCHING_GPU),
        (req(mem=100_000), RefusalReason.INSUFFICIENT_GPU_MEMORY),
        (req(gpus=0, cpu=9000), RefusalReason.INSUFFICIENT_RESOURCES),
    ]:
        with pytest.raises(NoCapacity) as info:
            s.reserve("x", r)
        assert info.value.reason is reason
        assert info.value.queue_depth is None


async def test_race_for_the_last_gpu() -> None:
    """Two negotiations want the one free H100 at once: one reservation, one 'busy'."""
    s = Scheduler(NODE, clock=trio.current_time)
    s.reserve("other", req(models=("l4",), mem=0))  # the L4 is taken: one GPU left
    results: dict[str, object] = {}

    async def submitter(name: str) -> None:
        await trio.lowlevel.checkpoint()
        try:
            results[name] = s.reserve(name, req(gpus=1, mem=0))
        except NoCapacity as exc:
            results[name] = exc
        await trio.lowlevel.checkpoint()
        if not isinstance(results[name], NoCapacity):
            s.commit(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(submitter, "alice")
        nursery.start_soon(submitter, "bob")
    refused = [r for r in results.values() if isinstance(r, NoCapacity)]
    won = [k for k, r in results.items() if not isinstance(r, NoCapacity)]
    assert len(won) == 1 and len(refused) == 1
    assert refused[0].reason is RefusalReason.BUSY and refused[0].queue_depth == 2
    assert s.get(won[0]).committed  # type: ignore[union-attr]
    assert s.free().gpu_uuids == ()


def test_change_callbacks_and_double_reserve() -> None:
    calls: list[int] = []
    s = Scheduler(NODE, clock=lambda: 0.0)
    s.on_change.append(lambda: calls.append(1))
    s.reserve("n", req(gpus=0))
    with pytest.raises(NoCapacity) as info:
        s.reserve("n", req(gpus=0))
    assert info.value.reason is RefusalReason.REPLAYED
    s.release("n")
    assert len(calls) == 2
