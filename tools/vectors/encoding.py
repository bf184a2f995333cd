"""Vectors for spec/encoding.md: deterministic CBOR and peer IDs.

Expected outcomes are written by hand from the spec (not computed by the code
under test), so a bug in the codec shows up as a failing vector test.
"""

from __future__ import annotations

from typing import Any

from protocol.identity import b58encode

from . import accept, json_value, key_from_seed, reject, seed, vector, vector_file

OP_DECODE = "cbor.decode"


def _dec(name: str, description: str, hex_bytes: str, expected: dict[str, Any], limits: dict[str, int] | None = None) -> dict[str, Any]:
    inp: dict[str, Any] = {"bytes_hex": hex_bytes}
    if limits is not None:
        inp["limits"] = limits
    return vector(name, description, OP_DECODE, inp, expected)


def _ok(name: str, description: str, hex_bytes: str, value: Any) -> dict[str, Any]:
    return _dec(name, description, hex_bytes, accept(value=json_value(value)))


def _bad(name: str, description: str, hex_bytes: str, reason: str, limits: dict[str, int] | None = None) -> dict[str, Any]:
    return _dec(name, description, hex_bytes, reject(reason), limits)


def _arrays(levels: int, inner: Any) -> Any:
    value = inner
    for _ in range(levels):
        value = [value]
    return value


def _maps(levels: int) -> Any:
    value: Any = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def _cbor_vectors() -> list[dict[str, Any]]:
    nested16 = "81" * 15 + "80"
    nested17 = "81" * 16 + "80"
    v = [
        _ok("uint-0", "smallest unsigned integer", "00", 0),
        _ok("uint-23", "largest immediate argument", "17", 23),
        _ok("uint-24", "24 needs the one-byte argument", "1818", 24),
        _ok("uint-255", "largest one-byte argument", "18ff", 255),
        _ok("uint-256", "two-byte argument", "190100", 256),
        _ok("uint-65536", "four-byte argument", "1a00010000", 65536),
        _ok("uint-2-32", "eight-byte argument", "1b0000000100000000", 1 << 32),
        _ok("uint-max", "largest unsigned integer 2^64-1", "1bffffffffffffffff", (1 << 64) - 1),
        _ok("nint-minus-1", "negative integer -1", "20", -1),
        _ok("nint-minus-25", "-25 uses a one-byte argument 24", "3818", -25),
        _ok("nint-min", "smallest negative integer -2^64", "3bffffffffffffffff", -(1 << 64)),
        _ok("bytes-empty", "empty byte string", "40", b""),
        _ok("bytes-3", "byte string", "43010203", b"\x01\x02\x03"),
        _ok("text-empty", "empty text string", "60", ""),
        _ok("text-ietf", "ASCII text", "6449455446", "IETF"),
        _ok("text-utf8", "non-ASCII UTF-8 text", "62c3bc", "\u00fc"),
        _ok("array-empty", "empty array", "80", []),
        _ok("array-3", "array of integers", "83010203", [1, 2, 3]),
        _ok("false", "simple value false", "f4", False),
        _ok("true", "simple value true", "f5", True),
        _ok("null", "simple value null", "f6", None),
        _ok("map-empty", "empty map", "a0", {}),
        _ok("map-text-keys", "text keys in bytewise order", "a2616101616202", {"a": 1, "b": 2}),
        _ok("map-shorter-key-first", "bytewise order puts the shorter text key first", "a261620162616102", {"b": 1, "aa": 2}),
        _ok("map-int-keys", "integer keys: 1 (0x01) sorts before -1 (0x20)", "a2016161206162", {1: "a", -1: "b"}),
        _ok("map-int-before-text", "integer keys sort before text keys", "a20a00616101", {10: 0, "a": 1}),
        _ok("nested-16", "16 nested arrays: the default depth limit", nested16, [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]),
        # ---- non-canonical integers and lengths
        _bad("uint-23-one-byte", "23 with a one-byte argument", "1817", "non_canonical"),
        _bad("uint-255-two-bytes", "255 with a two-byte argument", "1900ff", "non_canonical"),
        _bad("uint-65535-four-bytes", "65535 with a four-byte argument", "1a0000ffff", "non_canonical"),
        _bad("uint-2-32-minus-1-eight-bytes", "2^32-1 with an eight-byte argument", "1b00000000ffffffff", "non_canonical"),
        _bad("nint-non-shortest", "-1 with a one-byte argument", "3800", "non_canonical"),
        _bad("bytes-length-non-shortest", "byte string length 1 in a one-byte argument", "580101", "non_canonical"),
        _bad("text-length-non-shortest", "text length 1 in a one-byte argument", "780161", "non_canonical"),
        _bad("array-length-non-shortest", "array length in a two-byte argument", "99000100", "non_canonical"),
        _bad("map-length-non-shortest", "map length in a one-byte argument", "b801616101", "non_canonical"),
        # ---- indefinite lengths
        _bad("indefinite-bytes", "indefinite-length byte string", "5f4101ff", "indefinite_length"),
        _bad("indefinite-text", "indefinite-length text string", "7f6161ff", "indefinite_length"),
        _bad("indefinite-array", "indefinite-length array", "9f01ff", "indefinite_length"),
        _bad("indefinite-map", "indefinite-length map", "bf616101ff", "indefinite_length"),
        _bad("break-alone", "a lone break byte", "ff", "forbidden_type"),
        _bad("reserved-info-28", "reserved additional information 28", "1c", "malformed"),
        # ---- forbidden types
        _bad("float16", "half-precision float 0.0", "f90000", "forbidden_type"),
        _bad("float32", "single-precision float 1.0", "fa3f800000", "forbidden_type"),
        _bad("float64", "double-precision float 1.1", "fb3ff199999999999a", "forbidden_type"),
        _bad("undefined", "simple value undefined", "f7", "forbidden_type"),
        _bad("simple-0", "simple value 0", "e0", "forbidden_type"),
        _bad("simple-32", "simple value 32 (two-byte form)", "f820", "forbidden_type"),
        _bad("tag-datetime", "tag 0 (date/time string)", "c060", "forbidden_type"),
        _bad("tag-bignum", "tag 2 (bignum)", "c249010000000000000000", "forbidden_type"),
        # ---- maps
        _bad("map-unsorted", "text keys out of bytewise order", "a2616202616101", "non_canonical"),
        _bad("map-length-first-violated", "'aa' before 'b' is not bytewise order", "a262616102616201", "non_canonical"),
        _bad("map-int-unsorted", "-1 (0x20) before 1 (0x01)", "a2206162016161", "non_canonical"),
        _bad("map-duplicate-key", "the same key twice", "a2616101616102", "duplicate_key"),
        _bad("map-bytes-key", "byte string as map key", "a14000", "bad_map_key"),
        _bad("map-bool-key", "boolean as map key", "a1f500", "bad_map_key"),
        _bad("map-array-key", "array as map key", "a18000", "bad_map_key"),
        _bad("map-null-key", "null as map key", "a1f600", "bad_map_key"),
        # ---- structure
        _bad("empty-input", "no bytes at all", "", "truncated"),
        _bad("truncated-argument", "one-byte argument missing", "18", "truncated"),
        _bad("truncated-bytes", "byte string shorter than its length", "430102", "truncated"),
        _bad("truncated-array", "array with a missing item", "8201", "truncated"),
        _bad("truncated-map-value", "map with a key but no value", "a16161", "truncated"),
        _bad("huge-bytes-length", "byte string claiming 2^64-1 bytes", "5bffffffffffffffff", "truncated"),
        _bad("trailing-bytes", "two items where one is expected", "0000", "trailing_bytes"),
        _bad("trailing-after-map", "a byte after a complete map", "a000", "trailing_bytes"),
        # ---- text
        _bad("bad-utf8-continuation", "invalid continuation byte", "62c328", "bad_utf8"),
        _bad("bad-utf8-ff", "0xff never appears in UTF-8", "61ff", "bad_utf8"),
        _bad("bad-utf8-surrogate", "UTF-8 encoded surrogate U+D800", "63eda080", "bad_utf8"),
        _bad("bad-utf8-overlong", "overlong encoding of '/'", "62c0af", "bad_utf8"),
        # ---- limits
        _bad("too-deep", "17 nested arrays exceed the default depth of 16", nested17, "too_deep"),
        _bad("huge-array-length", "array claiming 2^64-1 items is refused before reading", "9bffffffffffffffff", "too_many_items"),
        _bad("too-many-items", "array of 3 with max_items 2", "83010203", "too_many_items", {"max_size": 1 << 20, "max_depth": 16, "max_items": 2}),
        _bad("too-many-map-entries", "map of 2 with max_items 1", "a2616101616202", "too_many_items", {"max_size": 1 << 20, "max_depth": 16, "max_items": 1}),
        _bad("oversize", "9 bytes with max_size 8", "1b0000000100000000", "oversize", {"max_size": 8, "max_depth": 16, "max_items": 4096}),
        _bad("too-deep-custom", "depth 3 with max_depth 2", "818180", "too_deep", {"max_size": 1 << 20, "max_depth": 2, "max_items": 4096}),
        _ok("nested-16-holding-int", "an integer at depth 16 inside 16 nested arrays: only arrays and maps are limited",
            "81" * 16 + "00", _arrays(16, 0)),
        _ok("nested-maps-16", "16 nested maps {\"a\": ...}: the default depth limit", "a16161" * 15 + "a0", _maps(16)),
        _bad("nested-maps-17", "17 nested maps exceed the default depth", "a16161" * 16 + "a0", "too_deep"),
        _bad("map-key-too-deep", "an array as map key at depth 16 is too deep before it is a bad key", "81" * 15 + "a1" + "80" + "00", "too_deep"),
        # ---- order of checks on one head (spec/encoding.md 1.3)
        _bad("too-deep-before-too-many-items", "an array head at depth 16 claiming 2^64-1 items: depth is checked first",
             "81" * 16 + "9bffffffffffffffff", "too_deep"),
        _bad("non-canonical-head-before-too-deep", "a non-canonical array length at depth 16: the argument is read first",
             "81" * 16 + "9800", "non_canonical"),
        _bad("indefinite-head-before-too-deep", "an indefinite array at depth 16: the argument is read first",
             "81" * 16 + "9f", "indefinite_length"),
        _bad("reserved-head-before-too-deep", "additional information 28 on an array at depth 16", "81" * 16 + "9c", "malformed"),
        _bad("non-canonical-head-before-too-many-items", "array length 3 in a two-byte argument with max_items 2",
             "990003010203", "non_canonical", {"max_size": 1 << 20, "max_depth": 16, "max_items": 2}),
        _bad("truncated-head-before-too-many-items", "a two-byte array length cut short, with max_items 0",
             "9900", "truncated", {"max_size": 1 << 20, "max_depth": 16, "max_items": 0}),
        _bad("too-many-items-before-truncated", "an array of 3 with one element present, max_items 2: the count is checked on the head",
             "8301", "too_many_items", {"max_size": 1 << 20, "max_depth": 16, "max_items": 2}),
        _bad("oversize-before-anything", "a float (forbidden) of 9 bytes with max_size 8: size comes first",
             "fb3ff199999999999a", "oversize", {"max_size": 8, "max_depth": 16, "max_items": 4096}),
        _bad("tag-argument-not-read", "a tag whose one-byte argument is missing: rejected on the initial byte", "d8", "forbidden_type"),
        _bad("simple-argument-not-read", "a two-byte simple value cut short: rejected on the initial byte", "f8", "forbidden_type"),
        _bad("non-canonical-length-before-body", "a one-byte length 1 with the body missing: the argument is checked first",
             "5801", "non_canonical"),
        _bad("truncated-before-utf8", "a text string cut inside a UTF-8 sequence", "62c3", "truncated"),
        _bad("non-canonical-before-trailing", "a non-canonical integer followed by another byte", "181700", "non_canonical"),
        _bad("map-key-repeated-later", "keys a, b, a: the second a sorts before b (non_canonical, not duplicate_key)",
             "a3616101616202616103", "non_canonical"),
        _bad("map-key-truncated-before-bad-key", "a map key that is an array cut short: the key is read first", "a181", "truncated"),
        _bad("map-bad-key-before-order", "a byte-string key after a text key: bad_map_key before any order check",
             "a2616101410002", "bad_map_key"),
        _bad("map-duplicate-before-value", "a duplicate key whose value is missing: duplicate_key is found before the value",
             "a261610161 61".replace(" ", ""), "duplicate_key"),
        _bad("map-int-key-text-order", "text key before integer key is out of order", "a2616101 0102".replace(" ", ""), "non_canonical"),
        _bad("max-items-zero", "an array of one item with max_items 0", "8100", "too_many_items",
             {"max_size": 1 << 20, "max_depth": 16, "max_items": 0}),
        _ok("max-items-exact", "an array of exactly max_items items", "83010203", [1, 2, 3]),
    ]
    return v


def _peer_id_vectors() -> list[dict[str, Any]]:
    key = key_from_seed(seed("encoding/peer"))
    raw = key.public_key().public_bytes_raw()
    # RFC 8032 test 1 public key, a well-known value.
    rfc = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    bad_type = b58encode(b"\x00\x24\x08\x02\x12\x20" + raw)  # KeyType 2 (secp256k1)
    sha_mh = b58encode(b"\x12\x20" + bytes(32))  # sha2-256 multihash (RSA-style peer ID)
    from protocol.identity import peer_id_from_raw_key

    pid = peer_id_from_raw_key(raw)
    out = []
    for name, k in (("rfc8032-test1", rfc), ("seeded-key", raw)):
        out.append(
            vector(
                f"peer-id-{name}",
                "peer ID = base58btc(00 24 08 01 12 20 || key)",
                "peer_id.from_public_key",
                {"public_key_hex": k.hex()},
                accept(peer_id=peer_id_from_raw_key(k)),
            )
        )
    out.append(vector("peer-id-parse-ok", "an Ed25519 peer ID", "peer_id.parse", {"peer_id": pid}, accept(public_key_hex=raw.hex())))
    for name, text, desc in (
        ("peer-id-wrong-key-type", bad_type, "identity multihash of a non-Ed25519 key type"),
        ("peer-id-sha256", sha_mh, "sha2-256 multihash (not an inline Ed25519 key)"),
        ("peer-id-bad-alphabet", "0" + pid[1:], "'0' is not in the base58btc alphabet"),
        ("peer-id-truncated", pid[:-1], "one character short"),
        ("peer-id-empty", "", "empty string"),
        ("peer-id-too-long", pid + pid, "longer than any peer ID"),
    ):
        out.append(vector(name, desc, "peer_id.parse", {"peer_id": text}, reject("bad_peer_id")))
    return out


def generate() -> dict[str, Any]:
    return vector_file("encoding", "encoding.md", 2, _cbor_vectors() + _peer_id_vectors())
