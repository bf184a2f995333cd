"""Accept-and-vanish: a submitter agrees to a job that takes the provider's whole
CPU, with an image nobody holds, and goes offline.  The provider must not stay
locked for the ``transfer_s`` the submitter chose, nor again after a restart,
and its operator can end the agreement; an honest submitter gets its agreement
each time.  (issue 12, broken item 3)"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from support.adversary import agree, bare_peer, cpu_share, quote, signed_job, until_capacity
from support.net import container_proven, network, until

from node.api.client import ApiClient
from protocol.negotiation import Agreement, RefusalReason

pytestmark = pytest.mark.adversarial


def whole_cpu_free(node: object) -> bool:
    sched = node.scheduler  # type: ignore[attr-defined]
    return sched.free().cpu_millis == sched.resources.cpu_cores * 1000


async def test_phase_timeouts_above_policy_are_refused(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        prov = await net.start("prov", prepare=container_proven,
                               negotiation={"max_transfer_s": 600, "max_queue_s": 300})
        async with bare_peer() as (p2p, key):
            for field, ask in (("transfer_s", {"transfer_s": 604_800}), ("queue_s", {"queue_s": 604_800})):
                s = await quote(p2p, key, prov, signed_job(key, **ask))
                assert s.refusal is not None, s.to_json()
                assert s.refusal.reason is RefusalReason.POLICY_DENIED
                assert field in s.refusal.detail and "604800" in s.refusal.detail
            assert isinstance(await agree(p2p, key, prov, signed_job(key, transfer_s=600)), Agreement)


async def test_submitter_that_agrees_and_never_delivers_releases_the_provider(tmp_path: Path) -> None:
    """The attacker stays connected but serves nothing (a vanished one fails the same
    way, each fetch then waiting out a dial timeout)."""
    async with network(tmp_path) as net:
        prov = await net.start("prov", prepare=container_proven, negotiation={"max_fetch_failures": 3})
        whole = cpu_share(prov, 1)
        async with bare_peer() as (attacker, akey), bare_peer() as (p2p, key):
            agreement = await agree(attacker, akey, prov, signed_job(akey, cpu_millis=whole, transfer_s=3000,
                                                                     with_input=True))
            assert isinstance(agreement, Agreement)
            busy = await quote(p2p, key, prov, signed_job(key, cpu_millis=whole))
            assert busy.refusal is not None and busy.refusal.reason is RefusalReason.BUSY  # the lock exists
            with trio.fail_after(30):  # 3 failed fetches, not transfer_s = 3000 s
                await until_capacity(prov, lambda: whole_cpu_free(prov))
            (row,) = prov.agreements.get(agreement.terms.negotiation_id.hex(), "provider")
            assert row.state == "failed" and "3 failed attempt(s) in a row" in row.detail
            assert isinstance(await agree(p2p, key, prov, signed_job(key, cpu_millis=whole)), Agreement)


async def test_deadline_that_passed_while_down_does_not_lock_again(tmp_path: Path) -> None:
    async with network(tmp_path) as net:
        prov = await net.start("prov", prepare=container_proven, negotiation={"max_fetch_failures": 1000})
        whole = cpu_share(prov, 1)
        clock = net.clocks["prov"]
        async with bare_peer() as (p2p, key):
            agreement = await agree(p2p, key, prov, signed_job(key, cpu_millis=whole, transfer_s=30))
            assert isinstance(agreement, Agreement)
        await net.kill("prov")
        clock.offset += 60  # the provider was down past agreed_at + transfer_s
        prov = await net.start("prov", prepare=container_proven)
        assert whole_cpu_free(prov)  # decided while resuming, before negotiation served again
        (row,) = prov.agreements.get(agreement.terms.negotiation_id.hex(), "provider")
        assert row.state == "failed" and "deadline passed" in row.detail
        async with bare_peer() as (p2p, key):
            honest = await agree(p2p, key, prov, signed_job(key, cpu_millis=whole), clock=clock)
            assert isinstance(honest, Agreement), honest.to_json()


async def test_operator_cancels_an_agreement_and_the_submitter_is_told(tmp_path: Path) -> None:
    from node.negotiate.client import negotiate_best

    async with network(tmp_path) as net:
        prov = await net.start("prov", prepare=container_proven, negotiation={"max_fetch_failures": 1000})
        sub = await net.start("sub")  # a daemon that negotiates directly (no run authorises the fetch)
        whole = cpu_share(prov, 1)
        job = signed_job(sub.key, cpu_millis=whole, transfer_s=3000)
        with trio.fail_after(30):
            out = await negotiate_best(sub.p2p, sub.key, job, [(prov.peer_id, prov.p2p.listen_addrs, 0)],
                                       clock=sub.clock, store=sub.agreements)
        assert out.agreement is not None
        aid = out.agreement.terms.negotiation_id.hex()
        assert not whole_cpu_free(prov)
        api = ApiClient(socket_path=prov.config.api_socket)
        with trio.fail_after(60):
            answer = await trio.to_thread.run_sync(api.post, f"/v1/agreements/{aid[:12]}/cancel")
        assert answer["id"] == aid and answer["role"] == "provider"
        assert whole_cpu_free(prov)
        pj = prov.provider_jobs.jobs[aid]
        assert pj.result is not None and pj.result.message.outcome.value == "cancelled"
        assert "operator" in pj.result.message.detail
        with trio.fail_after(30):  # the signed cancel reached the submitter on the status stream
            await until(pj, lambda: sub.agreements.get(aid, "submitter")[0].state == "cancelled")
        with pytest.raises(Exception, match="nothing to cancel"):
            await trio.to_thread.run_sync(api.post, f"/v1/agreements/{aid}/cancel")
        async with bare_peer() as (p2p, key):
            assert isinstance(await agree(p2p, key, prov, signed_job(key, cpu_millis=whole)), Agreement)
