"""SHA-256 with its chaining value exposed (FIPS 180-4), for chunk lists.

A CPN chunk list (spec/jobspec.md section 3) records the SHA-256 *intermediate
hash value* of the blob at every chunk boundary, so a receiver can verify any
chunk on its own (start from the previous boundary's value, process the
chunk, compare) and the last chunk's check is the whole blob's SHA-256.
``hashlib`` cannot start from or stop at an intermediate value, so this
module offers:

- :class:`Sha256`: ``update`` / ``state`` (the chaining value, 32 bytes:
  the eight words H0..H7 big-endian, when a whole number of 64-byte blocks has
  been processed) / ``digest``, startable from any chaining value and byte
  count with :meth:`Sha256.resume`;
- a fast backend: the ``SHA256_*`` functions of the OpenSSL ``libcrypto`` that
  CPython's own ``hashlib`` links against on Linux, called through ``ctypes``
  (same code, SHA-NI where the CPU has it, and ``ctypes`` releases the GIL
  during the call, so threads hash in parallel);
- a pure-Python backend (the reference, and the fallback where no
  ``libcrypto`` is found: about 1000x slower, correct).

No IO: loading a shared library is the only side effect, once, at import.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

__all__ = ["IV", "Sha256", "BACKEND", "pure_compress"]

#: The SHA-256 initial hash value H(0) as 32 bytes (eight big-endian words).
IV = bytes.fromhex(
    "6a09e667bb67ae853c6ef372a54ff53a510e527f9b05688c1f83d9ab5be0cd19"
)

_K = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
)
_M = 0xFFFFFFFF


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (32 - n))) & _M


def pure_compress(state: tuple[int, ...], block: bytes | memoryview) -> tuple[int, ...]:
    """The SHA-256 compression function on one 64-byte block (FIPS 180-4 6.2.2)."""
    w = list(struct.unpack(">16I", block))
    for t in range(16, 64):
        s0 = _rotr(w[t - 15], 7) ^ _rotr(w[t - 15], 18) ^ (w[t - 15] >> 3)
        s1 = _rotr(w[t - 2], 17) ^ _rotr(w[t - 2], 19) ^ (w[t - 2] >> 10)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & _M)
    a, b, c, d, e, f, g, h = state
    for t in range(64):
        t1 = (h + (_rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)) + ((e & f) ^ (~e & g)) + _K[t] + w[t]) & _M
        t2 = ((_rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) & _M
        a, b, c, d, e, f, g, h = (t1 + t2) & _M, a, b, c, (d + t1) & _M, e, f, g
    return tuple((x + y) & _M for x, y in zip(state, (a, b, c, d, e, f, g, h), strict=True))


class _PureCore:
    """Reference backend: whole blocks through :func:`pure_compress`, a tail buffer."""

    def __init__(self, state: bytes, count: int) -> None:
        self.h = struct.unpack(">8I", state)
        self.count = count
        self.buf = b""

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self.count += len(data)
        data = self.buf + bytes(data)
        full = len(data) - len(data) % 64
        h = self.h
        for off in range(0, full, 64):
            h = pure_compress(h, data[off : off + 64])
        self.h, self.buf = h, data[full:]

    def state(self) -> bytes:
        return struct.pack(">8I", *self.h)

    def digest(self) -> bytes:
        bits = self.count * 8
        pad = b"\x80" + b"\x00" * ((55 - self.count) % 64) + struct.pack(">Q", bits)
        h, data = self.h, self.buf + pad
        for off in range(0, len(data), 64):
            h = pure_compress(h, data[off : off + 64])
        return struct.pack(">8I", *h)


class _CtxStruct(ctypes.Structure):
    # OpenSSL's SHA256_CTX (crypto/sha.h, unchanged since 0.9.8): h[8], Nl, Nh,
    # data[16], num, md_len; the h words are native-endian integers.
    _fields_ = [
        ("h", ctypes.c_uint32 * 8),
        ("Nl", ctypes.c_uint32),
        ("Nh", ctypes.c_uint32),
        ("data", ctypes.c_uint32 * 16),
        ("num", ctypes.c_uint),
        ("md_len", ctypes.c_uint),
    ]


def _load_libcrypto() -> Any:
    for name in ("libcrypto.so.3", "libcrypto.so.1.1", "libcrypto.so", "libcrypto.dylib"):
        try:
            lib = ctypes.CDLL(name)  # CDLL: the GIL is released during each call
            init, update, final = lib.SHA256_Init, lib.SHA256_Update, lib.SHA256_Final
        except (OSError, AttributeError):
            continue
        init.argtypes = [ctypes.POINTER(_CtxStruct)]
        update.argtypes = [ctypes.POINTER(_CtxStruct), ctypes.c_void_p, ctypes.c_size_t]
        final.argtypes = [ctypes.c_char_p, ctypes.POINTER(_CtxStruct)]
        for fn in (init, update, final):
            fn.restype = ctypes.c_int
        return lib
    return None


_LIB = _load_libcrypto()


def _address(data: bytes | bytearray | memoryview) -> tuple[Any, int]:
    """A ctypes argument pointing at ``data``'s bytes without copying (read-only
    views other than whole ``bytes`` objects are copied once)."""
    if isinstance(data, bytes):
        return data, len(data)
    view = memoryview(data)
    if view.readonly or not view.contiguous:
        raw = bytes(view)
        return raw, len(raw)
    n = view.nbytes
    if n == 0:
        return None, 0
    return ctypes.addressof((ctypes.c_char * n).from_buffer(view.cast("B"))), n


class _LibCore:
    """libcrypto backend: one SHA256_CTX whose chaining value we set and read."""

    def __init__(self, state: bytes, count: int) -> None:
        ctx = _CtxStruct()
        _LIB.SHA256_Init(ctypes.byref(ctx))
        words = struct.unpack(">8I", state)
        for i, w in enumerate(words):
            ctx.h[i] = w
        bits = count * 8
        ctx.Nl, ctx.Nh = bits & _M, bits >> 32
        self.ctx = ctx

    def update(self, data: bytes | bytearray | memoryview) -> None:
        ptr, n = _address(data)
        if n:
            _LIB.SHA256_Update(ctypes.byref(self.ctx), ptr, n)

    def state(self) -> bytes:
        return struct.pack(">8I", *self.ctx.h)

    def digest(self) -> bytes:
        out = ctypes.create_string_buffer(32)
        ctx = _CtxStruct()
        ctypes.pointer(ctx)[0] = self.ctx  # finalise a copy: the object stays usable
        _LIB.SHA256_Final(out, ctypes.byref(ctx))
        return out.raw


#: Which backend :class:`Sha256` uses: "libcrypto" or "pure".
BACKEND = "libcrypto" if _LIB is not None else "pure"


class Sha256:
    """SHA-256 that can start from, and report, a chaining value.

    ``Sha256()`` hashes from the start; ``Sha256.resume(state, count)``
    continues a message whose first ``count`` bytes (a multiple of 64) left
    chaining value ``state``.
    """

    __slots__ = ("_core", "count")

    def __init__(self, *, pure: bool = False) -> None:
        self._core: _LibCore | _PureCore = (_PureCore if pure or _LIB is None else _LibCore)(IV, 0)
        self.count = 0

    @classmethod
    def resume(cls, state: bytes, count: int, *, pure: bool = False) -> Sha256:
        if len(state) != 32:
            raise ValueError("a SHA-256 chaining value is 32 bytes")
        if count < 0 or count % 64 or count >= 1 << 61:
            raise ValueError("resume at a whole number of 64-byte blocks")
        self = cls.__new__(cls)
        self._core = (_PureCore if pure or _LIB is None else _LibCore)(state, count)
        self.count = count
        return self

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._core.update(data)
        self.count += len(data)

    def state(self) -> bytes:
        """The chaining value after ``count`` bytes; needs ``count % 64 == 0``."""
        if self.count % 64:
            raise ValueError("the chaining value exists only at a 64-byte block boundary")
        return self._core.state()

    def digest(self) -> bytes:
        """SHA-256 of everything so far (padding applied to a copy)."""
        return self._core.digest()
