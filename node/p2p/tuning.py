"""py-libp2p's yamux and multistream-select, tuned for many connections and small requests.

Installed once, before any host runs (:func:`install`, called where
:mod:`node.p2p.host` is imported); each change is a module constant or one
method of py-libp2p 0.8.1, and says why.  Every yamux frame is one Noise
message, one ``send`` and one wake-up of the peer's process: with dozens of
daemons on a few cores those wake-ups, not the bytes, were most of a find's
time, so a one-frame request and its answer now take 4 frames, not 8
(spec/dht.md section 5).  Nothing here changes what goes on the wire beyond
which flags share a frame, which the yamux spec allows.
"""

from __future__ import annotations

import logging
import os
import struct
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import trio
from libp2p.io.exceptions import IOException
from libp2p.kad_dht import kad_dht as _kad_dht
from libp2p.kad_dht import peer_routing as _peer_routing
from libp2p.kad_dht.pb.kademlia_pb2 import Message
from libp2p.kad_dht.utils import maybe_consume_signed_record
from libp2p.peer.id import ID
from libp2p.protocol_muxer.exceptions import MultiselectCommunicatorError
from libp2p.protocol_muxer.multiselect_communicator import MultiselectCommunicator
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.utils.varint import encode_delim
from trio.lowlevel import RunVar

__all__ = ["install", "syn_with_first_frame", "send_opening", "sweep_one", "consume_signed_record"]

log = logging.getLogger("cpn.p2p")

#: the task that is opening a stream in :func:`syn_with_first_frame`: that
#: stream's SYN waits for its first frame.  A task, not a flag: tasks that
#: py-libp2p starts meanwhile (a dial's connection handlers, notifications)
#: inherit the context, and a flag would hold their streams' SYNs for ever
_DEFER_SYN: ContextVar[object] = ContextVar("cpn_defer_syn", default=None)
_SYN_ONLY = (_yamux.TYPE_WINDOW_UPDATE, _yamux.FLAG_SYN)
_ACK_ONLY = (_yamux.TYPE_WINDOW_UPDATE, _yamux.FLAG_ACK, 0)
#: accepted streams per connection whose ACK may wait for their first frame.
#: Every inbound stream answers (multistream-select echoes its proposal) or is
#: closed or reset, each a frame after which the ACK is sent; past this many
#: waiting (streams that ended before a frame of ours, then forgotten, or a
#: peer holding many unanswered), ACKs go out on their own
MAX_HELD_ACKS = 256
_write_frame = _yamux.Yamux._write_frame


_window_update = _yamux.YamuxStream._auto_tune_and_send_window_update


async def _window_update_at_half(self: _yamux.YamuxStream, *, bytes_read: int = 0) -> None:
    """go-yamux's rule: credit the receive window once half of it is consumed.

    py-libp2p 0.8.1 also sends a ``WINDOW_UPDATE`` after every read that
    leaves less than half the window consumed ("partial slack"), whatever
    ``PY_YAMUX_RELEASE_ON_READ`` says: 13 of the 24 frames of one kad request
    and answer were window updates, each one encrypted, sent, received and
    decrypted.  Below half a window there is nothing to credit yet: the
    sender still has at least half its window.
    """
    buffered = len(self.conn.stream_buffers.get(self.stream_id, b""))
    if self.target_recv_window - (self.recv_window + buffered) < self._grow_threshold():
        return
    await _window_update(self, bytes_read=bytes_read)


@contextmanager
def syn_with_first_frame() -> Iterator[None]:
    """Streams opened inside (in this task) send no SYN frame of their own: the
    SYN goes with the first frame, :func:`send_opening`.  A request of one
    frame is then one yamux frame (SYN, data and FIN together, as the yamux
    spec allows), one Noise message and one ``send``, instead of three: the
    receiving peer's process is woken once per request, not three times."""
    token = _DEFER_SYN.set(trio.lowlevel.current_task())
    try:
        yield
    finally:
        _DEFER_SYN.reset(token)


async def _write_frame_holding_flags(self: _yamux.Yamux, data: bytes) -> None:
    """py-libp2p's ``_write_frame``, but a new stream's SYN (in
    :func:`syn_with_first_frame`) and an accepted stream's ACK ride on the
    stream's next frame instead of a frame of their own."""
    if len(data) == _yamux.HEADER_SIZE:
        _, typ, flags, sid, length = struct.unpack(_yamux.YAMUX_HEADER_FORMAT, data)
        if (typ, flags) == _SYN_ONLY and _DEFER_SYN.get() is trio.lowlevel.current_task():  # for send_opening
            self.__dict__.setdefault("_cpn_syn_held", set()).add(sid)
            return
        if (typ, flags, length) == _ACK_ONLY:
            acks: set[int] = self.__dict__.setdefault("_cpn_ack_held", set())
            if len(acks) >= MAX_HELD_ACKS:  # forget streams that ended without a frame of ours
                acks.intersection_update(self.streams)
            if len(acks) < MAX_HELD_ACKS:  # (beyond: sent as py-libp2p would)
                acks.add(sid)
                return
    held: set[int] | None = self.__dict__.get("_cpn_ack_held")
    if held:
        _, typ, flags, sid, _ = struct.unpack_from(_yamux.YAMUX_HEADER_FORMAT, data)
        if sid in held:  # the stream's first frame since it was accepted
            held.discard(sid)
            if flags == 0 and typ in (_yamux.TYPE_DATA, _yamux.TYPE_WINDOW_UPDATE):
                data = data[:2] + struct.pack("!H", _yamux.FLAG_ACK) + data[4:]  # it carries the ACK
            else:  # py-libp2p reads no FIN or RST on a frame with ACK: two frames, as before
                await _write_frame(self, struct.pack(_yamux.YAMUX_HEADER_FORMAT, 0, *_ACK_ONLY[:2], sid, 0))
    await _write_frame(self, data)


async def send_opening(stream: Any, data: bytes) -> bool:
    """Send ``data`` and half-close ``stream`` (a py-libp2p net stream opened in
    :func:`syn_with_first_frame`) in one frame that also carries the held SYN.
    Returns False, having written nothing but the SYN, if the stream has no
    held SYN or ``data`` does not fit one frame: the caller then writes as usual."""
    muxed = getattr(stream, "muxed_stream", None)
    conn = getattr(muxed, "conn", None)
    held = getattr(conn, "_cpn_syn_held", None)
    if muxed is None or conn is None or not held or muxed.stream_id not in held:
        return False
    sid = muxed.stream_id
    held.discard(sid)
    if len(data) > min(muxed.send_window, _yamux.MAX_MESSAGE_SIZE - _yamux.HEADER_SIZE):
        await _write_frame(conn, struct.pack(_yamux.YAMUX_HEADER_FORMAT, 0, *_SYN_ONLY, sid, 0))
        return False
    muxed.send_window -= len(data)
    muxed.send_closed = True  # the FIN goes with it; a later close() sends no other
    flags = _yamux.FLAG_SYN | _yamux.FLAG_FIN
    await _write_frame(conn, struct.pack(_yamux.YAMUX_HEADER_FORMAT, 0, _yamux.TYPE_DATA, flags, sid, len(data)) + data)
    return True


_MULTISTREAM = "/multistream/1.0.0"
_MULTISTREAM_LINE = encode_delim(_MULTISTREAM.encode())
_ms_write = MultiselectCommunicator.write


def _proposal_waiting(stream: Any) -> bool:
    """The peer's multistream header and its proposal are both already in
    ``stream``'s receive buffer: it pipelined them, and reads our answers together."""
    muxed = getattr(stream, "muxed_stream", None)
    buffers = getattr(getattr(muxed, "conn", None), "stream_buffers", None)
    buf = buffers.get(getattr(muxed, "stream_id", None)) if isinstance(buffers, dict) else None
    n = len(_MULTISTREAM_LINE)
    return (
        isinstance(buf, bytearray) and len(buf) > n and buf[:n] == _MULTISTREAM_LINE
        and buf[n] < 0x80 and len(buf) >= n + 1 + buf[n]
    )  # fmt: skip


async def _write_holding_header(self: MultiselectCommunicator, msg_str: str) -> None:
    """py-libp2p's multistream-select write, except that a listener whose peer
    pipelined its proposal (:mod:`node.p2p.lazy`, go-libp2p) sends its own
    header together with its answer to the proposal: one frame, not two.  The
    answer (echo, ``na`` or ``ls``) always follows, since the proposal is
    already here; a peer that waits for the header before proposing gets it
    at once, as before."""
    held = self.__dict__.pop("_cpn_header_held", False)
    if not held:
        if msg_str == _MULTISTREAM and _proposal_waiting(self.read_writer):
            self.__dict__["_cpn_header_held"] = True
            return
        await _ms_write(self, msg_str)
        return
    try:
        await self.read_writer.write(_MULTISTREAM_LINE + encode_delim((msg_str or "").encode()))
    except (IOException, AssertionError, ValueError) as error:  # as py-libp2p's write
        raise MultiselectCommunicatorError("fail to write to multiselect communicator") from error


#: the yamux connections of this trio run, swept together (:func:`_shared_sweeper`)
_SWEPT: RunVar[weakref.WeakSet[_yamux.Yamux]] = RunVar("cpn_yamux_swept")
SWEEP_WAIT_S = 1.0  #: longest a sweep waits for one connection's streams lock
_ENV: dict[tuple[str, str], str] = {}
_py_yamux_env = _yamux._py_yamux_env


def _py_yamux_env_once(name: str, default: str = "") -> str:
    """py-libp2p reads its ``PY_YAMUX_*`` tuning variables from the environment
    on every frame read (two lookups per read, 6 % of a quiet daemon's CPU in
    a profile); they are read once per process here (set them before start)."""
    key = (name, default)
    if key not in _ENV:
        _ENV[key] = _py_yamux_env(name, default)
    return _ENV[key]


async def _shared_sweeper(self: _yamux.Yamux) -> None:
    """py-libp2p's yamux runs a sweeper per connection (reclaiming the
    bookkeeping of closed streams whose buffers were never read) that wakes
    every 30 s: a 60-node full mesh woke every daemon twice a second for it,
    a timer each, with nothing to do.  Here a connection joins its run's set
    and one task sweeps them all at the same interval (:func:`_sweep_loop`)."""
    try:
        swept = _SWEPT.get()
    except LookupError:
        swept = weakref.WeakSet()
        _SWEPT.set(swept)
        trio.lowlevel.spawn_system_task(_sweep_loop, swept, name="cpn: yamux stale-stream sweeps")
    swept.add(self)
    try:
        await self.event_shutting_down.wait()
    finally:
        swept.discard(self)


async def _sweep_loop(swept: weakref.WeakSet[_yamux.Yamux]) -> None:
    while True:
        await trio.sleep(_yamux._STALE_STREAM_SWEEP_INTERVAL)
        for mux in list(swept):
            await sweep_one(mux)


async def sweep_one(mux: _yamux.Yamux) -> int:
    """One connection's sweep, as py-libp2p's sweeper does it (under the
    streams lock, waited for at most :data:`SWEEP_WAIT_S`: a connection
    whose lock is held longer is swept next time).  Returns the streams
    reclaimed.  Never raises: it runs in a system task, where an exception
    would end the whole run."""
    reclaimed = 0
    with trio.move_on_after(SWEEP_WAIT_S):
        async with mux.streams_lock:
            if not mux.event_shutting_down.is_set():
                try:
                    reclaimed = mux._sweep_stale_streams()
                except Exception:  # noqa: BLE001 - py-libp2p's bookkeeping: never end the run for it
                    log.debug("yamux sweep of %s failed", mux.peer_id, exc_info=True)
    return reclaimed


SEEN_RECORDS = 4096  #: signed peer records a host remembers as verified (skipped when seen again)
SEEN_RECORD_S = 600.0  #: for this long (the peerstore keeps them 2 h)
#: host -> (peer the record must name, signed record bytes) -> when verified and consumed
_SEEN: weakref.WeakKeyDictionary[Any, dict[tuple[bytes, bytes], float]] = weakref.WeakKeyDictionary()


def consume_signed_record(msg: Any, host: Any, peer_id: ID | None = None) -> bool:
    """py-libp2p's ``maybe_consume_signed_record``, skipped for a record this
    host verified lately.

    Every kad request carries its sender's signed peer record and every answer
    the records of the peers it names; py-libp2p parses and verifies each one
    (an Ed25519 verification) and stores it again, though the bytes are the
    same request after request: an eighth of a node's CPU during start-up as
    a client, 8 % of the samples of an advert refresh wave as a server.
    The memo is per host (its peerstore is) and its key includes the peer
    the record must name, so a record is never accepted for a peer, or into
    a peerstore, it was not checked for.
    """
    if isinstance(msg, Message):
        if not msg.HasField("senderRecord"):
            return True
        key = (peer_id.to_bytes() if peer_id is not None else b"", bytes(msg.senderRecord))
    else:
        if not msg.HasField("signedRecord"):
            return True
        key = (b"/" + bytes(msg.id), bytes(msg.signedRecord))
    seen = _SEEN.setdefault(host, {})
    now = trio.current_time()
    at = seen.get(key)
    if at is not None and now < at + SEEN_RECORD_S:
        return True
    if not maybe_consume_signed_record(msg, host, peer_id):
        return False
    seen.pop(key, None)  # (re-verified: to the end of the eviction order)
    if len(seen) >= SEEN_RECORDS:
        seen.pop(next(iter(seen)))
    seen[key] = now
    return True


def install() -> None:
    """Apply every change (idempotent)."""
    # py-libp2p's yamux sends a WINDOW_UPDATE frame after *every* read by default
    # (``PY_YAMUX_RELEASE_ON_READ=1``): one extra Noise-encrypted write per
    # message, ~20 % of a find's CPU in a profile.  With it off, yamux credits the
    # window go-yamux style (batched at half the window), which every other
    # implementation expects; bulk streams keep a full window.  The variable is
    # read on every call, so setting it here (before any host runs) is enough; an
    # operator's explicit setting wins.
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

    # py-libp2p's yamux pings every connection every 30 s to measure its round trip
    # (used to tune receive windows; it is no keepalive).  A 60-node testnet is a
    # full mesh: 1,770 connections, each pinged by both ends every 30 s, cost about
    # a fifth of a core with nobody using the network.  Every 5 minutes is enough
    # to tune windows; the finder's liveness ping (:meth:`P2PHost.ping`) is separate.
    setattr(_yamux, "RTT_MEASURE_INTERVAL", 300.0)  # noqa: B010 - a module constant, read per loop
    setattr(_yamux.YamuxStream, "_auto_tune_and_send_window_update", _window_update_at_half)  # noqa: B010
    setattr(_yamux.Yamux, "_write_frame", _write_frame_holding_flags)  # noqa: B010
    setattr(MultiselectCommunicator, "write", _write_holding_header)  # noqa: B010
    setattr(_yamux, "_py_yamux_env", _py_yamux_env_once)  # noqa: B010
    setattr(_yamux.Yamux, "_stale_stream_sweeper", _shared_sweeper)  # noqa: B010
    setattr(_kad_dht, "maybe_consume_signed_record", consume_signed_record)  # noqa: B010 - its kad server
    setattr(_peer_routing, "maybe_consume_signed_record", consume_signed_record)  # noqa: B010
