"""How the CLI writes prices: one unit everywhere.

Prices travel and are configured in integer *micro-units* (1 unit =
1,000,000 micro-units: ``max_price`` in job files, ``price_*`` in the config,
quotes and refusals on the wire).  The CLI shows units with six decimals, which
is exact, and the micro-units beside them where a number is quoted back to a
person who may have to type it into a job file.
"""

from __future__ import annotations

__all__ = ["MICRO", "units", "price"]

MICRO = 1_000_000  #: micro-units per unit


def units(micro: int) -> str:
    """``5032`` -> ``"0.005032"`` (exact: six decimals)."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(int(micro)), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def price(micro: int, per: str = "job") -> str:
    """``5032`` -> ``"0.005032 units/job (5032 micro-units)"``."""
    return f"{units(micro)} units/{per} ({int(micro)} micro-units)"
