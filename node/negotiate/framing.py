"""Reading and writing one negotiation frame, each within its own timeout."""

from __future__ import annotations

import trio

from node.p2p import FramedStream
from protocol.negotiation_state import MAX_FRAME

__all__ = ["STEP_TIMEOUT", "recv_frame", "send_frame"]

STEP_TIMEOUT = 10.0  #: seconds for one frame read or write


async def recv_frame(stream: FramedStream) -> bytes:
    with trio.fail_after(STEP_TIMEOUT):
        return await stream.receive_frame(MAX_FRAME)


async def send_frame(stream: FramedStream, frame: bytes) -> None:
    with trio.fail_after(STEP_TIMEOUT):
        await stream.send_frame(frame)
