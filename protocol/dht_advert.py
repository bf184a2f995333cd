"""The advert in the DHT and on its own protocol (spec/dht.md sections 2.2 and 3).

* The DHT key of a provider's advert is ``/cpn-advert/<peer id>`` (its UTF-8
  bytes); :func:`peer_of_advert_key` parses one, and the validator of the
  ``cpn-advert`` namespace (:func:`validate_value`, :func:`select_value`) binds
  every value to the peer its key names.
* The advert protocol ``/cpn/advert/0.1.0``: the finder sends one empty frame,
  the provider answers one CBOR map ``{"record": bstr}`` or ``{"error": tstr}``
  (:func:`encode_answer`, :func:`check_request`, :func:`decode_answer`).

Record rules (signature, lifetime, ``select``) are spec/discovery.md's, in
:mod:`protocol.advert`; this module only adds the key and the answer framing.
"""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Final

from . import cbor
from .advert import MAX_RECORD_SIZE, Advert, Tombstone, open_record, select_raw
from .envelope import Signed
from .errors import LocalProtocolError, ProtocolError
from .identity import validate_peer_id

__all__ = [
    "ADVERT_PROTOCOL",
    "ADVERT_NAMESPACE",
    "MAX_REQUEST",
    "MAX_ANSWER",
    "ANSWER_LIMITS",
    "ANSWER_ERRORS",
    "advert_key",
    "peer_of_advert_key",
    "validate_value",
    "select_value",
    "encode_answer",
    "check_request",
    "decode_answer",
]

ADVERT_PROTOCOL: Final = "/cpn/advert/0.1.0"
ADVERT_NAMESPACE: Final = "cpn-advert"
_PREFIX: Final = f"/{ADVERT_NAMESPACE}/"
MAX_REQUEST: Final = 64  #: bytes in a request frame (requests are empty)
MAX_ANSWER: Final = MAX_RECORD_SIZE + 64  #: bytes in an answer frame
#: Decode limits of an answer: one map of one entry.
ANSWER_LIMITS: Final = cbor.Limits(max_size=MAX_ANSWER, max_depth=2, max_items=2)
#: The errors a provider answers with.
ANSWER_ERRORS: Final = ("bad_request", "no_advert")

Record = Signed[Advert] | Signed[Tombstone]


def advert_key(peer_id: str) -> str:
    """``/cpn-advert/<peer id>``; the DHT key is its UTF-8 bytes."""
    validate_peer_id(peer_id)
    return _PREFIX + peer_id


def peer_of_advert_key(key: str | bytes) -> str:
    """The peer ID an advert key names.  ``bad_key`` unless the key is the
    prefix followed by one segment; ``bad_peer_id`` if that is no Ed25519 peer ID."""
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("bad_key", "advert keys are UTF-8 text") from None
    if not key.startswith(_PREFIX) or "/" in key[len(_PREFIX) :]:
        raise ProtocolError("bad_key", f"{key[:80]!r} is not {_PREFIX}<peer id>")
    peer = key[len(_PREFIX) :]
    validate_peer_id(peer)
    return peer


def validate_value(
    key: str | bytes, value: bytes, now: int, *, memo: MutableMapping[bytes, Record] | None = None
) -> Record:
    """The namespace validator's ``validate``: the key first, then the record
    for the peer it names (:func:`protocol.advert.open_record`, whose ``memo``
    this is: a holder checks a stored value again at each ``select``)."""
    return open_record(value, now, peer_id=peer_of_advert_key(key), memo=memo)


def select_value(
    key: str | bytes, values: Sequence[bytes], now: int, *, memo: MutableMapping[bytes, Record] | None = None
) -> int:
    """The namespace validator's ``select``: index of the winning value
    (spec/discovery.md section 3.4); a value for another peer never wins."""
    return select_raw(values, now, peer_id=peer_of_advert_key(key), memo=memo)


def encode_answer(record: bytes | None = None, error: str | None = None) -> bytes:
    """The provider's answer: its current signed record, or one of ANSWER_ERRORS."""
    if (record is None) == (error is None):
        raise LocalProtocolError("an answer holds a record or an error")
    if record is not None:
        if len(record) > MAX_RECORD_SIZE:
            raise LocalProtocolError("record larger than MAX_RECORD_SIZE")
        return cbor.encode({"record": record})
    if error not in ANSWER_ERRORS:
        raise LocalProtocolError(f"unknown advert error {error!r}")
    return cbor.encode({"error": error})


def check_request(frame: bytes) -> None:
    """The provider's check of a request frame's body (the frame's length was
    checked against MAX_REQUEST on its prefix, ``oversize``)."""
    if len(frame) > MAX_REQUEST:
        raise ProtocolError("oversize", f"request of {len(frame)} bytes")
    if frame:
        raise ProtocolError("bad_request", "an advert request is an empty frame")


def decode_answer(
    frame: bytes, now: int, peer_id: str, *, memo: MutableMapping[bytes, Record] | None = None
) -> Record:
    """The finder's check of an answer from ``peer_id``: the answer's shape
    (``oversize``, CBOR reasons, ``malformed``), ``refused`` for an error
    answer, then the record for that peer (``open_record``'s reasons;
    ``memo`` as there: bytes already decoded and verified are not again)."""
    answer = cbor.decode(frame, ANSWER_LIMITS)
    if not isinstance(answer, dict) or len(answer) != 1:
        raise ProtocolError("malformed", "an advert answer is {record} or {error}")
    if "error" in answer:
        raise ProtocolError("refused", f"the provider answered error {answer['error']!r}")
    raw = answer.get("record")
    if not isinstance(raw, bytes):
        raise ProtocolError("malformed", "an advert answer's record is a byte string")
    return open_record(raw, now, peer_id=peer_id, memo=memo)
