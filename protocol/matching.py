"""Does an advert fit a job's resource requirement, and which offer is best?

Pure functions over :class:`~protocol.advert.Advert` values and a job's
:class:`~protocol.jobspec.Resources` (spec/discovery.md, "Matching").  They
serve two callers: ``cpn find`` (filter, rank, and explain *why nothing
matched*) and a provider deciding whether it can quote for a job.

Every candidate is checked against the constraints in :data:`CONSTRAINTS`
order.  GPU constraints narrow one pool of GPUs step by step (vendor, then
model, then memory...), so "gpu-mem" means "enough GPUs of the right model,
but too few of them with enough memory".  An eliminated candidate is counted
once, under its *first* failing constraint, so the counts of an
:class:`Explanation` add up to the number of candidates eliminated.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from .advert import Advert, Price
from .errors import LocalProtocolError
from .jobspec import GpuRequirement, Resources, compute_capability_at_least
from .resources import GpuInfo

__all__ = [
    "CONSTRAINTS",
    "Fit",
    "Explanation",
    "Offer",
    "evaluate",
    "explain",
    "estimate_cost",
    "rank",
    "rank_key",
    "RTT_BUCKET_MS",
]

#: Constraint names, in the order they are checked (and reported).
CONSTRAINTS: Final = (
    "expired",  # the advert's validity ended before matching
    "gpu-count",  # the host has fewer GPUs than requested, of any kind
    "gpu-vendor",
    "gpu-model",
    "gpu-mem",  # too few GPUs with at least min_memory_mib
    "gpu-cc",  # too few GPUs with at least min_compute_capability
    "gpu-mig",  # the fitting GPUs are in MIG mode (not schedulable whole)
    "gpu-free",  # enough fitting GPUs exist but too few are free now
    "cpu",  # host has fewer cores than requested
    "memory",
    "disk",
    "cpu-free",  # enough cores exist but not free now
    "memory-free",
    "disk-free",
    "container",  # runtime not verified (only when required by the caller)
    "price",  # estimated cost above the job's max_price
)

#: Round-trip times within the same bucket rank as equal, so noise in a
#: handful of pings does not outweigh price or fit.
RTT_BUCKET_MS: Final = 10

_HOUR_S = 3600


def estimate_cost(price: Price, req: Resources, run_s: int) -> int:
    """Cost in micro-units of running ``req`` for ``run_s`` seconds, rounded up.

    ``gpus * gpu_hour + cores * cpu_core_hour + GiB * memory_gib_hour``, per
    hour, prorated by the second.  Computed over a common denominator so the
    result is exact (no floats) and never rounds in the provider's disfavour.
    """
    if run_s < 0:
        raise LocalProtocolError("run_s must be >= 0")
    gpus = req.gpu.count if req.gpu is not None else 0
    # per-hour numerator over denominator 1000 (millicores) * 1024 (MiB per GiB)
    per_hour = (
        gpus * price.gpu_hour * 1000 * 1024
        + req.cpu_millis * price.cpu_core_hour * 1024
        + req.memory_mib * price.memory_gib_hour * 1000
    )
    num = per_hour * run_s
    den = 1000 * 1024 * _HOUR_S
    return -(-num // den)


@dataclass(frozen=True, slots=True)
class Fit:
    """The outcome of checking one advert against one requirement."""

    peer_id: str
    failures: tuple[str, ...]  #: failed constraints, in CONSTRAINTS order
    gpu_uuids: tuple[str, ...]  #: the GPUs that would be used (when it fits)
    hourly_cost: int  #: micro-units per hour for this job's resources
    fit_pct: int  #: 0..100: share of the host's free capacity the job would use

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def first_failure(self) -> str | None:
        return self.failures[0] if self.failures else None


def _gpu_checks(
    req: GpuRequirement, gpus: Sequence[GpuInfo], free: frozenset[str]
) -> tuple[str | None, tuple[GpuInfo, ...]]:
    """Narrow the GPU pool step by step; return (first failure, chosen GPUs)."""
    need = req.count
    pool = tuple(gpus)
    min_cc = req.min_compute_capability
    steps: list[tuple[str, bool]] = [("gpu-count", True)]
    if req.vendor is not None:
        steps.append(("gpu-vendor", True))
    if req.models:
        steps.append(("gpu-model", True))
    steps += [("gpu-mem", req.min_memory_mib > 0), ("gpu-cc", min_cc is not None)]
    steps += [("gpu-mig", True), ("gpu-free", True)]
    for name, active in steps:
        if not active:
            continue
        if name == "gpu-vendor":
            pool = tuple(g for g in pool if g.vendor == req.vendor)
        elif name == "gpu-model":
            pool = tuple(g for g in pool if g.model in req.models)
        elif name == "gpu-mem":
            pool = tuple(g for g in pool if g.memory_mib >= req.min_memory_mib)
        elif name == "gpu-cc" and min_cc is not None:
            pool = tuple(
                g for g in pool if compute_capability_at_least(g.compute_capability, min_cc)
            )
        elif name == "gpu-mig":
            pool = tuple(g for g in pool if not g.mig)
        elif name == "gpu-free":
            pool = tuple(g for g in pool if g.uuid in free)
        if len(pool) < need:
            return name, ()
    # Tightest fit first: the smallest GPUs that satisfy the job, so larger
    # ones stay available for jobs that need them.
    chosen = sorted(pool, key=lambda g: (g.memory_mib, g.uuid))[:need]
    return None, tuple(chosen)


def evaluate(
    req: Resources,
    advert: Advert,
    *,
    now: int | None = None,
    max_price: int | None = None,
    run_s: int | None = None,
    require_container: bool = False,
) -> Fit:
    """Check ``advert`` against ``req``.

    ``now``: also fail adverts already expired ("expired").  ``max_price`` with
    ``run_s``: fail when the estimated cost for ``run_s`` seconds exceeds it.
    ``require_container``: fail hosts whose container runtime was not verified
    (or that cannot pass GPUs through, for a GPU job).
    """
    fails: list[str] = []
    res, free = advert.resources, advert.free
    if now is not None and now >= advert.expires_at:
        fails.append("expired")
    chosen: tuple[GpuInfo, ...] = ()
    gpu_req = req.gpu if req.gpu is not None and req.gpu.count > 0 else None
    if gpu_req is not None:
        failure, chosen = _gpu_checks(gpu_req, res.gpus, frozenset(free.gpu_uuids))
        if failure:
            fails.append(failure)
    if req.cpu_millis > res.cpu_cores * 1000:
        fails.append("cpu")
    if req.memory_mib > res.memory_mib:
        fails.append("memory")
    if req.disk_mib > res.disk_mib:
        fails.append("disk")
    if "cpu" not in fails and req.cpu_millis > free.cpu_millis:
        fails.append("cpu-free")
    if "memory" not in fails and req.memory_mib > free.memory_mib:
        fails.append("memory-free")
    if "disk" not in fails and req.disk_mib > free.disk_mib:
        fails.append("disk-free")
    if require_container:
        cap = advert.container
        if cap.runtime == "none" or (gpu_req is not None and not cap.gpu_cdi):
            fails.append("container")
    hourly = estimate_cost(advert.price, req, _HOUR_S)
    if max_price is not None and run_s is not None:
        if estimate_cost(advert.price, req, run_s) > max_price:
            fails.append("price")
    fails.sort(key=CONSTRAINTS.index)
    return Fit(
        peer_id=advert.peer_id,
        failures=tuple(fails),
        gpu_uuids=tuple(g.uuid for g in chosen) if not fails else (),
        hourly_cost=hourly,
        fit_pct=_fit_pct(req, advert, len(chosen)),
    )


def _fit_pct(req: Resources, advert: Advert, gpus: int) -> int:
    """Mean share of free capacity used, over the dimensions the job asks for."""
    free = advert.free
    shares: list[tuple[int, int]] = []
    if gpus:
        shares.append((gpus, len(free.gpu_uuids)))
    if req.cpu_millis:
        shares.append((req.cpu_millis, free.cpu_millis))
    if req.memory_mib:
        shares.append((req.memory_mib, free.memory_mib))
    if not shares:
        return 0
    pct = [min(100, 100 * used // have) if have else 100 for used, have in shares]
    return sum(pct) // len(pct)


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why candidates were eliminated; counts by first failing constraint."""

    candidates: int
    matched: int
    eliminated: dict[str, int] = field(default_factory=dict)
    unreachable: int = 0  #: providers whose advert fit but that did not answer
    invalid: int = 0  #: adverts that failed verification (forged, expired, malformed)

    def lines(self) -> list[str]:
        """E.g. ``["gpu-model eliminated 3", "gpu-mem eliminated 1"]``."""
        out = [f"{name} eliminated {n}" for name in CONSTRAINTS if (n := self.eliminated.get(name))]
        if self.unreachable:
            out.append(f"unreachable {self.unreachable}")
        if self.invalid:
            out.append(f"invalid advert {self.invalid}")
        return out

    def summary(self) -> str:
        head = f"{self.matched} of {self.candidates} candidates matched"
        detail = ", ".join(self.lines())
        return f"{head}: {detail}" if detail else head

    def to_json(self) -> dict[str, object]:
        return {
            "candidates": self.candidates,
            "matched": self.matched,
            "eliminated": {k: self.eliminated[k] for k in CONSTRAINTS if k in self.eliminated},
            "unreachable": self.unreachable,
            "invalid": self.invalid,
        }


def explain(
    req: Resources,
    adverts: Iterable[Advert],
    *,
    now: int | None = None,
    max_price: int | None = None,
    run_s: int | None = None,
    require_container: bool = False,
    invalid: int = 0,
    unreachable: int = 0,
) -> tuple[list[tuple[Advert, Fit]], Explanation]:
    """Evaluate every advert; return the matching ones and the explanation.

    ``invalid`` and ``unreachable`` are the adverts the caller already threw
    away (failed verification; provider did not answer), carried into the
    explanation so ``cpn find`` can report them.
    """
    matched: list[tuple[Advert, Fit]] = []
    counts: Counter[str] = Counter()
    total = 0
    for adv in adverts:
        total += 1
        fit = evaluate(
            req,
            adv,
            now=now,
            max_price=max_price,
            run_s=run_s,
            require_container=require_container,
        )
        if fit.ok:
            matched.append((adv, fit))
        else:
            counts[fit.failures[0]] += 1
    return matched, Explanation(
        candidates=total,
        matched=len(matched),
        eliminated=dict(counts),
        unreachable=unreachable,
        invalid=invalid,
    )


@dataclass(frozen=True, slots=True)
class Offer:
    """A matching advert plus the measured round trip to its provider."""

    advert: Advert
    fit: Fit
    rtt_ms: int | None  #: None: not measured (ranks after measured ones)


def rank_key(offer: Offer) -> tuple[int, int, int, int, str]:
    """Sort key, best first: cheapest hourly cost, then reachable and nearer
    (bucketed round trip), then tighter fit, then peer ID for a stable order."""
    rtt = offer.rtt_ms
    measured = 0 if rtt is not None else 1
    bucket = (rtt // RTT_BUCKET_MS) if rtt is not None else 0
    return (offer.fit.hourly_cost, measured, bucket, -offer.fit.fit_pct, offer.advert.peer_id)


def rank(offers: Iterable[Offer], limit: int | None = None) -> list[Offer]:
    """Offers best first (see :func:`rank_key`), at most ``limit`` of them."""
    ordered = sorted(offers, key=rank_key)
    return ordered if limit is None else ordered[:limit]
