"""What a remote peer can make this node do, bounded: log lines, and handler failures.

Every libp2p stream handler of negotiation, status and the job protocol is
wrapped by :func:`guarded`, so nothing a request can raise leaves the handler
(py-libp2p runs handlers in its connection's nursery: an exception there takes
the whole daemon down).  Blame decides the log level:

* the peer broke the protocol (``ProtocolError``), the stream ended
  (``StreamClosed``) or a timeout passed: INFO, the stream is reset;
* our own code built an invalid message (``LocalProtocolError``): a bug on
  this side, logged at ERROR with its traceback; the peer is not blamed and is
  sent no refusal, the stream is reset;
* anything else: logged at WARNING with its traceback, the stream is reset.

Log lines a peer can cause are a resource it could make us hold (disk, and
the operator's attention), so :class:`PeerLog` prints at most ``per_minute``
lines per peer per minute and counts the rest.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from node.p2p import FramedStream, StreamClosed
from protocol.errors import LocalProtocolError, ProtocolError

__all__ = ["PeerLog", "guarded", "MAX_TRACKED_PEERS"]

MAX_TRACKED_PEERS = 4096  #: peers whose log budget is remembered (oldest forgotten first)
WINDOW_S = 60.0


@dataclass
class _Budget:
    window_start: float
    used: int = 0
    suppressed: int = 0


@dataclass
class PeerLog:
    """A logger that lets each remote peer cause at most ``per_minute`` lines a minute."""

    logger: logging.Logger
    per_minute: int = 6
    clock: Callable[[], float] = trio.current_time
    _peers: OrderedDict[str, _Budget] = field(default_factory=OrderedDict)
    suppressed_total: int = 0

    def log(self, peer: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Log one line caused by ``peer`` if its budget allows; True if printed."""
        if not self.logger.isEnabledFor(level):
            return False
        now = self.clock()
        b = self._peers.get(peer)
        if b is None or now - b.window_start >= WINDOW_S:
            held = b.suppressed if b is not None else 0
            b = _Budget(window_start=now)
            self._peers[peer] = b
            if held:
                self.logger.log(level, "(%d more lines caused by %s were not printed)", held, peer)
        self._peers.move_to_end(peer)
        while len(self._peers) > MAX_TRACKED_PEERS:
            self._peers.popitem(last=False)
        if b.used >= self.per_minute:
            b.suppressed += 1
            self.suppressed_total += 1
            return False
        b.used += 1
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True


def guarded(
    protocol_id: str, handler: Callable[[FramedStream], Awaitable[None]], peer_log: PeerLog
) -> Callable[[FramedStream], Awaitable[None]]:
    """``handler`` made safe to hand to py-libp2p: whatever it raises is logged (per
    peer, rate-limited) and the stream reset; nothing escapes but cancellation."""

    async def handle(stream: FramedStream) -> None:
        peer = stream.remote_peer
        try:
            await handler(stream)
            return
        except LocalProtocolError:
            peer_log.log(peer, logging.ERROR, "%s with %s: a bug on this node (the peer is not "
                         "blamed)", protocol_id, peer, exc_info=True)
        except (ProtocolError, StreamClosed) as exc:
            peer_log.log(peer, logging.INFO, "%s from %s: %s", protocol_id, peer, exc)
        except trio.TooSlowError:
            peer_log.log(peer, logging.INFO, "%s from %s: timed out", protocol_id, peer)
        except Exception as exc:  # noqa: BLE001 - a handler must never take the daemon down
            peer_log.log(peer, logging.WARNING, "%s from %s: unexpected %s: %s", protocol_id, peer,
                         type(exc).__name__, exc, exc_info=True)
        with trio.CancelScope(shield=True), trio.move_on_after(1.0):
            await stream.reset()

    return handle
