"""Whatever a request makes a stream handler raise, the daemon lives on, the stream
is reset, the log line is printed once per peer per minute, and blame goes where
it belongs: a bug of ours is logged as ours, never answered to the peer as a
refusal.  (issue 12: "every server entry point survives whatever a request can
raise"; "local blame vs remote blame")

The unexpected exceptions are injected (a fault standing in for a bug we do not
know of yet): on today's py-libp2p, an exception that leaves a handler ends the
whole daemon."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from support.adversary import agree, bare_peer, quote, signed_job
from support.net import container_proven, network

from node.negotiate.policy import Policy
from protocol.envelope import seal
from protocol.jobflow import JobWatch
from protocol.jobspec import JobSpec
from protocol.negotiation import Agreement, Cancel, CancelReason
from protocol.streams import JOB_PROTOCOL, STATUS_PROTOCOL

pytestmark = pytest.mark.adversarial


class Boom(RuntimeError):
    pass


def boom(*args: Any, **kw: Any) -> Any:
    raise Boom("injected fault")


async def boom_async(*args: Any, **kw: Any) -> Any:
    raise Boom("injected fault")


def peer_lines(caplog: pytest.LogCaptureFixture, peer: str, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cpn.peer" and r.levelno == level and peer in r.getMessage()]


async def test_unexpected_exceptions_in_handlers_do_not_kill_the_daemon(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="cpn")
    async with network(tmp_path) as net:
        prov = await net.start("prov", prepare=container_proven, node={"peer_log_per_minute": 1})
        async with bare_peer() as (attacker, akey), bare_peer() as (p2p, key):
            # negotiation: admission raises
            monkeypatch.setattr(prov.negotiation.provider, "runtime_check", boom)
            for _ in range(5):
                s = await quote(attacker, akey, prov, signed_job(akey))
                assert s.error is not None and s.quote is None and s.refusal is None  # reset, not answered
            monkeypatch.undo()
            # job protocol: serving a watch raises
            monkeypatch.setattr(prov.provider_jobs, "handle", boom_async)
            watch = seal(JobWatch(agreement_id=bytes(16), log_lines=0), akey).raw
            for _ in range(5):
                await send_one(attacker, prov, JOB_PROTOCOL, watch)
            monkeypatch.undo()
            # status stream: looking the agreement up raises
            monkeypatch.setattr(prov.agreements, "get", boom)
            cancel = seal(Cancel(negotiation_id=bytes(16), submitter=prov.peer_id, provider=attacker.peer_id,
                                 seq=0, reason=CancelReason.USER, detail=""), akey).raw
            for _ in range(5):
                await send_one(attacker, prov, STATUS_PROTOCOL, cancel)
            monkeypatch.undo()
            assert not net.gone["prov"].is_set()
            honest = await agree(p2p, key, prov, signed_job(key))
            assert isinstance(honest, Agreement), honest.to_json()
        warned = peer_lines(caplog, attacker.peer_id, logging.WARNING)
        assert len(warned) == 1 and warned[0].exc_info is not None  # once per peer per minute, with traceback
        assert "unexpected Boom" in warned[0].getMessage()
        assert prov.negotiation.peer_log.suppressed_total >= 14


async def send_one(p2p: Any, node: Any, protocol: str, frame: bytes) -> None:
    """One request frame; wait for the answer or the reset."""
    from node.p2p import StreamClosed

    with trio.fail_after(10):
        stream = await p2p.open_stream(node.peer_id, protocol, node.p2p.listen_addrs)
        await stream.send_frame(frame)
        with pytest.raises(StreamClosed):
            await stream.receive_frame(1 << 20)


class BuggyPolicy(Policy):
    """A pricing bug on the provider: a negative price, which no Quote may carry."""

    def price_of(self, job: JobSpec) -> int:
        return -1


async def test_a_local_bug_is_not_blamed_on_the_peer(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cpn")
    async with network(tmp_path) as net:
        prov = await net.start("prov", prepare=container_proven)
        provider = prov.negotiation.provider
        good = provider.policy
        provider.policy = BuggyPolicy()
        async with bare_peer() as (p2p, key):
            s = await quote(p2p, key, prov, signed_job(key))
            assert s.refusal is None and s.quote is None and s.error is not None  # no refusal for our bug
            (bug,) = peer_lines(caplog, p2p.peer_id, logging.ERROR)
            assert "a bug on this node" in bug.getMessage() and bug.exc_info is not None
            assert "cannot build Quote" in str(bug.exc_info[1])
            assert not [r for r in caplog.records if "invalid_field" in r.getMessage() and r.levelno < logging.ERROR]
            assert prov.negotiation.gate.check(p2p.peer_id) is None  # the peer is not penalised
            assert prov.scheduler.queue_depth == 0  # its reservation was released
            provider.policy = good
            assert isinstance(await agree(p2p, key, prov, signed_job(key)), Agreement)
