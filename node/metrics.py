"""Prometheus metrics in the text exposition format, on an opt-in localhost port.

Counters are plain integers updated in place (the daemon is one trio thread);
gauges are callbacks read at scrape time, so a gauge such as "connected peers"
never goes stale.  Served only on 127.0.0.1 and only when ``metrics.port`` is
set: metrics leak who we talk to, so they are off by default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

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

    def render(self) -> str:
        """The text exposition format (version 0.0.4)."""
        lines: list[str] = []
        for name, (help, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help}", f"# TYPE {name} gauge", f"{name} {read():g}"]
        for name, c in sorted(self.counters.items()):
            lines += [f"# HELP {name} {c.help}", f"# TYPE {name} counter"]
            if not c.values:
                lines.append(f"{name} 0")
            for labels, value in sorted(c.values.items()):
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")
        return "\n".join(lines) + "\n"

    async def serve(self, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
        """Answer every HTTP request on 127.0.0.1:``port`` with :meth:`render`."""
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        log.info("metrics on http://127.0.0.1:%d/metrics", listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        with trio.move_on_after(5):
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 8192:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                data += chunk
            body = self.render().encode()
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            try:
                await stream.send_all(head.encode() + body)
            except trio.BrokenResourceError:
                pass
        await stream.aclose()


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
