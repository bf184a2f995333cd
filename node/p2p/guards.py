"""What a remote peer's bytes may never do to the node: end it.

py-libp2p 0.8.1 runs every inbound stream's protocol negotiation and handler
in the connection's nursery, so an exception there ends the host, and with it
the daemon.  Seen in the NAT testbed: a peer pipelining a kad request behind
its multistream-select proposal (as our kad client and go-libp2p do) to a
node that had just dropped kad (a private node in client mode) got ``na``;
the node then read the protobuf request as the next proposal, and
``MultiselectCommunicator.read`` raised ``UnicodeDecodeError`` on its bytes:
the daemon stopped.  Any peer could do that on purpose with one stream.

Two guards, installed once at import (before any host exists):

* a negotiation message that is not UTF-8 is a protocol error of that
  stream (``MultiselectCommunicatorError``, which py-libp2p answers by
  resetting the stream), not a crash;
* whatever else escapes the negotiation or a library handler (ours are
  guarded where they are registered) resets that stream and is logged at
  DEBUG; cancellation still propagates.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from libp2p.host.basic_host import BasicHost
from libp2p.protocol_muxer.exceptions import MultiselectCommunicatorError
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator

__all__ = ["install"]

log = logging.getLogger("cpn.p2p")

_read = MultiselectCommunicator.read
_handle = BasicHost._swarm_stream_handler


async def _read_utf8(self: MultiselectCommunicator) -> str:
    try:
        return await _read(self)
    except UnicodeDecodeError as exc:
        raise MultiselectCommunicatorError("negotiation message is not UTF-8") from exc


async def _guarded_handler(self: BasicHost, net_stream: Any) -> None:
    try:
        await _handle(self, net_stream)
    except Exception as exc:  # noqa: BLE001 - a peer's stream must never end the node
        peer = getattr(getattr(net_stream, "muxed_conn", None), "peer_id", "?")
        log.debug("inbound stream from %s failed: %r", peer, exc)
        with contextlib.suppress(Exception):
            await net_stream.reset()


def install() -> None:
    """Install both guards (idempotent)."""
    setattr(MultiselectCommunicator, "read", _read_utf8)  # noqa: B010
    setattr(BasicHost, "_swarm_stream_handler", _guarded_handler)  # noqa: B010


install()
