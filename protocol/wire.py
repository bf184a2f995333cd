"""Typed wire structures: frozen, slotted dataclasses that encode to CBOR maps.

A *struct* is a frozen dataclass whose fields have wire-able annotations:
``int``, ``bool``, ``str``, ``bytes``, ``T | None``, ``tuple[T, ...]``,
``dict[str, T]``, an ``enum.Enum`` with int or str values, or another struct.
It encodes as a CBOR map from field name to value; every field is always
present (``None`` is ``null``).  Decoding rejects missing fields, unknown
fields and wrong types with a :class:`ProtocolError` that names the field.

A struct validates itself on construction: field types are checked, then the
class's ``check()`` method (if any) applies its own rules and raises
:class:`ValidationError` naming the field and the rule.

A *message* is a struct with a numeric type tag and a signing domain,
registered in :data:`REGISTRY`; it is what travels inside a signed envelope
(see :mod:`protocol.envelope`).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from . import cbor
from .errors import LocalProtocolError, ProtocolError, ValidationError

__all__ = [
    "Struct",
    "Message",
    "struct",
    "message",
    "build",
    "REGISTRY",
    "to_wire",
    "from_wire",
    "uvarint",
    "MAX_VARINT_BYTES",
]

T = TypeVar("T")
S = TypeVar("S", bound="Struct")
M = TypeVar("M", bound="Message")

_INT_MIN, _INT_MAX = -(1 << 64), (1 << 64) - 1


class Struct:
    """Base class of wire structures (use the :func:`struct` decorator)."""

    __slots__ = ()
    _fields_: ClassVar[tuple[tuple[str, Any], ...]] = ()
    _checks_: ClassVar[tuple[tuple[str, Callable[[Any, str], None]], ...]] = ()
    _plan_: ClassVar[tuple[tuple[str, Callable[[Any, str], Any]], ...]] = ()

    def check(self) -> None:
        """Per-class rules; raise :class:`ValidationError`.  Default: none."""

    def __post_init__(self) -> None:
        for name, check in type(self)._checks_:
            check(getattr(self, name), name)
        self.check()

    def to_wire(self) -> dict[str, Any]:
        return {name: _to_wire(getattr(self, name)) for name, _ in type(self)._fields_}

    @classmethod
    def from_wire(cls: type[S], obj: Any, path: str = "") -> S:
        return _struct_from_wire(cls, obj, path)

    def encode(self) -> bytes:
        """Canonical CBOR bytes of this struct."""
        return cbor.encode(self.to_wire())

    @classmethod
    def decode(cls: type[S], data: bytes, limits: cbor.Limits = cbor.DEFAULT_LIMITS) -> S:
        return cls.from_wire(cbor.decode(data, limits))

    def replace(self: S, **changes: Any) -> S:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def build(cls: type[S], **fields: Any) -> S:
    """Construct ``cls`` from *our own* values, for sending.

    A struct checks itself on construction and raises :class:`ValidationError`,
    a :class:`ProtocolError` (remote blame), because decoding a peer's bytes
    applies the same rules.  A message this node builds that breaks a rule is
    a bug on this side, not the peer's doing: ``build`` re-raises it as
    :class:`LocalProtocolError` (h11's split), so a send path never answers the
    peer with a refusal, or penalises it, for our own mistake.
    """
    try:
        return cls(**fields)
    except ProtocolError as exc:
        raise LocalProtocolError(f"cannot build {cls.__name__}: {exc}") from exc


class Message(Struct):
    """A struct that travels in a signed envelope.  Set by :func:`message`."""

    __slots__ = ()
    TYPE: ClassVar[int]
    DOMAIN: ClassVar[str]


#: Every message type by numeric tag (the closed set of the wire protocol).
REGISTRY: dict[int, type[Message]] = {}


@typing.dataclass_transform(kw_only_default=True, frozen_default=True)
def struct(cls: type[S]) -> type[S]:
    """Make ``cls`` a frozen, slotted, keyword-only dataclass with a wire codec."""
    dc = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)
    hints = typing.get_type_hints(dc)
    dc._fields_ = tuple((f.name, hints[f.name]) for f in dataclasses.fields(dc))  # type: ignore[arg-type]
    dc._checks_ = tuple((name, _plan(hint)[0]) for name, hint in dc._fields_)
    dc._plan_ = tuple((name, _plan(hint)[1]) for name, hint in dc._fields_)
    return dc


@typing.dataclass_transform(kw_only_default=True, frozen_default=True)
def message(tag: int, domain: str) -> Callable[[type[M]], type[M]]:
    """Register a message class under ``tag`` with signing ``domain``."""

    def wrap(cls: type[M]) -> type[M]:
        if tag in REGISTRY:
            raise LocalProtocolError(f"message tag {tag} already used by {REGISTRY[tag].__name__}")
        if not 0 < tag < 1 << 16:
            raise LocalProtocolError("message tags are 1..65535")
        dc = struct(cls)
        dc.TYPE = tag
        dc.DOMAIN = domain
        REGISTRY[tag] = dc
        return dc

    return wrap


# --------------------------------------------------------------------------- type logic
#
# Each annotation is compiled once (``_plan``) into two closures: ``check`` (is
# this Python value of that type?) and ``load`` (turn decoded CBOR into that
# type, checking as it goes).  Decoding then does no typing introspection.

Check = Callable[[Any, str], None]
Load = Callable[[Any, str], Any]


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _required(path: str) -> None:
    raise ValidationError(path, "is required")


def _leaf_check(hint: Any) -> Check:
    name = _type_name(hint)

    def fail(value: Any, path: str) -> None:
        if value is None:
            _required(path)
        raise ValidationError(path, f"must be {name}, got {type(value).__name__}")

    if hint is int:

        def check_int(value: Any, path: str) -> None:
            if not isinstance(value, int) or isinstance(value, bool):
                fail(value, path)
            if not _INT_MIN <= value <= _INT_MAX:
                raise ValidationError(path, "integer out of 64-bit range")

        return check_int
    if hint is bool:

        def check_bool(value: Any, path: str) -> None:
            if value is not True and value is not False:
                fail(value, path)

        return check_bool
    if hint in (str, bytes) or (isinstance(hint, type) and issubclass(hint, enum.Enum | Struct)):

        def check_instance(value: Any, path: str) -> None:
            if not isinstance(value, hint):
                fail(value, path)

        return check_instance
    raise LocalProtocolError(f"unsupported wire annotation {hint!r}")


@functools.cache
def _plan(hint: Any) -> tuple[Check, Load]:
    """The (check, load) pair of one annotation, built once per hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return _plan_optional(hint)
    if origin is tuple:
        return _plan_tuple(hint)
    if origin is dict:
        return _plan_dict(hint)
    return _plan_leaf(hint)


def _plan_optional(hint: Any) -> tuple[Check, Load]:
    """``X | None``: ``None`` passes (and decodes from ``null``), anything else is an ``X``."""
    args = typing.get_args(hint)
    inner = [a for a in args if a is not type(None)]
    if len(args) != 2 or len(inner) != 1:
        raise LocalProtocolError(f"unsupported union {hint!r}: only X | None")
    check_inner, load_inner = _plan(inner[0])

    def check_opt(value: Any, path: str) -> None:
        if value is not None:
            check_inner(value, path)

    def load_opt(obj: Any, path: str) -> Any:
        return None if obj is None else load_inner(obj, path)

    return check_opt, load_opt


def _plan_tuple(hint: Any) -> tuple[Check, Load]:
    """``tuple[T, ...]``: a CBOR array of ``T``, each item's path ``field[i]``."""
    (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
    check_item, load_item = _plan(item)

    def check_tuple(value: Any, path: str) -> None:
        if value is None:
            _required(path)
        if not isinstance(value, tuple):
            raise ValidationError(path, "must be a tuple")
        for i, v in enumerate(value):
            check_item(v, f"{path}[{i}]")

    def load_tuple(obj: Any, path: str) -> Any:
        if obj is None:
            raise ValidationError(path, "is required (null given)")
        if not isinstance(obj, list):
            raise ValidationError(path, "must be an array")
        return tuple([load_item(v, f"{path}[{i}]") for i, v in enumerate(obj)])

    return check_tuple, load_tuple


def _plan_dict(hint: Any) -> tuple[Check, Load]:
    """``dict[str, T]``: a CBOR map with text keys, each value's path ``field.key``."""
    _, value_hint = typing.get_args(hint)
    check_value, load_value = _plan(value_hint)

    def check_dict(value: Any, path: str) -> None:
        if value is None:
            _required(path)
        if not isinstance(value, dict):
            raise ValidationError(path, "must be a mapping")
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValidationError(path, "mapping keys must be text")
            check_value(v, f"{path}.{k}")

    def load_dict(obj: Any, path: str) -> Any:
        if obj is None:
            raise ValidationError(path, "is required (null given)")
        if not isinstance(obj, dict):
            raise ValidationError(path, "must be a map")
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValidationError(path, "map keys must be text")
            out[k] = load_value(v, f"{path}.{k}")
        return out

    return check_dict, load_dict


def _plan_leaf(hint: Any) -> tuple[Check, Load]:
    """A nested struct, an enum (decoded from its value) or a plain int/bool/str/bytes."""
    check = _leaf_check(hint)

    if isinstance(hint, type) and issubclass(hint, Struct):

        def load_struct(obj: Any, path: str) -> Any:
            if obj is None:
                raise ValidationError(path, "is required (null given)")
            return _struct_from_wire(hint, obj, path)

        return check, load_struct

    if isinstance(hint, type) and issubclass(hint, enum.Enum):

        def load_enum(obj: Any, path: str) -> Any:
            if obj is None:
                raise ValidationError(path, "is required (null given)")
            try:
                return hint(obj)
            except ValueError:
                raise ValidationError(path, f"unknown {hint.__name__} value {obj!r}") from None

        return check, load_enum

    def load_leaf(obj: Any, path: str) -> Any:
        if obj is None:
            raise ValidationError(path, "is required (null given)")
        check(obj, path)
        return obj

    return check, load_leaf


def _check_type(value: Any, hint: Any, path: str) -> None:
    _plan(hint)[0](value, path)


def _to_wire(value: Any) -> Any:
    if isinstance(value, Struct):
        return value.to_wire()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _from_wire(obj: Any, hint: Any, path: str) -> Any:
    return _plan(hint)[1](obj, path)


def _struct_from_wire(cls: type[S], obj: Any, path: str) -> S:
    where = path or cls.__name__
    if not isinstance(obj, dict):
        raise ValidationError(where, "must be a map")
    plan = cls._plan_
    if len(obj) != len(plan) or any(name not in obj for name, _ in plan):
        names = {name for name, _ in plan}
        unknown = sorted(str(k) for k in obj if k not in names)
        if unknown:
            raise ProtocolError("unknown_field", f"{where}: unknown field(s) {', '.join(unknown)}")
        missing = [n for n, _ in plan if n not in obj]
        raise ProtocolError("missing_field", f"{where}: missing field(s) {', '.join(missing)}")
    # Values are type-checked while loading, so the instance is built without
    # running __post_init__'s type pass a second time; check() still runs.
    inst = object.__new__(cls)
    prefix = f"{path}." if path else ""
    for name, load in plan:
        object.__setattr__(inst, name, load(obj[name], prefix + name))
    try:
        inst.check()
    except ValidationError as exc:
        # check() names fields relative to its own struct; a nested struct's
        # error must name the full path ("image.manifest.digest").
        if path and exc.field != path and not exc.field.startswith(path + "."):
            raise ValidationError(f"{path}.{exc.field}", exc.rule) from None
        raise
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:  # a check() that raised the wrong type
        raise ValidationError(where, str(exc)) from None
    return inst


def to_wire(value: Struct) -> dict[str, Any]:
    return value.to_wire()


def from_wire(cls: type[S], obj: Any) -> S:
    return cls.from_wire(obj)


# --------------------------------------------------------------------------- framing
#
# Stream protocols carry one message per frame: ``uvarint(len(body)) || body``
# (spec/negotiation.md section 1).  The length is read before the body, so a
# receiver refuses an oversize frame without reading (or buffering) it.

#: Longest length prefix a receiver reads (a 64-bit length needs 10 bytes).
MAX_VARINT_BYTES = 10


def uvarint(n: int) -> bytes:
    """Unsigned LEB128 (multiformats unsigned-varint), shortest form."""
    if n < 0:
        raise LocalProtocolError("uvarint of a negative number")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
