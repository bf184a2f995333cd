"""Checked request parameters for the local API.

Every value a request carries is checked here before a service sees it:
its type, that a number is finite and in range, that a text is not absurdly
long.  A bad value is an :class:`~node.api.server.ApiError` (HTTP 400) whose
detail names the parameter and the rule, e.g. ``limit: must be an integer
1..1000 (got 'x')``; nothing a request carries can raise anything else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from node.api.server import ApiError, Request

__all__ = [
    "body_object",
    "query_int",
    "query_flag",
    "get_int",
    "get_float",
    "get_str",
    "get_str_list",
    "get_bool",
    "known_fields",
]

MAX_TEXT = 4096  #: characters in any one text parameter


def _bad(name: str, rule: str, value: Any) -> ApiError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ApiError(400, "bad_request", f"{name}: {rule} (got {shown})")


def body_object(request: Request) -> dict[str, Any]:
    """The JSON body, which must be an object (an empty body is ``{}``)."""
    body = request.json()
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return body


def known_fields(body: Mapping[str, Any], allowed: set[str]) -> None:
    """Refuse fields nobody reads (a typo must not be silently ignored)."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(allowed))})")


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) <= 20:
            value = int(value)
        else:
            raise _bad(name, f"must be an integer {lo}..{hi}", value)
    if not lo <= value <= hi:
        raise _bad(name, f"must be an integer {lo}..{hi}", value)
    return int(value)


def query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    return default if raw in (None, "") else _int(name, raw, lo, hi)


def query_flag(request: Request, name: str) -> bool:
    raw = request.query.get(name, "")
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise _bad(name, "must be 1 or 0", raw)


def get_int(body: Mapping[str, Any], name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name)
    return default if value is None else _int(name, value, lo, hi)


def get_float(body: Mapping[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name, f"must be a number {lo:g}..{hi:g}", value)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise _bad(name, f"must be a number {lo:g}..{hi:g}", value)
    return float(value)


def get_str(body: Mapping[str, Any], name: str, default: str = "", *, max_len: int = MAX_TEXT) -> str:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, str) or len(value) > max_len:
        raise _bad(name, f"must be a string of at most {max_len} characters", value)
    return value


def get_bool(body: Mapping[str, Any], name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(name, "must be true or false", value)
    return value


def get_str_list(
    body: Mapping[str, Any], name: str, *, max_items: int = 64, max_len: int = 512
) -> list[str]:
    value = body.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, list) or len(value) > max_items:
        raise _bad(name, f"must be a list of at most {max_items} strings", value)
    for v in value:
        if not isinstance(v, str) or not 0 < len(v) <= max_len:
            raise _bad(name, f"must be a list of non-empty strings of at most {max_len} characters", value)
    return list(value)
