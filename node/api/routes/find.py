"""``/v1/find`` and ``/v1/advert``: find providers; this node's own advert."""

from __future__ import annotations

import math
from typing import Any

from node.api.params import body_object, get_float, get_int, get_str, get_str_list, known_fields
from node.api.server import Api, ApiError, Request
from node.find.adverts import DiscoveryService
from node.gpu_names import GpuNameError, parse_models
from protocol.errors import ProtocolError
from protocol.identifiers import parse_id
from protocol.jobspec import GpuRequirement, Resources

__all__ = ["register", "parse_size_mib", "requirement_from_json"]

_FIND_FIELDS = {"gpus", "gpu_mem", "gpu_model", "vendor", "cc", "cpus", "mem", "disk", "limit", "timeout", "id"}
MAX_MIB = 1 << 40  #: one exbibyte: more than any host has


def parse_size_mib(value: Any, name: str) -> int:
    """``40``, ``"40GiB"``, ``"512MiB"``, ``"1.5T"`` -> MiB (a bare number is GiB).

    Raises :class:`ApiError` naming ``name`` for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        amount: float = value
        mult = 1 << 10
    elif isinstance(value, str) and len(value) <= 64:
        text = value.strip().lower().replace(" ", "")
        units = {"t": 1 << 20, "g": 1 << 10, "m": 1}
        for suffix in ("tib", "tb", "t", "gib", "gb", "g", "mib", "mb", "m"):
            if text.endswith(suffix):
                num, mult = text[: -len(suffix)], units[suffix[0]]
                break
        else:
            num, mult = text, 1 << 10
        try:
            amount = float(num)
        except ValueError:
            raise ApiError(400, "bad_request", f"{name}: {value!r} is not a size like 40GiB") from None
    else:
        raise ApiError(400, "bad_request", f"{name}: must be a size like 40GiB")
    if not math.isfinite(amount) or amount < 0 or amount * mult > MAX_MIB:
        raise ApiError(400, "bad_request", f"{name}: must be a size from 0 to 1 EiB (got {value!r})")
    return math.ceil(amount * mult)


def requirement_from_json(body: dict[str, Any]) -> Resources:
    """The find request body -> :class:`Resources` (raises ApiError naming the field)."""
    known_fields(body, _FIND_FIELDS)
    gpus = get_int(body, "gpus", 0, 0, 1024)
    try:  # "H100", "rtx 4090", "a100-40g": as job files write them (node/gpu_names.py)
        choice = parse_models(get_str_list(body, "gpu_model", max_len=64))
    except GpuNameError as exc:
        raise ApiError(400, "bad_request", f"gpu_model: {exc}") from None
    models = choice.models
    vendor = get_str(body, "vendor", max_len=32).lower() or None
    cc = get_str(body, "cc", max_len=16) or None
    gpu_mem = parse_size_mib(body["gpu_mem"], "gpu_mem") if body.get("gpu_mem") else choice.min_memory_mib
    gpu = None
    try:
        if gpus or models or gpu_mem or cc or vendor:
            gpu = GpuRequirement(count=max(gpus, 1), min_memory_mib=gpu_mem, vendor=vendor, models=models,
                                 min_compute_capability=cc)
        cpus = get_float(body, "cpus", 0.0, 0.0, 65536.0)
        return Resources(
            gpu=gpu,
            cpu_millis=math.ceil(cpus * 1000) if cpus else 1,
            memory_mib=parse_size_mib(body["mem"], "mem") if body.get("mem") else 1,
            disk_mib=parse_size_mib(body["disk"], "disk") if body.get("disk") else 0,
        )
    except ProtocolError as exc:
        raise ApiError(400, exc.reason, exc.detail) from None


def register(api: Api, discovery: DiscoveryService) -> None:
    async def get_advert(request: Request) -> Any:
        """This node's current signed record (advert or tombstone), decoded."""
        current = discovery.current
        if current is None:
            raise ApiError(404, "no_advert", "discovery has not published an advert")
        msg = current.message
        return {"type": type(msg).__name__, "record": msg.to_wire(), "raw_hex": current.raw.hex()}

    async def post_find(request: Request) -> Any:
        """Find providers matching a requirement (fields as `cpn find` flags)."""
        body = body_object(request)
        req = requirement_from_json(body)
        ident = get_str(body, "id", max_len=256) or None
        if ident is not None:
            try:
                parse_id(ident)
            except ProtocolError as exc:
                raise ApiError(400, exc.reason, f"id: {exc.detail}") from None
        limit = get_int(body, "limit", 10, 1, 1000)
        timeout = get_float(body, "timeout", 5.0, 0.1, 120.0)
        result = await discovery.finder.find(
            req, identifiers=[ident] if ident else None, limit=limit, within_s=timeout
        )
        return result.to_json()

    api.route("GET", "/v1/advert", get_advert, summary="This node's current advert")
    api.route("POST", "/v1/find", post_find, summary="Find matching providers")
