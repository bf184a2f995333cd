"""GPU models as people write them, for job files and ``cpn find`` alike.

``H100``, ``"rtx 4090"``, ``a100-40g`` (the form ``cpn find`` prints) and an
NVML name all normalise through :func:`protocol.resources.parse_gpu_name`
(spec/identifiers.md §2); this module turns a list of such names into the
parts of a GPU requirement, with one error for a name that is no GPU model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from protocol.resources import parse_gpu_name

__all__ = ["ModelChoice", "GpuNameError", "parse_models"]


class GpuNameError(ValueError):
    """A name that normalises to no GPU model (the message says which)."""


@dataclass(frozen=True)
class ModelChoice:
    models: tuple[str, ...]  #: normalised model tokens, sorted, distinct
    vendor: str | None  #: the one vendor the names imply, if any
    min_memory_mib: int  #: a floor every named memory tier allows (0: none named)


def parse_models(names: Iterable[str]) -> ModelChoice:
    parsed = []
    for name in names:
        p = parse_gpu_name(name)
        if p.model == "unknown":
            raise GpuNameError(f"{name!r} is not a GPU model (e.g. h100, rtx4090, a100-40g)")
        parsed.append(p)
    vendors = {p.vendor for p in parsed if p.vendor is not None}
    floors = [p.min_memory_mib for p in parsed]
    min_memory = min(f for f in floors if f is not None) if floors and None not in floors else 0
    return ModelChoice(
        models=tuple(sorted({p.model for p in parsed})),
        vendor=vendors.pop() if len(vendors) == 1 else None,
        min_memory_mib=min_memory,
    )
