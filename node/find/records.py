"""The advert record on the wire, as the daemon uses it: DHT validator and direct fetch.

The rules (the ``/cpn-advert/<peer id>`` key, the validator, the answer on
``/cpn/advert/0.1.0``) are sans-IO in :mod:`protocol.dht_advert`
(spec/dht.md); this module adapts them to the DHT (:class:`AdvertValidator`)
and performs the fetch over a stream (:func:`fetch_advert`).  Both the
advertiser (:mod:`node.find.adverts`) and the finder
(:mod:`node.find.finder`) use it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import MutableMapping

import trio

from node.clock import UnixClock
from node.p2p import P2PHost
from protocol.dht_advert import (
    ADVERT_NAMESPACE,
    MAX_ANSWER,
    Record,
    advert_key,
    decode_answer,
    select_value,
    validate_value,
)
from protocol.errors import ProtocolError
from protocol.streams import ADVERT_PROTOCOL

__all__ = [
    "ADVERT_NAMESPACE", "Record", "advert_key", "AdvertValidator", "OpenedMemo", "fetch_advert", "FETCH_TIMEOUT",
]

FETCH_TIMEOUT = 3.0  #: default for one direct fetch (dial + request + answer)
OPENED_MAX = 512  #: verified records a memo keeps by their bytes (at most 32 KiB each: 16 MiB)


class AdvertValidator:
    """DHT validator for ``/cpn-advert/<peer>``: runs on every store and fetch,
    at the current time (:func:`protocol.dht_advert.validate_value`)."""

    def __init__(self, clock: UnixClock) -> None:
        self.clock = clock
        #: a PUT_VALUE was decoded and verified three times (``validate``, then
        #: ``select`` against the stored value, which opened that one again)
        self.opened = OpenedMemo()

    def validate(self, key: str, value: bytes) -> None:
        validate_value(key, value, self.clock(), memo=self.opened)

    def select(self, key: str, values: list[bytes]) -> int:
        try:
            return select_value(key, values, self.clock(), memo=self.opened)
        except ProtocolError:
            return 0


class OpenedMemo(OrderedDict[bytes, Record]):
    """Record bytes already decoded and signature-checked -> the record, the
    ``maxlen`` most recently added (``open_record``'s ``memo``; a memo hit is
    still checked against the time and the peer).  A finder sees the same
    adverts find after find (its DHT store's copies, answers of providers it
    fetched) and verified each one up to three times per find, a fifth of a
    settled find's CPU at N=60."""

    def __init__(self, maxlen: int = OPENED_MAX) -> None:
        super().__init__()
        self.maxlen = maxlen

    def __setitem__(self, key: bytes, value: Record) -> None:
        super().__setitem__(key, value)
        while len(self) > self.maxlen:
            self.popitem(last=False)


async def fetch_advert(
    p2p: P2PHost, peer_id: str, addrs: list[str], now: int, *, limit_s: float = FETCH_TIMEOUT,
    memo: MutableMapping[bytes, Record] | None = None,
) -> tuple[Record, int]:
    """Fetch and verify ``peer_id``'s current record directly; return it and the RTT (ms).

    Raises :class:`~node.p2p.PeerUnreachable`/:class:`~node.p2p.StreamClosed`
    if the peer cannot be reached, ``trio.TooSlowError`` after ``limit_s``
    seconds, and :class:`ProtocolError` for an invalid answer (forged, wrong
    signer, expired, malformed).  ``memo``: as :func:`protocol.advert.open_record`'s.
    """
    with trio.fail_after(limit_s):
        await p2p.connect(peer_id, addrs)  # a dial, if one is needed, is not part of the RTT
        t0 = time.perf_counter()
        # one round trip: the protocol proposal and the (empty) request in one write
        frame = await p2p.request(peer_id, ADVERT_PROTOCOL, b"", MAX_ANSWER, addrs)
        rtt_ms = max(0, round((time.perf_counter() - t0) * 1000))
    return decode_answer(frame, now, peer_id, memo=memo), rtt_ms
