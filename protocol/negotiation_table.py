"""The negotiation state machine as data (spec/negotiation.md section 4).

Roles, states and events, and :data:`TRANSITIONS`, the table
``(state, event, sender) -> next state`` that :class:`protocol.negotiation_state.Negotiation`
reads.  spec/negotiation.md contains the same table between its
``transitions:begin``/``end`` markers, and a test compares the two.  Also here:
which role may send each message type and the event each message triggers.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from .errors import ProtocolError
from .negotiation import Accept, Agreement, Cancel, JobStatus, Offer, Quote, Refusal
from .wire import Message

__all__ = [
    "Role",
    "State",
    "Event",
    "TRANSITIONS",
    "TERMINAL_STATES",
    "SENDERS",
    "event_of",
]


class Role(enum.Enum):
    SUBMITTER = "submitter"
    PROVIDER = "provider"

    @property
    def other(self) -> Role:
        return Role.PROVIDER if self is Role.SUBMITTER else Role.SUBMITTER


class State(enum.Enum):
    IDLE = "idle"
    OFFERED = "offered"
    QUOTED = "quoted"
    ACCEPTED = "accepted"
    AGREED = "agreed"
    TRANSFERRING = "transferring"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    REFUSED = "refused"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Event(enum.Enum):
    """What moves the machine: one per message type (one per status phase), plus
    ``expire``, a local event (no message) raised by
    :meth:`protocol.negotiation_state.Negotiation.expire`."""

    OFFER = "offer"
    QUOTE = "quote"
    REFUSAL = "refusal"
    ACCEPT = "accept"
    AGREEMENT = "agreement"
    CANCEL = "cancel"
    TRANSFERRING = "transferring"
    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    EXPIRE = "expire"


S, P = Role.SUBMITTER, Role.PROVIDER
_ST = State
_LIVE_JOB = (_ST.AGREED, _ST.TRANSFERRING, _ST.QUEUED, _ST.RUNNING)


def _table() -> dict[tuple[State, Event, Role | None], State]:
    t: dict[tuple[State, Event, Role | None], State] = {
        (_ST.IDLE, Event.OFFER, S): _ST.OFFERED,
        (_ST.IDLE, Event.REFUSAL, P): _ST.REFUSED,  # an offer the provider could not take at all
        (_ST.OFFERED, Event.QUOTE, P): _ST.QUOTED,
        (_ST.OFFERED, Event.REFUSAL, P): _ST.REFUSED,
        (_ST.QUOTED, Event.ACCEPT, S): _ST.ACCEPTED,
        (_ST.QUOTED, Event.REFUSAL, P): _ST.REFUSED,  # e.g. an accept that came too late
        (_ST.ACCEPTED, Event.AGREEMENT, P): _ST.AGREED,
        (_ST.ACCEPTED, Event.REFUSAL, P): _ST.REFUSED,
        (_ST.AGREED, Event.TRANSFERRING, P): _ST.TRANSFERRING,
        (_ST.AGREED, Event.QUEUED, P): _ST.QUEUED,
        (_ST.TRANSFERRING, Event.QUEUED, P): _ST.QUEUED,
        (_ST.AGREED, Event.RUNNING, P): _ST.RUNNING,
        (_ST.TRANSFERRING, Event.RUNNING, P): _ST.RUNNING,
        (_ST.QUEUED, Event.RUNNING, P): _ST.RUNNING,
        (_ST.RUNNING, Event.FINISHED, P): _ST.FINISHED,
        (_ST.OFFERED, Event.EXPIRE, None): _ST.EXPIRED,
        (_ST.QUOTED, Event.EXPIRE, None): _ST.EXPIRED,
    }
    for state in _LIVE_JOB:
        t[(state, Event.FAILED, P)] = _ST.FAILED
    for state in (_ST.OFFERED, _ST.QUOTED, _ST.ACCEPTED, *_LIVE_JOB):
        t[(state, Event.CANCEL, S)] = _ST.CANCELLED
    for state in (_ST.QUOTED, *_LIVE_JOB):
        t[(state, Event.CANCEL, P)] = _ST.CANCELLED
    return t


#: ``(state, event, sender) -> next state``; sender ``None`` marks a local event.
#: Anything not listed is a protocol violation.
TRANSITIONS: Final[Mapping[tuple[State, Event, Role | None], State]] = _table()

TERMINAL_STATES: Final = frozenset(
    {_ST.FINISHED, _ST.FAILED, _ST.REFUSED, _ST.CANCELLED, _ST.EXPIRED}
)

#: Which role may send each message type (anything else is ``unexpected_type``).
SENDERS: Final[dict[type[Message], frozenset[Role]]] = {
    Offer: frozenset({S}),
    Accept: frozenset({S}),
    Quote: frozenset({P}),
    Refusal: frozenset({P}),
    Agreement: frozenset({P}),
    JobStatus: frozenset({P}),
    Cancel: frozenset({S, P}),
}

_SIMPLE_EVENTS: Final[dict[type[Message], Event]] = {
    Offer: Event.OFFER,
    Quote: Event.QUOTE,
    Refusal: Event.REFUSAL,
    Accept: Event.ACCEPT,
    Agreement: Event.AGREEMENT,
    Cancel: Event.CANCEL,
}


def event_of(msg: Message) -> Event:
    """The table event a message triggers."""
    if isinstance(msg, JobStatus):
        return Event(msg.phase.value)
    try:
        return _SIMPLE_EVENTS[type(msg)]
    except KeyError:
        raise ProtocolError("unexpected_type", f"{type(msg).__name__} is not a negotiation message") from None
