"""Deterministic CBOR (protocol/cbor.py, spec/encoding.md §1): properties and edge cases."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import cbor
from protocol.errors import LocalProtocolError, ProtocolError

U64 = 1 << 64
ints = st.integers(min_value=-U64, max_value=U64 - 1)
# Values near the head-size boundaries, where shortest-form bugs live.
edge_ints = st.sampled_from([0, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, U64 - 1]).flatmap(
    lambda n: st.sampled_from([n, -1 - n])
)
scalars = st.one_of(ints, edge_ints, st.binary(max_size=300), st.text(max_size=40), st.booleans(), st.none())


def _maps(children: Any, keys: Any) -> Any:
    return st.dictionaries(keys, children, max_size=6)


def values(*, homogeneous_keys: bool) -> Any:
    """Wire-subset values.  cbor2's canonical mode sorts keys length-first (RFC 7049),
    which equals RFC 8949 bytewise order only when all keys share a major type."""
    if homogeneous_keys:
        key_sets = [st.text(max_size=30), st.integers(0, U64 - 1), st.integers(-U64, -1)]
        maps = lambda c: st.one_of(*[_maps(c, k) for k in key_sets])  # noqa: E731
    else:
        maps = lambda c: _maps(c, st.one_of(st.text(max_size=30), ints))  # noqa: E731
    return st.recursive(
        scalars,
        lambda c: st.one_of(st.lists(c, max_size=6), maps(c)),
        max_leaves=30,
    )


@given(values(homogeneous_keys=False))
def test_round_trip(value: Any) -> None:
    data = cbor.encode(value)
    assert cbor.decode(data) == value
    assert cbor.encode(cbor.decode(data)) == data


@given(values(homogeneous_keys=True))
def test_matches_cbor2_canonical(value: Any) -> None:
    assert cbor.encode(value) == cbor2.dumps(value, canonical=True)


@given(values(homogeneous_keys=False))
def test_cbor2_reads_what_we_write(value: Any) -> None:
    assert cbor2.loads(cbor.encode(value)) == value


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    try:
        value = cbor.decode(data)
    except ProtocolError as exc:
        assert exc.reason
    else:
        assert cbor.encode(value) == data  # whatever is accepted is canonical


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(values(homogeneous_keys=False), st.data())
def test_mutated_encodings_raise_only_protocol_error(value: Any, data: st.DataObject) -> None:
    raw = bytearray(cbor.encode(value))
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete"]))
        i = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw.insert(i, data.draw(st.integers(0, 255)))
        elif raw:
            del raw[i]
    try:
        decoded = cbor.decode(bytes(raw))
    except ProtocolError:
        return
    assert cbor.encode(decoded) == bytes(raw)


# ------------------------------------------------------------ exactly one encoding


def _head(major: int, arg: int, widen: int) -> bytes:
    """A head for ``arg`` using at least the size class ``widen`` (0: shortest)."""
    sizes = [(24, 0, None), (0x100, 1, 24), (0x10000, 2, 25), (0x100000000, 4, 26), (U64, 8, 27)]
    shortest = next(i for i, (limit, _, _) in enumerate(sizes) if arg < limit)
    cls = min(max(shortest, widen), 4)
    if cls == 0:
        return bytes([(major << 5) | arg])
    _, n, info = sizes[cls]
    assert info is not None
    return bytes([(major << 5) | info]) + arg.to_bytes(n, "big")


def _loose(value: Any, data: st.DataObject) -> bytes:
    """Some valid-CBOR encoding of ``value``: random head widths and map orders."""
    w = data.draw(st.sampled_from([0, 0, 0, 1, 2, 3, 4]))
    if value is None or isinstance(value, bool):
        return cbor.encode(value)
    if isinstance(value, int):
        return _head(0, value, w) if value >= 0 else _head(1, -1 - value, w)
    if isinstance(value, bytes):
        return _head(2, len(value), w) + value
    if isinstance(value, str):
        raw = value.encode()
        return _head(3, len(raw), w) + raw
    if isinstance(value, list):
        return _head(4, len(value), w) + b"".join(_loose(v, data) for v in value)
    items = list(value.items())
    order = data.draw(st.permutations(range(len(items))))
    return _head(5, len(items), w) + b"".join(_loose(items[i][0], data) + _loose(items[i][1], data) for i in order)


@given(values(homogeneous_keys=False), st.data())
def test_exactly_one_valid_encoding(value: Any, data: st.DataObject) -> None:
    """Any encoding of a value other than the canonical one is rejected."""
    loose = _loose(value, data)
    assert cbor2.loads(loose) == value  # it is valid CBOR for the same value
    if loose == cbor.encode(value):
        assert cbor.decode(loose) == value
    else:
        with pytest.raises(ProtocolError) as err:
            cbor.decode(loose)
        assert err.value.reason == "non_canonical"


# ------------------------------------------------------------------- edge cases


@pytest.mark.parametrize(
    ("value", "hex_bytes"),
    [
        (0, "00"), (23, "17"), (24, "1818"), (-1, "20"), (-(2**64), "3bffffffffffffffff"),
        (b"", "40"), ("", "60"), ([], "80"), ({}, "a0"), (False, "f4"), (True, "f5"), (None, "f6"),
        ({"b": 1, "aa": 2}, "a261620162616102"), ({1: 0, -1: 0, "a": 0}, "a301002000616100"),
    ],
)  # fmt: skip
def test_known_encodings(value: Any, hex_bytes: str) -> None:
    assert cbor.encode(value).hex() == hex_bytes
    assert cbor.decode(bytes.fromhex(hex_bytes)) == value


@pytest.mark.parametrize("value", [1.5, float("nan"), {1, 2}, 2**64, -(2**64) - 1, {b"k": 1}, {True: 1}, object()])
def test_encoder_refuses_values_outside_the_subset(value: Any) -> None:
    with pytest.raises(LocalProtocolError):
        cbor.encode(value)


def test_encoder_refuses_keys_that_collide() -> None:
    class Weird(dict):  # type: ignore[type-arg]
        def items(self):  # type: ignore[no-untyped-def]
            return [("a", 1), ("a", 2)]

    with pytest.raises(LocalProtocolError):
        cbor.encode(Weird())


def test_limits_are_checked_before_allocation() -> None:
    # A 9-byte array header claiming 2^64-1 entries fails on the count, at once.
    with pytest.raises(ProtocolError) as err:
        cbor.decode(bytes.fromhex("9bffffffffffffffff"))
    assert err.value.reason == "too_many_items"


def test_depth_limit_is_configurable() -> None:
    nested = bytes.fromhex("8181818180")
    assert cbor.decode(nested, cbor.Limits(max_depth=5)) == [[[[[]]]]]
    with pytest.raises(ProtocolError) as err:
        cbor.decode(nested, cbor.Limits(max_depth=4))
    assert err.value.reason == "too_deep"


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(ProtocolError):
        cbor.decode("00")  # type: ignore[arg-type]


def test_memoryview_input() -> None:
    assert cbor.decode(memoryview(b"\x83\x01\x02\x03")) == [1, 2, 3]


def test_invalid_limits_are_a_local_error() -> None:
    with pytest.raises(LocalProtocolError):
        cbor.Limits(max_size=0)
