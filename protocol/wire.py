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
import types
import typing
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from . import cbor
from .errors import LocalProtocolError, ProtocolError, ValidationError

__all__ = ["Struct", "Message", "struct", "message", "REGISTRY", "to_wire", "from_wire"]

T = TypeVar("T")
S = TypeVar("S", bound="Struct")
M = TypeVar("M", bound="Message")

_INT_MIN, _INT_MAX = -(1 << 64), (1 << 64) - 1


class Struct:
    """Base class of wire structures (use the :func:`struct` decorator)."""

    __slots__ = ()
    _fields_: ClassVar[tuple[tuple[str, Any], ...]] = ()

    def check(self) -> None:
        """Per-class rules; raise :class:`ValidationError`.  Default: none."""

    def __post_init__(self) -> None:
        for name, hint in type(self)._fields_:
            _check_type(getattr(self, name), hint, name)
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


class Message(Struct):
    """A struct that travels in a signed envelope.  Set by :func:`message`."""

    __slots__ = ()
    TYPE: ClassVar[int]
    DOMAIN: ClassVar[str]


#: Every message type by numeric tag (the closed set of the wire protocol).
REGISTRY: dict[int, type[Message]] = {}


def struct(cls: type[S]) -> type[S]:
    """Make ``cls`` a frozen, slotted, keyword-only dataclass with a wire codec."""
    dc = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)
    hints = typing.get_type_hints(dc)
    dc._fields_ = tuple((f.name, hints[f.name]) for f in dataclasses.fields(dc))  # type: ignore[arg-type]
    return dc


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


def _origin(hint: Any) -> Any:
    return typing.get_origin(hint)


def _is_optional(hint: Any) -> tuple[bool, Any]:
    if _origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return True, args[0]
    return False, hint


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def _check_type(value: Any, hint: Any, path: str) -> None:
    optional, inner = _is_optional(hint)
    if value is None:
        if optional:
            return
        raise ValidationError(path, "is required")
    hint = inner
    origin = _origin(hint)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and not _INT_MIN <= value <= _INT_MAX:
            raise ValidationError(path, "integer out of 64-bit range")
    elif hint is str:
        ok = isinstance(value, str)
    elif hint is bytes:
        ok = isinstance(value, bytes)
    elif origin is tuple:
        if not isinstance(value, tuple):
            raise ValidationError(path, "must be a tuple")
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        for i, v in enumerate(value):
            _check_type(v, item, f"{path}[{i}]")
        return
    elif origin is dict:
        if not isinstance(value, dict):
            raise ValidationError(path, "must be a mapping")
        _, vt = typing.get_args(hint)
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValidationError(path, "mapping keys must be text")
            _check_type(v, vt, f"{path}.{k}")
        return
    elif isinstance(hint, type) and issubclass(hint, enum.Enum | Struct):
        ok = isinstance(value, hint)
    else:  # pragma: no cover - a programming error in a struct definition
        raise LocalProtocolError(f"unsupported wire annotation {hint!r} on {path}")
    if not ok:
        raise ValidationError(path, f"must be {_type_name(hint)}, got {type(value).__name__}")


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
    optional, inner = _is_optional(hint)
    if obj is None:
        if optional:
            return None
        raise ValidationError(path, "is required (null given)")
    hint = inner
    origin = _origin(hint)
    if origin is tuple:
        if not isinstance(obj, list):
            raise ValidationError(path, "must be an array")
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return tuple(_from_wire(v, item, f"{path}[{i}]") for i, v in enumerate(obj))
    if origin is dict:
        if not isinstance(obj, dict):
            raise ValidationError(path, "must be a map")
        _, vt = typing.get_args(hint)
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValidationError(path, "map keys must be text")
            out[k] = _from_wire(v, vt, f"{path}.{k}")
        return out
    if isinstance(hint, type) and issubclass(hint, Struct):
        return _struct_from_wire(hint, obj, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(obj)
        except ValueError:
            raise ValidationError(path, f"unknown {hint.__name__} value {obj!r}") from None
    _check_type(obj, hint, path)
    return obj


def _struct_from_wire(cls: type[S], obj: Any, path: str) -> S:
    where = path or cls.__name__
    if not isinstance(obj, dict):
        raise ValidationError(where, "must be a map")
    names = [name for name, _ in cls._fields_]
    unknown = sorted(str(k) for k in obj if k not in names)
    if unknown:
        raise ProtocolError("unknown_field", f"{where}: unknown field(s) {', '.join(unknown)}")
    missing = [n for n in names if n not in obj]
    if missing:
        raise ProtocolError("missing_field", f"{where}: missing field(s) {', '.join(missing)}")
    kwargs = {
        name: _from_wire(obj[name], hint, f"{path}.{name}" if path else name)
        for name, hint in cls._fields_
    }
    try:
        return cls(**kwargs)
    except ProtocolError:
        raise
    except (TypeError, ValueError) as exc:  # a check() that raised the wrong type
        raise ValidationError(where, str(exc)) from None


def to_wire(value: Struct) -> dict[str, Any]:
    return value.to_wire()


def from_wire(cls: type[S], obj: Any) -> S:
    return cls.from_wire(obj)
