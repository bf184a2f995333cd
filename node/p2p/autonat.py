"""AutoNAT v1 with a dial-back that proves something.

py-libp2p 0.8.1's server "dials back" with ``host.connect``, which returns at
once because the requester is already connected (it opened the AutoNAT
stream): every requester whose address matches its observed IP is declared
reachable, a firewalled host included.  :class:`DialBackAutoNAT` dials back
on a *new* connection (``swarm.dial_addr`` never reuses one) and closes it;
the observed-IP rule of the stock server (only addresses whose IP is the
requester's are dialled, nothing over relayed connections) stays.

Bounds (a request makes us dial): one request per peer at a time, at most
:data:`MAX_CONCURRENT` in all, each within :data:`SERVE_TIMEOUT`, at most
:data:`MAX_DIALS` addresses dialled per request.

Both ends *protect* the peer while a check runs: a second connection to a
peer makes py-libp2p (``max_connections_per_peer=1``) close the older one,
which carries the AutoNAT stream itself.
"""

from __future__ import annotations

import logging
from typing import Any

import multiaddr
import trio
from libp2p.abc import IHost, INetStream
from libp2p.exceptions import BaseLibp2pError
from libp2p.host.autonat.autonat import AUTONAT_PROTOCOL_ID, AutoNATService
from libp2p.host.autonat.pb.autonat_pb2 import Message
from libp2p.peer.id import ID

from node.reach import DialBack

log = logging.getLogger("cpn.p2p.autonat")

__all__ = ["DialBackAutoNAT", "AUTONAT_PROTOCOL", "DIALBACK_TIMEOUT"]

AUTONAT_PROTOCOL = str(AUTONAT_PROTOCOL_ID)
DIALBACK_TIMEOUT = 5.0  #: one dial-back (TCP + Noise + yamux), as node.p2p.DIAL_TIMEOUT
MAX_DIALS = 4  #: addresses dialled back per request
SERVE_TIMEOUT = DIALBACK_TIMEOUT * MAX_DIALS + 5.0
QUERY_TIMEOUT = SERVE_TIMEOUT + 2.0  #: the client waits for the server's whole answer
MAX_CONCURRENT = 8  #: dial-back requests served at once

_NO = (int(Message.E_DIAL_ERROR), int(Message.E_DIAL_REFUSED))
_TAG_SERVE, _TAG_ASK = "cpn-autonat-serve", "cpn-autonat-ask"


class DialBackAutoNAT(AutoNATService):
    """AutoNAT v1 client and server; the server dials back on a fresh connection."""

    def __init__(self, host: IHost) -> None:
        super().__init__(host, serve=False)  # type: ignore[arg-type]  # any IHost works
        self._serving: set[str] = set()
        self._limiter = trio.CapacityLimiter(MAX_CONCURRENT)
        host.set_stream_handler(AUTONAT_PROTOCOL_ID, self._serve)

    async def _serve(self, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        if peer in self._serving or self._limiter.available_tokens == 0:
            await _reset(stream)
            return
        self._serving.add(peer)
        try:
            async with self._limiter:
                with trio.move_on_after(SERVE_TIMEOUT) as scope:
                    await self.handle_stream(stream)
            if scope.cancelled_caught:
                await _reset(stream)
        finally:
            self._serving.discard(peer)

    async def _try_dial(self, peer_id: ID, addrs: list[bytes]) -> bytes | None:
        network = self.host.get_network()
        network.protect(peer_id, _TAG_SERVE)
        try:
            for raw in addrs[:MAX_DIALS]:
                try:
                    with trio.fail_after(DIALBACK_TIMEOUT):
                        conn = await network.dial_addr(multiaddr.Multiaddr(raw), peer_id)
                except (BaseLibp2pError, OSError, ValueError, trio.TooSlowError) as exc:
                    log.debug("dial-back to %s failed: %r", peer_id, exc)
                    continue
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await conn.close()
                    except (BaseLibp2pError, OSError):
                        pass
                return bytes(raw)
            return None
        finally:
            network.unprotect(peer_id, _TAG_SERVE)

    async def ask(self, server: str, addrs: list[str]) -> DialBack:
        """Ask ``server`` to dial us back at ``addrs``; its answer (None: no answer)."""
        sid = ID.from_base58(server)
        network = self.host.get_network()
        network.protect(sid, _TAG_ASK)
        try:
            raw = [multiaddr.Multiaddr(a).to_bytes() for a in addrs]
            with trio.fail_after(QUERY_TIMEOUT):
                status, addr = await self.query_server(sid, raw, timeout=QUERY_TIMEOUT)
        except (BaseLibp2pError, OSError, ValueError, trio.TooSlowError) as exc:
            log.debug("AutoNAT query to %s failed: %r", server, exc)
            return DialBack(server, None)
        finally:
            network.unprotect(sid, _TAG_ASK)
            self.dial_results.pop(sid, None)  # we keep verdicts ourselves
        if status == int(Message.OK):
            return DialBack(server, True, _addr_str(addr))
        return DialBack(server, False if status in _NO else None)


def _addr_str(raw: bytes | None) -> str | None:
    if not raw:
        return None
    try:
        return str(multiaddr.Multiaddr(raw))
    except Exception:  # noqa: BLE001 - py-multiaddr raises several unrelated types
        return None


async def _reset(stream: Any) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.reset()
        except (BaseLibp2pError, OSError):
            pass
