"""Log lines a peer can cause, rate-limited per peer.

A server entry point catches whatever a connection or request raises and
logs it; a hostile peer must not be able to flood the operator's log (or
the disk under it) by failing on purpose, so each peer (a peer ID, or a
source address before one is known) gets at most one line per ``every``
seconds; the lines it caused meanwhile are counted in the next one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["PeerLog"]

MAX_PEERS = 4096  #: peers remembered; beyond, the oldest are forgotten


class PeerLog:
    """``note(peer, fmt, *args)``: one WARNING per peer per ``every`` seconds."""

    def __init__(self, logger: logging.Logger, *, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._last: dict[str, tuple[float, int]] = {}  #: peer -> (last line at, suppressed since)
        self.lines = 0  #: lines written (tests)
        self.suppressed = 0  #: lines not written

    def note(self, peer: str, fmt: str, *args: object, level: int = logging.WARNING) -> bool:
        """Log (or count) one event caused by ``peer``; True if a line was written."""
        now = self.clock()
        last, skipped = self._last.get(peer, (float("-inf"), 0))
        if now - last < self.every:
            self._last[peer] = (last, skipped + 1)
            self.suppressed += 1
            return False
        if skipped:
            fmt += f" ({skipped} more from this peer not logged)"
        self._last.pop(peer, None)
        self._last[peer] = (now, 0)
        while len(self._last) > MAX_PEERS:
            del self._last[next(iter(self._last))]
        self.logger.log(level, fmt, *args)
        self.lines += 1
        return True
