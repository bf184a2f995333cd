"""Chunk scheduling: which source fetches which chunk of one blob.

Pure state, no clock and no IO: the node's fetch loop asks :class:`ChunkScheduler`
for the next run of chunks per source and reports what arrived, what failed
verification and which sources went away.  A source that sent a corrupt chunk
is penalised and the chunk is reassigned (spec/transfer.md section 3.6).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["SourceState", "ChunkScheduler"]


@dataclass
class SourceState:
    """What the scheduler knows about one source (a peer serving this blob)."""

    has: set[int] | None  #: None = the whole blob
    in_flight: set[int] = field(default_factory=set)
    received: int = 0
    strikes: int = 0
    banned: bool = False


class ChunkScheduler:
    """Which source fetches which chunk of one blob.  Pure state, no clock.

    Chunks are handed out in ascending runs so a single source streams the
    blob in order (sequential reads and writes).  A corrupt
    chunk strikes its source, is never again asked from that source, and goes
    back to the pool; ``max_strikes`` strikes ban the source.
    """

    def __init__(self, n_chunks: int, done: Iterable[int] = (), *, max_strikes: int = 1) -> None:
        self.n = n_chunks
        self.done: set[int] = set(done)
        self.sources: dict[str, SourceState] = {}
        self.max_strikes = max_strikes
        self._excluded: dict[int, set[str]] = {}
        self._next = 0  # scan hint

    # ---- sources

    def add_source(self, source: str, has: Iterable[int] | None = None) -> None:
        self.sources[source] = SourceState(has=None if has is None else set(has))

    def source_failed(self, source: str) -> list[int]:
        """A source went away: its in-flight chunks return to the pool."""
        st = self.sources.pop(source, None)
        return sorted(st.in_flight) if st else []

    def live_sources(self) -> list[str]:
        return [s for s, st in self.sources.items() if not st.banned]

    # ---- assignment

    @property
    def complete(self) -> bool:
        return len(self.done) == self.n

    def missing(self) -> set[int]:
        return set(range(self.n)) - self.done

    def _pending(self) -> set[int]:
        flying: set[int] = set()
        for st in self.sources.values():
            flying |= st.in_flight
        return flying

    def assign(self, source: str, max_chunks: int) -> list[int]:
        """Up to ``max_chunks`` chunks for ``source`` to fetch next (possibly none)."""
        st = self.sources.get(source)
        if st is None or st.banned or max_chunks <= 0:
            return []
        flying = self._pending()
        out: list[int] = []
        for i in range(self.n):
            if len(out) >= max_chunks:
                break
            if i in self.done or i in flying:
                continue
            if st.has is not None and i not in st.has:
                continue
            if source in self._excluded.get(i, ()):
                continue
            if out and i != out[-1] + 1 and len(out) >= 1:
                # keep runs contiguous so a source streams in order
                break
            out.append(i)
        st.in_flight.update(out)
        return out

    def received(self, source: str, index: int) -> bool:
        """A verified chunk arrived.  Returns False if it was not needed any more."""
        st = self.sources.get(source)
        if st is not None:
            st.in_flight.discard(index)
            st.received += 1
        if index in self.done:
            return False
        self.done.add(index)
        return True

    def corrupt(self, source: str, index: int) -> bool:
        """A chunk from ``source`` failed verification.  Returns True if the source is now banned."""
        self._excluded.setdefault(index, set()).add(source)
        st = self.sources.get(source)
        if st is None:
            return True
        st.in_flight.discard(index)
        st.strikes += 1
        if st.strikes >= self.max_strikes:
            st.banned = True
            st.in_flight.clear()
        return st.banned

    def release(self, source: str, indexes: Sequence[int]) -> None:
        """Give back chunks assigned to ``source`` that it will not send."""
        st = self.sources.get(source)
        if st is not None:
            st.in_flight.difference_update(indexes)

    def stuck(self) -> bool:
        """True when chunks are missing that no live source can (still) provide."""
        for i in self.missing():
            for s, st in self.sources.items():
                if st.banned or s in self._excluded.get(i, ()):
                    continue
                if st.has is None or i in st.has:
                    break
            else:
                return True
        return False
