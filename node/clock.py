"""The daemon's notion of wall-clock time, injectable for tests.

Signed records carry absolute unix seconds (adverts, quotes, agreements), so
every service takes a :data:`UnixClock` instead of calling :func:`time.time`:
tests pass their own and drive expiry without sleeping.  Timeouts and
intervals use trio's clock (``trio.current_time``), which
``trio.testing.MockClock`` controls.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["UnixClock", "unix_now"]

#: Returns unix seconds.
UnixClock = Callable[[], int]


def unix_now() -> int:
    """Wall-clock unix seconds."""
    return int(time.time())
