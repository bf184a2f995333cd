"""The submitter side of a negotiation: ask providers for quotes, accept the best."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.clock import UnixClock
from node.negotiate.agreements import AgreementStore
from node.negotiate.framing import STEP_TIMEOUT, recv_frame, send_frame
from node.p2p import FramedStream, P2PHost, StreamClosed
from protocol.envelope import Signed
from protocol.errors import LocalProtocolError, ProtocolError
from protocol.jobspec import JobSpec
from protocol.negotiation import (
    Agreement,
    CancelReason,
    Quote,
    Refusal,
)
from protocol.negotiation_state import NEED_DATA, Negotiation, Role, State
from protocol.streams import NEGOTIATE_PROTOCOL

__all__ = ["QuoteSession", "Outcome", "request_quote", "accept_quote", "cancel_quote", "negotiate_best", "OFFER_TTL"]

log = logging.getLogger("cpn.negotiation")


OFFER_TTL = 60  #: seconds an offer we send stays valid


@dataclass
class QuoteSession:
    """An open negotiation with one provider, between quote and decision."""

    provider: str
    conn: Negotiation
    stream: FramedStream | None
    quote: Quote | None = None
    refusal: Refusal | None = None
    error: str | None = None  #: unreachable, reset, timeout, protocol error
    fit_pct: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"provider": self.provider}
        if self.quote is not None:
            q = self.quote
            out.update(status="quoted", price=q.price, estimated_start=q.estimated_start,
                       gpu_models=list(q.gpu_models), reservation_expires_at=q.reservation_expires_at)
        elif self.refusal is not None:
            r = self.refusal
            out.update(status="refused", reason=r.reason.value, detail=r.detail, queue_depth=r.queue_depth)
        else:
            out.update(status="error", reason="unreachable", detail=self.error or "")
        return out


async def request_quote(
    p2p: P2PHost,
    key: Ed25519PrivateKey,
    provider: str,
    job: Signed[JobSpec],
    *,
    clock: UnixClock,
    addrs: Sequence[str] | None = None,
    store: AgreementStore | None = None,
) -> QuoteSession:
    """Open a stream, offer the job, wait for a quote or refusal (stream stays open on a quote)."""
    nid = secrets.token_bytes(16)
    conn = Negotiation(Role.SUBMITTER, key=key, submitter=p2p.peer_id, provider=provider, negotiation_id=nid)
    session = QuoteSession(provider=provider, conn=conn, stream=None)
    try:
        with trio.fail_after(STEP_TIMEOUT):
            session.stream = await p2p.open_stream(provider, NEGOTIATE_PROTOCOL, addrs)
        now = clock()
        await send_frame(session.stream, conn.send_offer(job.raw, expires_at=now + OFFER_TTL, now=now))
        conn.receive_data(await recv_frame(session.stream))
        event = conn.next_event(now=clock())
    except (StreamClosed, trio.TooSlowError, ProtocolError) as exc:  # the provider's doing
        session.error = str(exc) or type(exc).__name__
        await _close(session)
        return session
    except LocalProtocolError:  # our bug (e.g. an offer we cannot build): fail here, blame nobody
        await _close(session)
        raise
    assert event is not NEED_DATA
    if isinstance(event.message, Quote):
        session.quote = event.message
    elif isinstance(event.message, Refusal):
        session.refusal = event.message
        await _close(session)
    if store is not None:
        store.save(nid.hex(), "submitter", peer=provider, state=conn.state.value, now=clock(),
                   record=conn.to_record(), detail=_detail(session))
    return session


def _detail(s: QuoteSession) -> str:
    if s.refusal is not None:
        return f"{s.refusal.reason.value}: {s.refusal.detail}"
    if s.error:
        return s.error
    if s.quote is not None and s.conn.state is State.CANCELLED:
        return "not chosen: another provider's quote won"
    return ""


async def _close(session: QuoteSession) -> None:
    if session.stream is not None:
        with trio.CancelScope(shield=True), trio.move_on_after(STEP_TIMEOUT):
            await session.stream.close()


async def cancel_quote(session: QuoteSession, reason: CancelReason, *, clock: UnixClock) -> None:
    """Tell the provider we do not take its quote (it releases the reservation now)."""
    if session.stream is None or session.conn.state is not State.QUOTED:
        return
    try:
        await send_frame(session.stream, session.conn.send_cancel(reason, now=clock()))
    except (StreamClosed, trio.TooSlowError, LocalProtocolError):
        pass
    await _close(session)


async def accept_quote(session: QuoteSession, *, clock: UnixClock) -> Agreement | None:
    """Accept; return the co-signed agreement, or None (refused/timeout: see ``session``)."""
    assert session.stream is not None
    conn = session.conn
    try:
        await send_frame(session.stream, conn.send_accept(now=clock()))
        conn.receive_data(await recv_frame(session.stream))
        event = conn.next_event(now=clock())
    except (StreamClosed, trio.TooSlowError, ProtocolError) as exc:
        session.error = str(exc) or type(exc).__name__
        await _close(session)
        return None
    except LocalProtocolError as exc:  # e.g. the quote lapsed before we got to it: not the provider's fault
        log.info("could not accept the quote of %s: %s", session.provider, exc)
        session.error = f"not accepted here: {exc}"
        await _close(session)
        return None
    await _close(session)
    assert event is not NEED_DATA
    if isinstance(event.message, Refusal):
        session.refusal, session.quote = event.message, None
        return None
    assert isinstance(event.message, Agreement)
    return event.message


@dataclass
class Outcome:
    agreement: Agreement | None
    chosen: QuoteSession | None
    sessions: list[QuoteSession]

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"agreed": self.agreement is not None,
                               "providers": [s.to_json() for s in self.sessions]}
        if self.agreement is not None and self.chosen is not None:
            t = self.agreement.terms
            out.update(agreement_id=t.negotiation_id.hex(), provider=t.provider, price=t.price,
                       estimated_start=t.estimated_start, max_run_s=t.max_run_s)
        return out


def _save(store: AgreementStore | None, s: QuoteSession, clock: UnixClock) -> None:
    if store is not None:
        store.save(s.conn.negotiation_id.hex(), "submitter", peer=s.provider,  # type: ignore[union-attr]
                   state=s.conn.state.value, now=clock(), record=s.conn.to_record(), detail=_detail(s))


def _rank(s: QuoteSession) -> tuple[int, int, int]:
    assert s.quote is not None
    return (s.quote.price, s.quote.estimated_start, -s.fit_pct)


async def negotiate_best(
    p2p: P2PHost,
    key: Ed25519PrivateKey,
    job: Signed[JobSpec],
    candidates: Sequence[tuple[str, Sequence[str] | None, int]],
    *,
    clock: UnixClock,
    store: AgreementStore | None = None,
    on_agreement: Callable[[QuoteSession, Agreement], None] | None = None,
) -> Outcome:
    """Ask every candidate ``(peer, addrs, fit_pct)`` for a quote in parallel, accept the
    best (price, then estimated start, then tightest fit), cancel the rest.  If the best
    refuses at accept time (e.g. its reservation lapsed), try the next.

    ``on_agreement`` runs as soon as the agreement is in, before the other quotes
    are cancelled (in parallel): the provider starts fetching at once, and a quote
    left waiting counts against us (it lapses: spec/negotiation.md section 8)."""
    sessions: list[QuoteSession] = []

    async def ask(peer: str, addrs: Sequence[str] | None, fit: int) -> None:
        s = await request_quote(p2p, key, peer, job, clock=clock, addrs=addrs, store=store)
        s.fit_pct = fit
        sessions.append(s)

    async with trio.open_nursery() as nursery:
        for peer, addrs, fit in candidates:
            nursery.start_soon(ask, peer, addrs, fit)
    quoted = sorted((s for s in sessions if s.quote is not None), key=_rank)
    agreement: Agreement | None = None
    chosen: QuoteSession | None = None
    rest = list(quoted)
    while rest and agreement is None:
        s = rest.pop(0)
        agreement = await accept_quote(s, clock=clock)
        chosen = s if agreement is not None else None
        _save(store, s, clock)
        if agreement is not None and on_agreement is not None:
            on_agreement(s, agreement)

    async def decline(s: QuoteSession) -> None:
        await cancel_quote(s, CancelReason.CHOSE_OTHER, clock=clock)
        _save(store, s, clock)

    async with trio.open_nursery() as nursery:
        for s in rest:
            nursery.start_soon(decline, s)
    return Outcome(agreement=agreement, chosen=chosen, sessions=sorted(sessions, key=lambda s: s.provider))
