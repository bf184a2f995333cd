"""Announcing in the background: ready means ready (spec/dht.md §6.4).

Real daemons in one trio process on 127.0.0.1; a peer that never answers kad
requests is a real host whose kad handler was swapped.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.custom_types import TProtocol

from node.api.routes.find import requirement_from_json
from node.config import load_config
from node.daemon import Node, run_node
from node.find import adverts
from node.p2p import open_host
from node.p2p.dht import KAD_PROTOCOL

LOOP = "/ip4/127.0.0.1/tcp/0"


def config(tmp_path: Path, name: str, bootstrap: list[str], fake: str = "") -> Any:
    return load_config(
        None,
        {
            "node.data_dir": str(tmp_path / name),
            "node.listen": [LOOP],
            "node.bootstrap": bootstrap or None,
            "discovery.fake_gpus": fake,
        },
    )


async def test_ready_comes_before_the_first_announcement_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The only peer never answers kad requests, so every announcement takes at
    least the 2 s query timeout; the node is started (its ready line printed) first."""
    monkeypatch.setattr(adverts, "START_SPREAD_S", 0.0)

    async def silent(stream: Any) -> None:
        await stream.read()
        await trio.sleep_forever()

    async with open_host(Ed25519PrivateKey.generate(), [LOOP]) as mute:
        mute._host.set_stream_handler(TProtocol(KAD_PROTOCOL), silent)
        async with trio.open_nursery() as nursery:
            cfg = config(tmp_path, "n0", mute.listen_addrs[:1], "h100:1")
            with trio.fail_after(30):
                node: Node = await nursery.start(partial(run_node, cfg))
            svc = node.discovery
            assert svc.ids and svc.current is not None  # the advert is served already
            assert svc.announce_counts == {"confirmed": 0, "unconfirmed": 0, "skipped": 0}
            with trio.fail_after(30):
                await svc.wait_announced()
            # nobody took a record: each identifier is announced again soon, not given up
            assert svc.announce_counts["unconfirmed"] >= len(svc.ids)
            assert svc.announce_counts["confirmed"] == 0
            node.stop()


async def test_a_provider_is_findable_before_it_announces(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own provider records are held from the start, so a finder whose
    lookup asks it learns of it even before its first announcement."""
    monkeypatch.setattr(adverts, "START_SPREAD_S", 3600.0)  # no announcement during the test
    async with trio.open_nursery() as nursery:
        with trio.fail_after(30):
            finder: Node = await nursery.start(partial(run_node, config(tmp_path, "f", [])))
            provider: Node = await nursery.start(
                partial(run_node, config(tmp_path, "p", finder.p2p.listen_addrs[:1], "h100:2"))
            )
        assert provider.discovery.announce_counts["confirmed"] == 0
        req = requirement_from_json({"gpus": 2, "gpu_model": ["h100"]})
        with trio.fail_after(30):
            result = await finder.discovery.finder.find(req, within_s=10)
        assert [o.advert.peer_id for o in result.offers] == [provider.peer_id]
        assert provider.discovery.announce_counts["confirmed"] == 0
        for n in (provider, finder):
            n.stop()
