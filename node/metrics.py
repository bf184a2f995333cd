"""Prometheus metrics in the text exposition format: the registry and its rendering.

Counters are plain integers updated in place (the daemon is one trio thread);
gauges are callbacks read at scrape time, so a gauge such as "connected peers"
never goes stale.  ``GET /metrics`` is served by the daemon's one HTTP server
(:mod:`node.api.server`, with its limits and timeouts) on 127.0.0.1 only, and
only when ``metrics.port`` (or the dashboard) is set: metrics leak who we talk
to, so they are off by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

log = logging.getLogger("cpn.metrics")

Labels = tuple[tuple[str, str], ...]


class Counter:
    """A monotonically increasing count, optionally split by labels."""

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self.values: dict[Labels, int] = {}

    def inc(self, amount: int = 1, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0) + amount

    def get(self, **labels: str) -> int:
        return self.values.get(tuple(sorted(labels.items())), 0)


class Metrics:
    """The registry of one node; services add their own counters and gauges."""

    def __init__(self) -> None:
        self.counters: dict[str, Counter] = {}
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def counter(self, name: str, help: str) -> Counter:
        """Get or create the counter ``name`` (a ``_total`` suffix is conventional)."""
        if name not in self.counters:
            self.counters[name] = Counter(name, help)
        return self.counters[name]

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        """Register a gauge read by calling ``read()`` at scrape time."""
        self.gauges[name] = (help, read)

    #: the content type of :meth:`render`'s text
    CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

    def render(self) -> str:
        """The text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for name, (help, read) in sorted(self.gauges.items()):
            try:
                text = f"{read():g}"
            except Exception:  # noqa: BLE001 - one broken gauge must not hide the others
                log.exception("metrics: gauge %s failed", name)
                text = "NaN"
            lines += [f"# HELP {name} {help}", f"# TYPE {name} gauge", f"{name} {text}"]
        for name, c in sorted(self.counters.items()):
            lines += [f"# HELP {name} {c.help}", f"# TYPE {name} counter"]
            if not c.values:
                lines.append(f"{name} 0")
            for labels, value in sorted(c.values.items()):
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")
        return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
