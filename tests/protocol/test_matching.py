"""Matching adverts against job requirements, explanations, cost and ranking
(protocol/matching.py)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.advert import NO_CONTAINER, Advert, ContainerCapability, FreeCapacity, Price
from protocol.envelope import public_key_proto_of
from protocol.identity import peer_id_from_proto_key
from protocol.jobspec import GpuRequirement, Resources
from protocol.matching import (
    CONSTRAINTS,
    Offer,
    estimate_cost,
    evaluate,
    explain,
    rank,
)
from protocol.resources import GpuInfo, ResourceSet

T0 = 1_800_000_000
PRICE = Price(gpu_hour=2_000_000, cpu_core_hour=10_000, memory_gib_hour=1_024)

# (model, memory MiB, compute capability)
H100 = ("h100", 81559, "9.0")
A100_40 = ("a100", 40960, "8.0")
L4 = ("l4", 23034, "8.9")


def pid(n: int) -> str:
    k = Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)
    return peer_id_from_proto_key(public_key_proto_of(k))


def host(
    n: int,
    gpus: list[tuple[str, int, str]] | None = None,
    *,
    free_gpus: int | None = None,
    mig: bool = False,
    cores: int = 32,
    mem: int = 262144,
    disk: int = 1_000_000,
    free_cpu: int | None = None,
    price: Price = PRICE,
    container: ContainerCapability = NO_CONTAINER,
) -> Advert:
    infos = tuple(
        GpuInfo(
            vendor="nvidia",
            model=m,
            name=f"NVIDIA {m}",
            uuid=f"GPU-{n}-{i}",
            memory_mib=mib,
            compute_capability=cc,
            mig=mig,
        )
        for i, (m, mib, cc) in enumerate(gpus or [])
    )
    nfree = len(infos) if free_gpus is None else free_gpus
    return Advert(
        peer_id=pid(n),
        addrs=(f"/ip4/127.0.0.1/tcp/{4000 + n}",),
        resources=ResourceSet(
            cpu_cores=cores, cpu_model="cpu", memory_mib=mem, disk_mib=disk, gpus=infos
        ),
        metrics=(),
        free=FreeCapacity(
            gpu_uuids=tuple(g.uuid for g in infos[:nfree]),
            cpu_millis=cores * 1000 if free_cpu is None else free_cpu,
            memory_mib=mem,
            disk_mib=disk,
        ),
        price=price,
        container=container,
        compute_ids=("cpn:cpu",),
        seq=1,
        issued_at=T0,
        expires_at=T0 + 300,
    )


def need(
    count: int = 1,
    *,
    mem: int = 0,
    models: tuple[str, ...] = (),
    vendor: str | None = "nvidia",
    cc: str | None = None,
    cpu: int = 1000,
    ram: int = 1024,
    disk: int = 0,
) -> Resources:
    gpu = GpuRequirement(
        count=count, min_memory_mib=mem, vendor=vendor, models=models, min_compute_capability=cc
    )
    return Resources(gpu=gpu, cpu_millis=cpu, memory_mib=ram, disk_mib=disk)


def cpu_only(cpu: int = 1000, ram: int = 1024, disk: int = 0) -> Resources:
    return Resources(gpu=None, cpu_millis=cpu, memory_mib=ram, disk_mib=disk)


def test_fits_and_chooses_tightest_gpus() -> None:
    adv = host(1, [H100, L4, L4])
    fit = evaluate(need(2, mem=20000), adv)
    assert fit.ok and fit.failures == ()
    assert fit.gpu_uuids == ("GPU-1-1", "GPU-1-2")  # the two L4s, leaving the H100
    fit = evaluate(need(1, mem=40000), adv)
    assert fit.gpu_uuids == ("GPU-1-0",)


@pytest.mark.parametrize(
    ("adv", "req", "failure"),
    [
        (host(1, [H100]), need(2), "gpu-count"),
        (host(1, []), need(1), "gpu-count"),
        (host(1, [H100]), need(1, vendor="amd", models=()), "gpu-vendor"),
        (host(1, [A100_40, A100_40]), need(1, models=("h100",)), "gpu-model"),
        (host(1, [A100_40]), need(1, mem=80000), "gpu-mem"),
        (host(1, [A100_40]), need(1, cc="9.0"), "gpu-cc"),
        (host(1, [H100], mig=True), need(1), "gpu-mig"),
        (host(1, [H100, H100], free_gpus=1), need(2), "gpu-free"),
        (host(1, [], cores=4), cpu_only(cpu=8000), "cpu"),
        (host(1, [], mem=2048), cpu_only(ram=4096), "memory"),
        (host(1, [], disk=10), cpu_only(disk=11), "disk"),
        (host(1, [], cores=4, free_cpu=500), cpu_only(cpu=1000), "cpu-free"),
    ],
)
def test_each_constraint_eliminates(adv: Advert, req: Resources, failure: str) -> None:
    fit = evaluate(req, adv)
    assert not fit.ok
    assert fit.first_failure == failure
    assert fit.gpu_uuids == ()


def test_gpu_constraints_narrow_one_pool() -> None:
    # One H100 with little free and two big-memory A100s: "h100 with 80 GB, 2 of them"
    # fails on count of h100s (model), not on memory.
    adv = host(1, [H100, A100_40, A100_40])
    assert evaluate(need(2, models=("h100",)), adv).first_failure == "gpu-model"
    assert evaluate(need(2, mem=40000), adv).ok
    assert evaluate(need(2, mem=40000, cc="8.0"), adv).ok
    assert evaluate(need(2, mem=40000, cc="8.6"), adv).first_failure == "gpu-cc"


def test_compute_capability_compares_numerically() -> None:
    future = ("b200", 183000, "10.0")
    assert evaluate(need(1, cc="9.0"), host(1, [future])).ok


def test_cpu_only_job_fits_gpu_host() -> None:
    assert evaluate(cpu_only(), host(1, [H100])).ok


def test_several_failures_are_all_listed_in_order() -> None:
    adv = host(1, [A100_40], cores=2, mem=1024)
    fit = evaluate(need(1, models=("h100",), cpu=4000, ram=4096), adv, now=T0 + 300)
    assert fit.failures == ("expired", "gpu-model", "cpu", "memory")
    assert list(fit.failures) == sorted(fit.failures, key=CONSTRAINTS.index)


def test_price_and_container_constraints() -> None:
    adv = host(1, [H100])
    req = need(1, cpu=1000, ram=1024)
    cost = estimate_cost(PRICE, req, 3600)
    assert evaluate(req, adv, max_price=cost, run_s=3600).ok
    assert evaluate(req, adv, max_price=cost - 1, run_s=3600).failures == ("price",)
    assert evaluate(req, adv, require_container=True).failures == ("container",)
    cap = ContainerCapability(runtime="podman/runc", limits=("memory",), gpu_cdi=False)
    assert evaluate(req, host(2, [H100], container=cap), require_container=True).failures == (
        "container",
    )
    assert evaluate(cpu_only(), host(2, [H100], container=cap), require_container=True).ok


def test_estimate_cost_is_exact_and_rounds_up() -> None:
    req = need(2, cpu=1500, ram=2048)
    # 2 GPUs * 2.0 + 1.5 cores * 0.01 + 2 GiB * 0.001024 per hour, in micro-units
    assert estimate_cost(PRICE, req, 3600) == 4_000_000 + 15_000 + 2_048
    assert estimate_cost(PRICE, req, 0) == 0
    assert estimate_cost(PRICE, req, 1) == -(-(4_017_048) // 3600)
    free = Price(gpu_hour=0, cpu_core_hour=0, memory_gib_hour=0)
    assert estimate_cost(free, req, 10**6) == 0


def test_explain_counts_first_failure_once() -> None:
    adverts = [
        host(1, [A100_40]),  # gpu-model
        host(2, [L4, L4]),  # gpu-model
        host(3, [A100_40, A100_40], cores=1),  # gpu-model (cpu too, counted once)
        host(4, [H100]),  # fits
        host(5, [H100], free_gpus=0),  # gpu-free
    ]
    matched, why = explain(need(1, models=("h100",), cpu=2000), adverts, invalid=2)
    assert [a.peer_id for a, _ in matched] == [pid(4)]
    assert why.candidates == 5 and why.matched == 1
    assert why.eliminated == {"gpu-model": 3, "gpu-free": 1}
    assert sum(why.eliminated.values()) == why.candidates - why.matched
    assert why.lines() == ["gpu-model eliminated 3", "gpu-free eliminated 1", "invalid advert 2"]
    assert why.summary().startswith("1 of 5 candidates matched: gpu-model eliminated 3")
    assert why.to_json()["eliminated"] == {"gpu-model": 3, "gpu-free": 1}


def test_rank_price_then_rtt_then_fit() -> None:
    cheap = Price(gpu_hour=1_000_000, cpu_core_hour=0, memory_gib_hour=0)
    req = need(1, cpu=1000, ram=1024)
    a_cheap_far = host(1, [H100], price=cheap)
    a_near = host(2, [H100])
    a_far = host(3, [H100])
    a_near_big = host(4, [H100, H100, H100, H100])
    offers = [
        Offer(advert=a, fit=evaluate(req, a), rtt_ms=rtt)
        for a, rtt in [(a_far, 80), (a_near_big, 3), (a_near, 4), (a_cheap_far, 200)]
    ]
    order = [o.advert.peer_id for o in rank(offers)]
    # cheapest first; then 3 ms and 4 ms share a bucket, so the tighter fit wins
    assert order == [pid(1), pid(2), pid(4), pid(3)]
    assert [o.advert.peer_id for o in rank(offers, limit=2)] == [pid(1), pid(2)]
    unmeasured = Offer(advert=a_far, fit=evaluate(req, a_far), rtt_ms=None)
    assert rank([unmeasured, offers[2]])[0].rtt_ms == 4
