"""Vectors for spec/dht.md: the advert's DHT key and validator, and the answer
of the advert protocol ``/cpn/advert/0.1.0``.

Operations (spec/dht.md, "Test vectors"):

* ``dht.advert_key``: ``peer_id`` -> ``key`` (text) and ``key_hex`` (its bytes).
* ``dht.advert_key.parse``: ``key_hex`` -> ``peer_id``.
* ``dht.validate``: the ``cpn-advert`` validator on ``key_hex``, ``value_hex``
  at ``now`` -> ``type``, ``seq``.
* ``dht.select``: the validator's select on ``key_hex``, ``values_hex`` at
  ``now`` -> ``index``.
* ``dht.advert_request.check``: the provider's check of a request frame
  ``bytes_hex``.
* ``dht.advert_answer.encode``: ``record_hex`` or ``error`` -> ``bytes_hex``.
* ``dht.advert_answer.decode``: the finder's check of an answer ``bytes_hex``
  from ``peer_id`` at ``now`` -> ``type``, ``seq``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cbor
from protocol.advert import MAX_RECORD_SIZE, Price, Tombstone, make_advert
from protocol.dht_advert import advert_key, encode_answer
from protocol.envelope import public_key_proto_of, seal
from protocol.identity import peer_id_from_proto_key
from protocol.resources import ResourceSet

from . import NOW, accept, key_from_seed, reject, seed, vector, vector_file

RESOURCES = ResourceSet(cpu_cores=8, cpu_model="vector CPU", memory_mib=16384, disk_mib=100_000, gpus=())
PRICE = Price(gpu_hour=0, cpu_core_hour=20_000, memory_gib_hour=2_000)


def _peer(k: Ed25519PrivateKey) -> str:
    return peer_id_from_proto_key(public_key_proto_of(k))


def _advert(k: Ed25519PrivateKey, seq: int, now: int = NOW, **over: Any) -> bytes:
    adv = make_advert(peer_id=_peer(k), addrs=["/ip4/127.0.0.1/tcp/40001"], resources=RESOURCES, metrics=(),
                      price=PRICE, seq=seq, now=now)
    return seal(adv.replace(**over) if over else adv, k).raw


def _tombstone(k: Ed25519PrivateKey, seq: int, now: int = NOW) -> bytes:
    return seal(Tombstone(peer_id=_peer(k), seq=seq, issued_at=now), k).raw


def _kind(raw: bytes) -> str:
    return "Tombstone" if cbor.decode(raw)["type"] == Tombstone.TYPE else "Advert"


def generate() -> dict[str, Any]:
    k, other = key_from_seed(seed("dht/provider")), key_from_seed(seed("dht/other"))
    pid = _peer(k)
    key = advert_key(pid).encode()
    v: list[dict[str, Any]] = []

    # ---- the key
    v.append(vector("key", "the advert key of a peer: the UTF-8 bytes of /cpn-advert/<peer id>", "dht.advert_key",
                    {"peer_id": pid}, accept(key=advert_key(pid), key_hex=key.hex())))
    v.append(vector("key-bad-peer", "a peer ID that is not an Ed25519 libp2p peer ID", "dht.advert_key",
                    {"peer_id": "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"}, reject("bad_peer_id")))

    def kp(name: str, desc: str, raw: bytes, exp: dict[str, Any]) -> None:
        v.append(vector(f"key-parse-{name}", desc, "dht.advert_key.parse", {"key_hex": raw.hex()}, exp))

    kp("valid", "the key names the peer", key, accept(peer_id=pid))
    kp("other-namespace", "a /pk/ key", b"/pk/" + pid.encode(), reject("bad_key"))
    kp("no-slash", "cpn-advert/<peer id> without the leading slash", key[1:], reject("bad_key"))
    kp("extra-segment", "one segment too many", key + b"/x", reject("bad_key"))
    kp("not-utf8", "a key that is not UTF-8", b"/cpn-advert/\xff", reject("bad_key"))
    kp("bad-peer", "the segment is not a peer ID", b"/cpn-advert/12D3KooWnot-a-peer", reject("bad_peer_id"))

    # ---- validate
    a7, a8 = _advert(k, 7), _advert(k, 8)

    def val(name: str, desc: str, kb: bytes, raw: bytes, now: int, exp: dict[str, Any]) -> None:
        v.append(vector(f"validate-{name}", desc, "dht.validate",
                        {"key_hex": kb.hex(), "value_hex": raw.hex(), "now": now}, exp))

    val("advert", "a fresh advert under its own key", key, a7, NOW + 10, accept(type="Advert", seq=7))
    val("tombstone", "a tombstone under its own key", key, _tombstone(k, 7), NOW + 10, accept(type="Tombstone", seq=7))
    val("other-peer", "a valid advert of another peer under this key", key, _advert(other, 7), NOW + 10,
        reject("wrong_peer"))
    val("expired", "an advert after its expires_at", key, a7, NOW + 301, reject("expired"))
    val("bad-key", "a valid advert under a key of another namespace", b"/pk/" + pid.encode(), a7, NOW + 10,
        reject("bad_key"))
    val("garbage", "a value that is not an envelope", key, b"\x01\x02", NOW + 10, reject("trailing_bytes"))
    val("oversize", f"a value of {MAX_RECORD_SIZE + 1} bytes", key, bytes(MAX_RECORD_SIZE + 1), NOW + 10,
        reject("oversize"))

    # ---- select: discovery.md section 3.4, with the key binding the peer
    def sel(name: str, desc: str, values: list[bytes], now: int, exp: dict[str, Any]) -> None:
        v.append(vector(f"select-{name}", desc, "dht.select",
                        {"key_hex": key.hex(), "values_hex": [x.hex() for x in values], "now": now}, exp))

    sel("higher-seq", "the higher seq wins", [a7, a8], NOW + 10, accept(index=1))
    sel("tombstone-wins-tie", "at equal seq a tombstone beats an advert", [_tombstone(k, 7, NOW + 5), a7], NOW + 10,
        accept(index=0))
    sel("later-issued", "equal seq, both adverts: the later issued_at wins", [a7, _advert(k, 7, NOW + 1)], NOW + 10,
        accept(index=1))
    twin_a, twin_b = a7, _advert(k, 7, price=Price(gpu_hour=0, cpu_core_hour=20_001, memory_gib_hour=2_000))
    greater = 0 if hashlib.sha256(twin_a).digest() > hashlib.sha256(twin_b).digest() else 1
    sel("greater-digest", "equal seq, type and issued_at: the greater sha256 of the envelope bytes wins",
        [twin_a, twin_b], NOW + 10, accept(index=greater))
    sel("expired-never-wins", "an expired advert with a higher seq loses to a valid one",
        [_advert(k, 9, NOW - 400), a7], NOW + 10, accept(index=1))
    sel("other-peer-never-wins", "a valid advert of another peer with a higher seq never wins under this key",
        [_advert(other, 99), a7], NOW + 10, accept(index=1))
    sel("garbage-never-wins", "a value that is not a record never wins", [b"\xff", a7], NOW + 10, accept(index=1))
    sel("none-valid", "no value is valid for this key", [_advert(other, 7), b"\xff"], NOW + 10,
        reject("no_valid_record"))

    # ---- the advert protocol
    def rq(name: str, desc: str, raw: bytes, exp: dict[str, Any]) -> None:
        v.append(vector(f"request-{name}", desc, "dht.advert_request.check", {"bytes_hex": raw.hex()}, exp))

    rq("empty", "the request is an empty frame", b"", accept())
    rq("not-empty", "a one-byte request", b"\x00", reject("bad_request"))
    rq("too-long", "a 65-byte request (refused on its length prefix)", bytes(65), reject("oversize"))

    def enc(name: str, desc: str, inp: dict[str, Any], out: bytes) -> None:
        v.append(vector(f"answer-encode-{name}", desc, "dht.advert_answer.encode", inp, accept(bytes_hex=out.hex())))

    enc("record", "the provider's current advert", {"record_hex": a7.hex()}, encode_answer(a7))
    enc("no-advert", "the provider has no advert yet", {"error": "no_advert"}, encode_answer(error="no_advert"))
    enc("bad-request", "the answer to a non-empty request", {"error": "bad_request"},
        encode_answer(error="bad_request"))

    def dec(name: str, desc: str, raw: bytes, exp: dict[str, Any], peer: str = pid, now: int = NOW + 10) -> None:
        v.append(vector(f"answer-decode-{name}", desc, "dht.advert_answer.decode",
                        {"bytes_hex": raw.hex(), "peer_id": peer, "now": now}, exp))

    dec("advert", "an advert from the peer asked", encode_answer(a7), accept(type="Advert", seq=7))
    tomb = _tombstone(k, 8)
    dec("tombstone", "a withdrawn provider answers its tombstone", encode_answer(tomb),
        accept(type=_kind(tomb), seq=8))
    dec("no-advert", "an error answer", encode_answer(error="no_advert"), reject("refused"))
    dec("other-peer", "a valid advert of another peer", encode_answer(_advert(other, 7)), reject("wrong_peer"))
    dec("expired", "an expired advert", encode_answer(a7), reject("expired"), now=NOW + 301)
    dec("two-entries", "a map with record and error", cbor.encode({"record": a7, "error": "no_advert"}),
        reject("malformed"))
    dec("record-text", "record as a text string", cbor.encode({"record": "a7"}), reject("malformed"))
    dec("not-a-map", "an array", cbor.encode([a7]), reject("malformed"))
    dec("too-deep", "a record nested in a map of a map", cbor.encode({"record": {"x": {"y": 1}}}), reject("too_deep"))
    dec("oversize", "an answer of 32833 bytes", cbor.encode({"record": bytes(MAX_RECORD_SIZE + 54)}),
        reject("oversize"))
    env = cbor.decode(a7)
    forged = cbor.encode(dict(env, sig=bytes([env["sig"][0] ^ 1]) + env["sig"][1:]))
    dec("forged", "an advert whose signature does not verify", encode_answer(forged), reject("bad_signature"))
    return vector_file("dht", "dht.md", 9, v)
