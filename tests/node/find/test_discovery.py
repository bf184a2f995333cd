"""Advertise and find across real daemons (several nodes in one trio process, loopback)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.api.routes.find import requirement_from_json
from node.api.server import ApiError
from node.config import load_config
from node.daemon import Node, run_node
from node.find import adverts
from node.find.adverts import DiscoveryService
from node.find.finder import Finder
from node.find.records import AdvertValidator, advert_key, fetch_advert
from node.keys import peer_id_of
from node.p2p import FramedStream, StreamClosed, open_host
from protocol import advert as advert_mod
from protocol import cbor
from protocol.advert import NO_CONTAINER, Advert, FreeCapacity, Price, Tombstone
from protocol.envelope import seal
from protocol.errors import ProtocolError
from protocol.identifiers import dht_key
from protocol.resources import GpuInfo, ResourceSet
from protocol.streams import ADVERT_PROTOCOL

LOOP = "/ip4/127.0.0.1/tcp/0"


def wall() -> int:
    return int(time.time())


@pytest.fixture(autouse=True)
def announce_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """First announcements without the 0-10 s start spread (a network started at
    once needs it; a test that waits for the announcements does not)."""
    monkeypatch.setattr(adverts, "START_SPREAD_S", 0.0)


@asynccontextmanager
async def running_nodes(
    tmp_path: Path, fakes: list[str], clocks: list[Callable[[], int]] | None = None
) -> AsyncIterator[list[Node]]:
    """Start one daemon per fake GPU spec ("" = no GPU), all bootstrapped from the first."""
    async with trio.open_nursery() as nursery:
        nodes: list[Node] = []
        for i, fake in enumerate(fakes):
            cfg = load_config(
                None,
                {
                    "node.data_dir": str(tmp_path / f"n{i}"),
                    "node.listen": [LOOP],
                    "node.bootstrap": nodes[0].p2p.listen_addrs[:1] if nodes else None,
                    "discovery.fake_gpus": fake,
                    "discovery.advert_lifetime_s": 300,
                },
            )
            clock = clocks[i] if clocks else wall
            with trio.fail_after(30):
                nodes.append(await nursery.start(partial(run_node, cfg, clock=clock)))
        with trio.fail_after(30):  # everyone's advert stored and identifiers announced once
            for node in nodes:
                await node.discovery.wait_announced()
        try:
            yield nodes
        finally:
            for node in reversed(nodes):
                node.stop()


def find_on(node: Node) -> Finder:
    """The finder a node's POST /v1/find uses (tests call it directly for typed results)."""
    return node.discovery.finder


async def find_ids(node: Node, ident: str, **req: Any) -> Any:
    with trio.fail_after(30):
        return await find_on(node).find(
            requirement_from_json(req), identifiers=[ident], within_s=10
        )


def sample_advert(
    key: Ed25519PrivateKey, *, now: int, lifetime: int = 300, peer: str | None = None, seq: int = 1
) -> Advert:
    res = ResourceSet(
        cpu_cores=4,
        cpu_model="test",
        memory_mib=8192,
        disk_mib=1000,
        gpus=(
            GpuInfo(
                vendor="nvidia",
                model="h100",
                name="NVIDIA H100 80GB HBM3",
                uuid="GPU-1",
                memory_mib=81559,
                compute_capability="9.0",
                mig=False,
            ),
        ),
    )
    return Advert(
        peer_id=peer or peer_id_of(key),
        addrs=("/ip4/127.0.0.1/tcp/1",),
        resources=res,
        metrics=(),
        free=FreeCapacity(gpu_uuids=("GPU-1",), cpu_millis=4000, memory_mib=8192, disk_mib=1000),
        price=Price(gpu_hour=1, cpu_core_hour=1, memory_gib_hour=1),
        container=NO_CONTAINER,
        compute_ids=("cpn:gpu", "cpn:gpu/nvidia", "cpn:gpu/nvidia/h100"),
        seq=seq,
        issued_at=now,
        expires_at=now + lifetime,
    )


# --------------------------------------------------------------------------- advertise + find


async def test_advertise_then_find_every_identifier_level(tmp_path: Path) -> None:
    async with running_nodes(tmp_path, ["h100:2", "a100-40g:1", "", "l4:4"]) as nodes:
        h100, a100, cpu_only, l4 = (n.peer_id for n in nodes)
        finder = nodes[2]
        expect = {
            "cpn:cpu": {h100, a100, cpu_only, l4},
            "cpn:gpu": {h100, a100, l4},
            "cpn:gpu/nvidia": {h100, a100, l4},
            "cpn:gpu/nvidia/h100": {h100},
            "cpn:gpu/nvidia/h100/80g": {h100},
            "cpn:gpu/nvidia/h100/x2": {h100},
            "cpn:gpu/nvidia/l4/x4": {l4},
            "cpn:gpu/nvidia/a100/40g": {a100},
            "cpn:gpu/amd": set(),
        }
        for ident, peers in expect.items():
            result = await find_ids(finder, ident)
            assert {o.advert.peer_id for o in result.offers} == peers, ident
            for offer in result.offers:
                assert ident in offer.advert.compute_ids
                assert offer.rtt_ms is not None


async def test_find_by_requirement_ranks_and_explains(tmp_path: Path) -> None:
    async with running_nodes(tmp_path, ["h100:2", "a100-40g:1", "l4:4"]) as nodes:
        finder = find_on(nodes[1])
        with trio.fail_after(30):
            two = await finder.find(requirement_from_json({"gpus": 2}), within_s=10)
        assert {o.advert.peer_id for o in two.offers} == {nodes[0].peer_id, nodes[2].peer_id}
        assert two.explanation.eliminated == {"gpu-count": 1}

        with trio.fail_after(30):
            none = await finder.find(
                requirement_from_json({"gpus": 1, "gpu_mem": "100GiB"}), within_s=10
            )
        assert none.offers == []
        assert none.explanation.candidates == 3
        assert none.explanation.eliminated == {"gpu-mem": 3}
        assert "gpu-mem eliminated 3" in none.explanation.summary()
        text = nodes[1].metrics.render()
        assert "cpn_find_total 2" in text
        assert 'cpn_find_candidates_total{status="ok"} 6' in text


async def test_cpn_id_lists_identifiers_with_cids(tmp_path: Path) -> None:
    async with running_nodes(tmp_path, ["h100:1"]) as (node,):
        ids = [i["id"] for i in node.discovery.advertised]
        assert "cpn:gpu/nvidia/h100" in ids and "cpn:cpu" in ids
        for item in node.discovery.advertised:
            assert item["cid"].startswith("bafkrei")


# --------------------------------------------------------------------------- validity


async def test_expired_advert_is_not_returned(tmp_path: Path) -> None:
    """A provider whose clock is 20 minutes slow issues adverts that are already expired."""
    slow = lambda: wall() - 1200  # noqa: E731
    async with running_nodes(
        tmp_path, ["h100:1", "h100:1", ""], clocks=[wall, slow, wall]
    ) as nodes:
        result = await find_ids(nodes[2], "cpn:gpu/nvidia/h100")
        assert [o.advert.peer_id for o in result.offers] == [nodes[0].peer_id]
        bad = {c.peer_id: c for c in result.candidates}[nodes[1].peer_id]
        assert (bad.status, bad.reason) == ("invalid", "expired")
        assert result.explanation.invalid == 1


def test_validator_rejects_expired_forged_and_wrong_signer() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    now = 1_800_000_000
    v = AdvertValidator(lambda: now)
    good = seal(sample_advert(key, now=now), key)
    v.validate(advert_key(peer_id_of(key)), good.raw)

    cases = {
        "expired": (seal(sample_advert(key, now=now - 400), key).raw, peer_id_of(key)),
        "wrong_signer": (
            seal(sample_advert(other, now=now, peer=peer_id_of(key)), other).raw,
            peer_id_of(key),
        ),
        "wrong_peer": (good.raw, peer_id_of(other)),  # right record under someone else's key
        "bad_signature": (good.raw[:-5] + bytes(5), peer_id_of(key)),
        "lifetime_too_long": (
            seal(sample_advert(key, now=now, lifetime=3600), key).raw,
            peer_id_of(key),
        ),
    }
    for reason, (raw, peer) in cases.items():
        with pytest.raises(ProtocolError) as err:
            v.validate(advert_key(peer), raw)
        assert err.value.reason in (reason, "malformed", "invalid_field"), reason
    with pytest.raises(ProtocolError):
        v.validate("/cpn-advert/not/a/peer", good.raw)
    # select: the higher seq wins, a tombstone beats an advert at equal seq
    newer = seal(sample_advert(key, now=now, seq=2), key)
    tomb = seal(Tombstone(peer_id=peer_id_of(key), seq=2, issued_at=now), key)
    assert v.select(advert_key(peer_id_of(key)), [good.raw, newer.raw]) == 1
    assert v.select(advert_key(peer_id_of(key)), [tomb.raw, newer.raw]) == 0


def test_validator_verifies_a_stored_value_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder validates a PUT_VALUE, then ``select``s it against the value it
    holds: each record is decoded and its signature checked once, not at each
    call; the time-bound rules still apply to a remembered one."""
    key = Ed25519PrivateKey.generate()
    now = 1_800_000_000
    clock = [now]
    v = AdvertValidator(lambda: clock[0])
    opened: list[bytes] = []
    real = advert_mod.open_envelope

    def counting(raw: bytes, **kw: Any) -> Any:
        opened.append(raw)
        return real(raw, **kw)

    monkeypatch.setattr(advert_mod, "open_envelope", counting)
    k = advert_key(peer_id_of(key))
    old, new = (seal(sample_advert(key, now=now, seq=s), key).raw for s in (1, 2))
    v.validate(k, old)
    v.validate(k, new)
    assert v.select(k, [new, old]) == 0
    assert v.select(k, [old, new]) == 1
    assert sorted(opened) == sorted([old, new])
    clock[0] = now + 601  # past the lifetime: remembered, and still expired
    with pytest.raises(ProtocolError) as err:
        v.validate(k, new)
    assert err.value.reason == "expired"
    assert len(opened) == 2


async def test_forged_and_wrong_signer_adverts_rejected_on_store(tmp_path: Path) -> None:
    from libp2p.peer.id import ID

    async with running_nodes(tmp_path, ["", ""]) as (a, b):
        mallory = Ed25519PrivateKey.generate()
        async with open_host(mallory, [LOOP], bootstrap=a.p2p.listen_addrs[:1]) as m:
            victim = peer_id_of(Ed25519PrivateKey.generate())
            forged = seal(sample_advert(mallory, now=wall(), peer=victim), mallory).raw
            expired = seal(sample_advert(mallory, now=wall() - 1000), mallory).raw
            for key, raw in ((advert_key(victim), forged), (advert_key(m.peer_id), expired)):
                with trio.fail_after(10):
                    await m._dht.value_store._store_at_peer(
                        ID.from_base58(a.peer_id), key.encode(), raw
                    )
                assert a.p2p._dht.value_store.get(key.encode()) is None
            assert a.p2p.stats.rejected_records.get("wrong_signer") == 1
            assert a.p2p.stats.rejected_records.get("expired") == 1
        # a valid record from a real node was stored (its own advert) and verifies
        assert a.p2p._dht.value_store.get(advert_key(b.peer_id).encode()) is not None


async def test_forged_advert_rejected_on_fetch(tmp_path: Path) -> None:
    """A provider announcing an identifier but serving someone else's advert is invalid."""
    async with running_nodes(tmp_path, ["h100:1", ""]) as (good, finder_node):
        mallory = Ed25519PrivateKey.generate()
        async with open_host(mallory, [LOOP], bootstrap=good.p2p.listen_addrs[:1]) as m:
            other = Ed25519PrivateKey.generate()
            # signed by `other` but naming mallory: a wrong-signer record
            raw = seal(sample_advert(other, now=wall(), peer=m.peer_id), other).raw

            async def serve(stream: FramedStream) -> None:
                await stream.receive_frame(64)
                await stream.send_frame(cbor.encode({"record": raw}))
                await stream.close()

            m.set_stream_handler(ADVERT_PROTOCOL, serve)
            with trio.fail_after(10):
                await m.provide(dht_key("cpn:gpu/nvidia/h100"))
            result = await find_ids(finder_node, "cpn:gpu/nvidia/h100")
            assert [o.advert.peer_id for o in result.offers] == [good.peer_id]
            cand = {c.peer_id: c for c in result.candidates}[m.peer_id]
            assert (cand.status, cand.reason) == ("invalid", "wrong_signer")
            assert result.explanation.invalid == 1
            with trio.fail_after(10), pytest.raises(ProtocolError):
                await fetch_advert(finder_node.p2p, m.peer_id, [], wall())


# --------------------------------------------------------------------------- lifecycle


async def test_stopped_node_disappears(tmp_path: Path) -> None:
    async with running_nodes(tmp_path, ["h100:1", "h100:1", ""]) as nodes:
        before = await find_ids(nodes[2], "cpn:gpu/nvidia/h100")
        assert len(before.offers) == 2
        nodes[1].stop()
        with trio.fail_after(10):
            await nodes[1].stopped.wait()  # tombstone published, host closed
        after = await find_ids(nodes[2], "cpn:gpu/nvidia/h100")
        assert [o.advert.peer_id for o in after.offers] == [nodes[0].peer_id]
        gone = {c.peer_id: c for c in after.candidates}[nodes[1].peer_id]
        assert gone.status == "withdrawn"
        # withdrawn providers are neither candidates nor "unreachable"
        assert after.explanation.unreachable == 0
        assert after.explanation.candidates == 1


async def test_garbage_peer_gets_error_and_node_keeps_serving(tmp_path: Path) -> None:
    async with running_nodes(tmp_path, ["h100:1", ""]) as (provider, client):
        p = client.p2p
        with trio.fail_after(10):
            s = await p.open_stream(provider.peer_id, ADVERT_PROTOCOL)
            await s.send_frame(b"\xff garbage request")
            answer = cbor.decode(await s.receive_frame(1024))
            assert answer == {"error": "bad_request"}
            with pytest.raises(StreamClosed):
                await s.receive_frame(1024)
            s = await p.open_stream(provider.peer_id, ADVERT_PROTOCOL)
            await s._stream.write(b"\xff\xff\xff\xff\x0f")  # a 4 GiB frame header
            with pytest.raises(StreamClosed):
                await s.receive_frame(1024)
            k = await p.open_stream(provider.peer_id, "/ipfs/kad/1.0.0")
            await k.send_frame(b"\x08\x99\x99 not protobuf")
            with pytest.raises(StreamClosed):
                await k.receive_frame(1 << 20)
            signed, rtt = await fetch_advert(p, provider.peer_id, [], wall())
        assert isinstance(signed.message, Advert) and rtt >= 0
        result = await find_ids(client, "cpn:gpu/nvidia/h100")
        assert [o.advert.peer_id for o in result.offers] == [provider.peer_id]


async def test_advert_seq_increases_across_restarts(tmp_path: Path) -> None:
    seqs = []
    for _ in range(2):
        async with running_nodes(tmp_path, [""]) as (node,):
            seqs.append(node.discovery.advertised and _current_seq(node))
    assert seqs[1] > seqs[0]


def _current_seq(node: Node) -> int:
    return int((node.data_dir / "advert.seq").read_text())


def test_requirement_parsing() -> None:
    req = requirement_from_json(
        {
            "gpus": 2,
            "gpu_mem": "40GiB",
            "gpu_model": ["h100"],
            "cc": "9.0",
            "cpus": 8,
            "mem": "16GiB",
        }
    )
    assert req.gpu is not None and req.gpu.count == 2 and req.gpu.min_memory_mib == 40 * 1024
    assert req.gpu.models == ("h100",) and req.cpu_millis == 8000 and req.memory_mib == 16384
    with pytest.raises(ApiError, match="gpu_mem"):
        requirement_from_json({"gpu_mem": "lots"})
    with pytest.raises(ApiError, match="unknown"):
        requirement_from_json({"gpuz": 1})


# --------------------------------------------------------------------------- live capacity


def advertiser(node: Node) -> DiscoveryService:
    return node.discovery


async def test_advert_free_capacity_follows_the_scheduler(tmp_path: Path) -> None:
    """A reservation takes a GPU out of the advert at once; a release puts it back."""
    async with running_nodes(tmp_path, ["h100:2", ""]) as (provider, asker):
        svc, sched = advertiser(provider), provider.scheduler
        two = requirement_from_json({"gpus": 2, "gpu_model": ["h100"]})
        one = requirement_from_json({"gpus": 1, "gpu_model": ["h100"]})
        before = await find_on(asker).find(two, within_s=10)
        assert [o.advert.peer_id for o in before.offers] == [provider.peer_id]

        n = svc.publications
        alloc = sched.reserve("job-1", one, seconds=600)
        with trio.fail_after(10):
            await svc.wait_publications(n + 1)
        assert isinstance(svc.current.message, Advert)
        free = svc.current.message.free.gpu_uuids
        assert len(free) == 1 and alloc.gpu_uuids[0] not in free
        busy = await find_on(asker).find(two, within_s=10)
        assert busy.offers == [] and busy.explanation.eliminated == {"gpu-free": 1}
        single = await find_on(asker).find(one, within_s=10)
        assert [o.fit.gpu_uuids for o in single.offers] == [free]

        sched.release("job-1")
        with trio.fail_after(10):
            await svc.wait_publications(n + 2)
        after = await find_on(asker).find(two, within_s=10)
        assert [o.advert.peer_id for o in after.offers] == [provider.peer_id]
        assert svc.current.message.seq > before.offers[0].advert.seq


async def test_refresh_reprobes_and_keeps_identifiers(tmp_path: Path) -> None:
    async with running_nodes(tmp_path, ["l4:4"]) as (node,):
        svc = advertiser(node)
        assert isinstance(svc.current.message, Advert)
        seq, ids = svc.current.message.seq, list(svc.ids)
        node.scheduler.resources = None  # a re-probe must restore it
        with trio.fail_after(10):
            await svc.republish(reprobe=True)
        adv = svc.current.message
        assert isinstance(adv, Advert) and adv.seq > seq
        res = node.scheduler.resources
        assert res is not None and len(res.gpus) == 4
        assert list(adv.compute_ids) == ids and res == svc.resources


async def test_held_records_are_verified_at_the_time_of_use(tmp_path: Path) -> None:
    """The finder's shortcut (spec/dht.md §4.1) never uses an expired, forged or
    superseded record: the same checks as a fetched one, at ``now``."""
    async with running_nodes(tmp_path, [""]) as (node,):
        finder, now = find_on(node), wall()
        key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
        peer = peer_id_of(key)
        expired = seal(sample_advert(key, now=now - 400), key).raw
        forged = seal(sample_advert(other, now=now, peer=peer), other).raw
        good = seal(sample_advert(key, now=now, seq=5), key)
        tomb = seal(Tombstone(peer_id=peer, seq=5, issued_at=now), key).raw
        for raw in (expired, forged):
            finder.cache[peer] = (raw, now)
            assert finder._cached(peer, now) is None
        finder.cache[peer] = (good.raw, now)
        held = finder._cached(peer, now)
        assert held is not None and held.message == good.message
        assert finder._cached(peer, now + 60) is None  # fetched too long ago to trust
        node.p2p._dht.value_store.put(advert_key(peer).encode(), tomb)
        held = finder._cached(peer, now)  # the stored tombstone outranks the advert
        assert held is not None and isinstance(held.message, Tombstone)
