"""Job status events from provider to submitter (``/cpn/negotiate/status/0.1.0``)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.clock import UnixClock
from node.negotiate.agreements import AgreementStore, JobRow
from node.negotiate.framing import STEP_TIMEOUT, recv_frame, send_frame
from node.p2p import FramedStream, P2PHost
from protocol.envelope import open_envelope
from protocol.errors import LocalProtocolError, ProtocolError
from protocol.negotiation import (
    Cancel,
    CancelReason,
    JobStatus,
    Phase,
)
from protocol.negotiation_state import FRAME_LIMITS, Negotiation
from protocol.streams import STATUS_PROTOCOL

__all__ = ["push_status", "push_cancel", "status_handler", "STATUS_ACK"]

log = logging.getLogger("cpn.negotiation")


STATUS_ACK = b"ok"


async def push_status(
    p2p: P2PHost,
    key: Ed25519PrivateKey,
    store: AgreementStore,
    negotiation_id: str,
    phase: Phase,
    *,
    at: int,
    clock: UnixClock,
    detail: str = "",
    exit_code: int | None = None,
    addrs: Sequence[str] | None = None,
) -> None:
    """Provider side: report ``phase`` of an agreed job to its submitter.

    The machine is rebuilt from the store, the signed status sent on its own
    stream, and the new state saved only once the submitter acknowledged it,
    so a failed push (raises StreamClosed / TooSlowError) can simply be
    retried with the same sequence number.
    """
    conn, row = _restore(key, store, negotiation_id)
    frame = conn.send_status(phase, at=at, detail=detail, exit_code=exit_code, now=clock())
    await _push(p2p, store, conn, row.peer, frame, kind=phase.value, at=at, clock=clock, addrs=addrs)


async def push_cancel(
    p2p: P2PHost,
    key: Ed25519PrivateKey,
    store: AgreementStore,
    negotiation_id: str,
    *,
    clock: UnixClock,
    detail: str,
    addrs: Sequence[str] | None = None,
) -> None:
    """Provider side: tell the submitter this provider cancelled the agreed job (its
    operator did): a signed ``cancel`` on the status stream, like :func:`push_status`.
    The job row keeps its state (the job's own outcome); the cancel is an event."""
    conn, row = _restore(key, store, negotiation_id)
    frame = conn.send_cancel(CancelReason.FAILURE, detail, now=clock())
    await _push(p2p, store, conn, row.peer, frame, kind="cancel", at=clock(), clock=clock, addrs=addrs,
                state=row.state)


def _restore(key: Ed25519PrivateKey, store: AgreementStore, negotiation_id: str) -> tuple[Negotiation, JobRow]:
    rows = store.get(negotiation_id, "provider")
    if len(rows) != 1 or rows[0].record is None:
        raise LocalProtocolError(f"no agreement {negotiation_id} on this provider")
    row = rows[0]
    assert row.record is not None
    return Negotiation.from_record(row.record, key=key, replay_cache=store), row


async def _push(p2p: P2PHost, store: AgreementStore, conn: Negotiation, peer: str, frame: bytes, *,
                kind: str, at: int, clock: UnixClock, addrs: Sequence[str] | None,
                state: str | None = None) -> None:
    with trio.fail_after(STEP_TIMEOUT):
        stream = await p2p.open_stream(peer, STATUS_PROTOCOL, addrs)
    try:
        await send_frame(stream, frame)
        if await recv_frame(stream) != STATUS_ACK:
            raise ProtocolError("malformed", "status not acknowledged")
    finally:
        await stream.close()
    nid = conn.negotiation_id.hex()  # type: ignore[union-attr]
    store.save(nid, "provider", peer=peer, state=state or conn.state.value, now=clock(), record=conn.to_record())
    store.add_event(nid, "provider", kind=kind, at=at, data=frame)


def status_handler(
    key: Ed25519PrivateKey, store: AgreementStore, clock: UnixClock
) -> Callable[[FramedStream], Awaitable[None]]:
    """Submitter side: accept status events (and cancels) for our agreements."""

    async def handle(stream: FramedStream) -> None:
        frame = await recv_frame(stream)
        env = open_envelope(frame, expected=(JobStatus, Cancel), signer=stream.remote_peer, limits=FRAME_LIMITS)
        nid = env.message.negotiation_id.hex()  # type: ignore[attr-defined]
        rows = [r for r in store.get(nid, "submitter") if r.id == nid]
        if not rows or rows[0].peer != stream.remote_peer or rows[0].record is None:
            raise ProtocolError("binding_mismatch", "no agreement with this peer under that ID")
        conn = Negotiation.from_record(rows[0].record, key=key)
        if conn.is_duplicate(frame):  # our ack was lost: acknowledge again, apply nothing
            await send_frame(stream, STATUS_ACK)
            await stream.close()
            return
        conn.receive_data(frame)
        conn.next_event(now=clock())  # ProtocolError: replayed, reordered, wrong terms...
        kind = env.message.phase.value if isinstance(env.message, JobStatus) else "cancel"
        store.save(nid, "submitter", peer=rows[0].peer, state=conn.state.value, now=clock(),
                   record=conn.to_record())
        store.add_event(nid, "submitter", kind=kind, at=clock(), data=frame)
        await send_frame(stream, STATUS_ACK)
        await stream.close()

    return handle
