"""Deterministic CBOR (RFC 8949 section 4.2.1, "core deterministic encoding").

The subset used on the CPN wire (see spec/encoding.md):

* unsigned and negative integers in the 64-bit range, byte strings, UTF-8 text
  strings, arrays, maps, ``false``, ``true`` and ``null``;
* no floats, no tags, no other simple values, no indefinite lengths;
* every length and integer in its shortest form ("preferred serialisation");
* map keys are text strings or integers, unique, and sorted by their encoded
  bytes (bytewise lexicographic order).

The decoder accepts *exactly* the bytes the encoder would produce for the same
value, so every value has one valid encoding.  On any input it raises only
:class:`~protocol.errors.ProtocolError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import LocalProtocolError, ProtocolError

__all__ = ["Limits", "DEFAULT_LIMITS", "encode", "decode"]

_U64 = 1 << 64


@dataclass(frozen=True, slots=True)
class Limits:
    """Explicit bounds a decoder enforces before doing any work on input."""

    max_size: int = 1 << 20  #: bytes in one encoded message
    max_depth: int = 16  #: nesting of arrays and maps
    max_items: int = 4096  #: entries in one array or map

    def __post_init__(self) -> None:
        if self.max_size < 1 or self.max_depth < 1 or self.max_items < 0:
            raise LocalProtocolError("limits must be positive")


DEFAULT_LIMITS = Limits()


# --------------------------------------------------------------------------- encoding


def _head(major: int, arg: int) -> bytes:
    mt = major << 5
    if arg < 24:
        return bytes((mt | arg,))
    if arg < 0x100:
        return bytes((mt | 24, arg))
    if arg < 0x10000:
        return bytes((mt | 25,)) + arg.to_bytes(2, "big")
    if arg < 0x100000000:
        return bytes((mt | 26,)) + arg.to_bytes(4, "big")
    return bytes((mt | 27,)) + arg.to_bytes(8, "big")


def _enc(value: Any, out: list[bytes], depth: int) -> None:
    if depth > 64:
        raise LocalProtocolError("value nested too deeply to encode")
    if value is None:
        out.append(b"\xf6")
    elif value is True:
        out.append(b"\xf5")
    elif value is False:
        out.append(b"\xf4")
    elif isinstance(value, int):
        if 0 <= value < _U64:
            out.append(_head(0, value))
        elif -_U64 <= value < 0:
            out.append(_head(1, -1 - value))
        else:
            raise LocalProtocolError(f"integer out of the 64-bit CBOR range: {value}")
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(_head(2, len(raw)))
        out.append(raw)
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        out.append(_head(3, len(raw)))
        out.append(raw)
    elif isinstance(value, list | tuple):
        out.append(_head(4, len(value)))
        for item in value:
            _enc(item, out, depth + 1)
    elif isinstance(value, Mapping):
        entries: list[tuple[bytes, Any]] = []
        for key, item in value.items():
            if isinstance(key, bool) or not isinstance(key, str | int):
                raise LocalProtocolError(f"map keys must be text or integers, not {key!r}")
            entries.append((encode(key), item))
        entries.sort(key=lambda kv: kv[0])
        for i in range(1, len(entries)):
            if entries[i][0] == entries[i - 1][0]:
                raise LocalProtocolError("duplicate map key")
        out.append(_head(5, len(entries)))
        for key_bytes, item in entries:
            out.append(key_bytes)
            _enc(item, out, depth + 1)
    else:
        raise LocalProtocolError(f"type {type(value).__name__} cannot be encoded (floats and tags are not allowed)")


def encode(value: Any) -> bytes:
    """Encode ``value`` in core deterministic CBOR.

    Raises :class:`LocalProtocolError` for values outside the wire subset
    (floats, sets, oversized integers): that is a bug in the caller.
    """
    out: list[bytes] = []
    _enc(value, out, 0)
    return b"".join(out)


# --------------------------------------------------------------------------- decoding


class _Decoder:
    __slots__ = ("data", "pos", "limits")

    def __init__(self, data: bytes, limits: Limits) -> None:
        self.data = data
        self.pos = 0
        self.limits = limits

    def _take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise ProtocolError("truncated", f"needs {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def _argument(self, info: int) -> int:
        if info < 24:
            return info
        if info == 24:
            pos = self.pos
            if pos >= len(self.data):
                raise ProtocolError("truncated", f"needs 1 bytes at offset {pos}")
            arg = self.data[pos]
            self.pos = pos + 1
            if arg < 24:
                raise ProtocolError("non_canonical", f"argument {arg} not in shortest form")
            return arg
        if info == 25:
            arg = int.from_bytes(self._take(2), "big")
            if arg < 0x100:
                raise ProtocolError("non_canonical", f"argument {arg} not in shortest form")
            return arg
        if info == 26:
            arg = int.from_bytes(self._take(4), "big")
            if arg < 0x10000:
                raise ProtocolError("non_canonical", f"argument {arg} not in shortest form")
            return arg
        if info == 27:
            arg = int.from_bytes(self._take(8), "big")
            if arg < 0x100000000:
                raise ProtocolError("non_canonical", f"argument {arg} not in shortest form")
            return arg
        if info == 31:
            raise ProtocolError("indefinite_length", f"indefinite length at offset {self.pos - 1}")
        raise ProtocolError("malformed", f"reserved additional info {info} at offset {self.pos - 1}")

    def _count(self, n: int, what: str) -> int:
        if n > self.limits.max_items:
            raise ProtocolError("too_many_items", f"{what} of {n} entries exceeds {self.limits.max_items}")
        return n

    def value(self, depth: int) -> Any:
        """Decode the item at ``pos`` (``depth`` levels deep) and move past it.

        Hot path: the commonest items (ints and strings with a head of at most
        2 bytes, i.e. keys, peer IDs, digests, signatures; 2- and 4-byte ints;
        simple values) are decoded inline with locals, because profiling showed
        call and slice overhead dominating decode.  Rarer items go through
        ``_argument``/``_scalar``/``_map``, with the same results and errors.
        """
        data = self.data
        size = len(data)
        start = self.pos
        if start >= size:
            raise ProtocolError("truncated", f"needs 1 bytes at offset {start}")
        initial = data[start]
        major, info = initial >> 5, initial & 0x1F
        if info <= 24 and (major == 0 or major == 2 or major == 3):
            body = start + 1
            if info == 24:
                if body >= size:
                    raise ProtocolError("truncated", f"needs 1 bytes at offset {body}")
                n = data[body]
                if n < 24:
                    raise ProtocolError("non_canonical", f"argument {n} not in shortest form")
                body += 1
            else:
                n = info
            if major == 0:
                self.pos = body
                return n
            end = body + n
            if end > size:
                raise ProtocolError("truncated", f"needs {n} bytes at offset {body}")
            self.pos = end
            if major == 2:
                return data[body:end]
            try:
                return data[body:end].decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("bad_utf8", f"text string at offset {start}") from None
        self.pos = start + 1
        if major == 0 and (info == 25 or info == 26):
            width, floor = (2, 0x100) if info == 25 else (4, 0x10000)
            end = start + 1 + width
            if end > size:
                raise ProtocolError("truncated", f"needs {width} bytes at offset {start + 1}")
            n = int.from_bytes(data[start + 1 : end], "big")
            if n < floor:
                raise ProtocolError("non_canonical", f"argument {n} not in shortest form")
            self.pos = end
            return n
        if major == 7:
            if info == 20:
                return False
            if info == 21:
                return True
            if info == 22:
                return None
            if info in (25, 26, 27):
                raise ProtocolError("forbidden_type", f"float at offset {start}")
            raise ProtocolError("forbidden_type", f"simple value {info} at offset {start}")
        if major == 6:
            raise ProtocolError("forbidden_type", f"tag at offset {start}")
        arg = self._argument(info)
        if major <= 3:
            return self._scalar(major, arg, start)
        if depth >= self.limits.max_depth:
            raise ProtocolError("too_deep", f"nesting exceeds {self.limits.max_depth} at offset {start}")
        if major == 4:
            return [self.value(depth + 1) for _ in range(self._count(arg, "array"))]
        return self._map(self._count(arg, "map"), depth)  # major == 5

    def _scalar(self, major: int, arg: int, start: int) -> Any:
        """The rest of an int or string (major 0..3) whose head at ``start`` gave ``arg``."""
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        raw = self._take(arg)
        if major == 2:
            return raw
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("bad_utf8", f"text string at offset {start}") from None

    def _map(self, n: int, depth: int) -> dict[Any, Any]:
        """The ``n`` entries of a map (nested ``depth`` deep): keys unique and in canonical order."""
        result: dict[Any, Any] = {}
        previous = b""
        data = self.data
        for i in range(n):
            key_start = self.pos
            head = data[key_start] if key_start < len(data) else -1
            if 0x60 <= head <= 0x77:
                # Fast path for the common key, a text string shorter than 24
                # bytes: same checks and errors as the generic path below.
                key_end = key_start + 1 + (head - 0x60)
                if key_end > len(data):
                    raise ProtocolError("truncated", f"needs {head - 0x60} bytes at offset {key_start + 1}")
                key_bytes = data[key_start:key_end]
                try:
                    key = key_bytes[1:].decode("utf-8")
                except UnicodeDecodeError:
                    raise ProtocolError("bad_utf8", f"text string at offset {key_start}") from None
                self.pos = key_end
            else:
                key = self.value(depth + 1)
                if isinstance(key, bool) or not isinstance(key, str | int):
                    raise ProtocolError("bad_map_key", f"map key at offset {key_start} is not text or integer")
                key_bytes = data[key_start : self.pos]
            if i and key_bytes == previous:
                raise ProtocolError("duplicate_key", f"duplicate map key {key!r}")
            if i and key_bytes < previous:
                raise ProtocolError("non_canonical", f"map key {key!r} out of order")
            previous = key_bytes
            result[key] = self.value(depth + 1)
        return result


def decode(data: bytes | bytearray | memoryview, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Decode exactly one deterministic-CBOR item that spans all of ``data``.

    Raises :class:`ProtocolError` (and nothing else) if the bytes are
    malformed, non-canonical, use a forbidden type, exceed ``limits`` or have
    trailing bytes.  Byte strings come back as ``bytes``, arrays as ``list``.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("malformed", f"expected bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) > limits.max_size:
        raise ProtocolError("oversize", f"{len(raw)} bytes exceeds the limit of {limits.max_size}")
    if not raw:
        raise ProtocolError("truncated", "empty input")
    decoder = _Decoder(raw, limits)
    try:
        value = decoder.value(0)
    except RecursionError:  # pragma: no cover - max_depth keeps us far from it
        raise ProtocolError("too_deep", "nesting too deep") from None
    if decoder.pos != len(raw):
        raise ProtocolError("trailing_bytes", f"{len(raw) - decoder.pos} bytes after the item")
    return value
