"""A peer's raw bytes in multistream-select never end the node.

py-libp2p decodes each negotiation message as UTF-8 without catching the
error, in the connection's nursery: one stream whose protocol proposal is not
UTF-8 (on purpose, or a kad request pipelined behind a proposal the node
refused, as happened in the NAT testbed) stopped the whole daemon.
node/p2p/guards.py makes it that stream's error.  (issue 12: "every server
entry point survives whatever a request can raise")
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import trio
from libp2p.peer.id import ID
from libp2p.utils.varint import encode_delim
from support.adversary import bare_peer
from support.net import network

from node.find.records import fetch_advert
from node.p2p import PeerUnreachable, StreamClosed

pytestmark = pytest.mark.adversarial

HANDSHAKE = encode_delim(b"/multistream/1.0.0")


@pytest.mark.parametrize("proposal", [
    b"\xc0\xc0 not utf-8",  # what killed the daemon
    b"/no/such/protocol",  # "na", then ...
])
async def test_bytes_that_are_no_protocol_name_reset_one_stream_only(tmp_path: Path, proposal: bytes) -> None:
    async with network(tmp_path) as net:
        node = await net.start("n0")
        async with bare_peer() as (attacker, _):
            await attacker.connect_multiaddr(node.p2p.listen_addrs[0])
            for _ in range(3):
                stream = await attacker._host.get_network().new_stream(ID.from_base58(node.peer_id))
                # a proposal, then a kad request's protobuf bytes as the next "proposal"
                await stream.write(HANDSHAKE + encode_delim(proposal) + encode_delim(b"\x08\x04\x12\x20\xc0\xff"))
                with trio.fail_after(10):
                    try:
                        while await stream.read(1024):
                            pass  # its "/multistream/1.0.0" and "na" answers, then the reset
                    except Exception:  # noqa: BLE001 - a reset reads as an error here
                        pass
            # The node still serves this peer and everyone else.
            with trio.fail_after(10):
                record, _ = await fetch_advert(attacker, node.peer_id, node.p2p.listen_addrs, int(time.time()))
            assert record.message.peer_id == node.peer_id
            other = await net.start("n1")
            try:
                await fetch_advert(other.p2p, node.peer_id, node.p2p.listen_addrs, int(time.time()))
            except (PeerUnreachable, StreamClosed) as exc:  # pragma: no cover - the failure we guard against
                pytest.fail(f"the node stopped serving: {exc}")
