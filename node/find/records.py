"""The advert record on the wire: its DHT key and validator, and the direct fetch.

A provider's signed advert (or, once it stopped, its tombstone) is stored in
the DHT under ``/cpn-advert/<peer id>`` and served directly on
``/cpn/advert/0.1.0`` (spec/dht.md): the request is one empty frame, the
answer one frame holding the CBOR map ``{"record": bytes}`` or
``{"error": text}``.  Both sides are here so the advertiser
(:mod:`node.find.adverts`) and the finder (:mod:`node.find.finder`) share them.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from node.clock import UnixClock
from node.p2p import P2PHost
from protocol import cbor
from protocol.advert import MAX_RECORD_SIZE, Advert, Tombstone, open_record, select_raw
from protocol.envelope import Signed
from protocol.errors import ProtocolError
from protocol.streams import ADVERT_PROTOCOL

__all__ = [
    "ADVERT_NAMESPACE",
    "Record",
    "advert_key",
    "AdvertValidator",
    "answer_frame",
    "open_answer",
    "fetch_advert",
    "FETCH_TIMEOUT",
]

ADVERT_NAMESPACE = "cpn-advert"
FETCH_TIMEOUT = 3.0  #: default for one direct fetch (dial + request + answer)
_ANSWER_LIMITS = cbor.Limits(max_size=MAX_RECORD_SIZE + 64, max_depth=2, max_items=2)

#: A verified advert or tombstone.
Record = Signed[Advert] | Signed[Tombstone]


def advert_key(peer_id: str) -> str:
    """The DHT key of ``peer_id``'s advert: ``/cpn-advert/<peer id>``."""
    return f"/{ADVERT_NAMESPACE}/{peer_id}"


def _peer_of_key(key: str) -> str:
    prefix = f"/{ADVERT_NAMESPACE}/"
    if not key.startswith(prefix) or "/" in key[len(prefix) :]:
        raise ProtocolError("bad_key", f"{key!r} is not /{ADVERT_NAMESPACE}/<peer id>")
    return key[len(prefix) :]


class AdvertValidator:
    """DHT validator for ``/cpn-advert/<peer>``: runs on every store and fetch.

    ``validate`` accepts only a record that :func:`open_record` accepts *now*
    for the peer the key names; ``select`` keeps the newest valid one.
    """

    def __init__(self, clock: UnixClock) -> None:
        self.clock = clock

    def validate(self, key: str, value: bytes) -> None:
        open_record(value, self.clock(), peer_id=_peer_of_key(key))

    def select(self, key: str, values: list[bytes]) -> int:
        try:
            return select_raw(values, self.clock(), peer_id=_peer_of_key(key))
        except ProtocolError:
            return 0


def answer_frame(record: bytes | None, error: str | None = None) -> bytes:
    """The answer to an advert request: the record, or an error text."""
    return cbor.encode({"record": record} if record is not None else {"error": error or ""})


def open_answer(frame: bytes, peer_id: str, now: int) -> Record:
    """Decode an answer frame and verify the record in it (``ProtocolError`` if invalid)."""
    answer: Any = cbor.decode(frame, _ANSWER_LIMITS)
    if not isinstance(answer, dict) or len(answer) != 1:
        raise ProtocolError("malformed", "advert answer must be {record} or {error}")
    if "error" in answer:
        raise ProtocolError("refused", f"peer answered error {answer['error']!r}")
    raw = answer.get("record")
    if not isinstance(raw, bytes):
        raise ProtocolError("malformed", "advert answer record must be bytes")
    return open_record(raw, now, peer_id=peer_id)


async def fetch_advert(
    p2p: P2PHost, peer_id: str, addrs: list[str], now: int, *, limit_s: float = FETCH_TIMEOUT
) -> tuple[Record, int]:
    """Fetch and verify ``peer_id``'s current record directly; return it and the RTT (ms).

    Raises :class:`~node.p2p.PeerUnreachable`/:class:`~node.p2p.StreamClosed`
    if the peer cannot be reached, ``trio.TooSlowError`` after ``limit_s``
    seconds, and :class:`ProtocolError` for an invalid answer (forged, wrong
    signer, expired, malformed).
    """
    with trio.fail_after(limit_s):
        stream = await p2p.open_stream(peer_id, ADVERT_PROTOCOL, addrs)
        try:
            t0 = time.perf_counter()
            await stream.send_frame(b"")
            frame = await stream.receive_frame(MAX_RECORD_SIZE + 64)
            rtt_ms = max(0, round((time.perf_counter() - t0) * 1000))
        finally:
            await stream.close()
    return open_answer(frame, peer_id, now), rtt_ms
