"""Errors of the protocol core, split by blame (as in h11).

``ProtocolError`` means *the remote peer* (or the bytes it sent) broke the
protocol: the caller drops that message, resets that stream or penalises that
peer, and keeps serving everyone else.  ``LocalProtocolError`` means *our own
code* misused the API (for example sending an event in a state that does not
allow it); it is a bug, not an attack.  Structs check themselves on construction and
raise ``ValidationError`` (decoding a peer's bytes applies the same rules);
code that builds a message from its own values for sending uses
:func:`protocol.wire.build`, which turns that into ``LocalProtocolError``.

Every error carries a short machine-readable ``reason`` (a lowercase
identifier that test vectors and refusal messages can name) and a human
``detail``.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The remote side sent something invalid.  ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ValidationError(ProtocolError):
    """A message or record field breaks a rule.  Names the field and the rule."""

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__("invalid_field", f"{field}: {rule}")


class LocalProtocolError(Exception):
    """Our own code used the protocol API wrongly (a bug on this side)."""
