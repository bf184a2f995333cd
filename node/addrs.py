"""Multiaddr strings: parsed once, here (py-multiaddr), never split by hand.

A peer is named on the command line, in configs and in adverts either by its
peer ID alone or by a multiaddr ending in ``/p2p/<peer id>``; a relayed
address (``.../p2p/<relay>/p2p-circuit/p2p/<peer>``) names the peer in its
*last* ``/p2p/`` component.  These helpers keep that rule in one place.
"""

from __future__ import annotations

import multiaddr

from protocol.errors import ProtocolError
from protocol.identity import validate_peer_id

__all__ = ["AddrError", "split_peer", "peer_and_addrs", "with_peer", "parse"]


class AddrError(ValueError):
    """Not a usable multiaddr (the message says why)."""


def parse(addr: str) -> multiaddr.Multiaddr:
    """``addr`` as a Multiaddr (:class:`AddrError` if it is not one)."""
    try:
        return multiaddr.Multiaddr(addr)
    except Exception as exc:  # noqa: BLE001 - py-multiaddr raises several unrelated types
        raise AddrError(f"{addr!r} is not a multiaddr: {exc}") from None


def split_peer(addr: str) -> tuple[str, str | None]:
    """``(transport part, peer ID)`` of ``addr``; the peer ID is None when the
    address names no peer.  The transport part keeps a relay's own ``/p2p/``."""
    ma = parse(addr)
    items = list(ma.items())
    if not items or items[-1][0].name != "p2p":
        return str(ma), None
    peer = str(items[-1][1])
    transport = str(ma.decapsulate(f"/p2p/{peer}")) if len(items) > 1 else ""
    return transport, peer


def peer_and_addrs(text: str) -> tuple[str, list[str]]:
    """A peer named by its ID or by a ``.../p2p/<id>`` multiaddr -> ``(peer ID, addrs)``."""
    if not text.startswith("/"):
        try:
            return validate_peer_id(text), []
        except ProtocolError as exc:
            raise AddrError(f"{text!r}: {exc.detail}") from None
    transport, peer = split_peer(text)
    if peer is None:
        raise AddrError(f"{text!r} does not end in /p2p/<peer id>")
    return peer, [transport] if transport else []


def with_peer(addr: str, peer_id: str) -> str:
    """``addr`` ending in ``/p2p/<peer_id>`` (unchanged if it already names that peer)."""
    transport, peer = split_peer(addr)
    if peer == peer_id:
        return addr
    return f"{transport}/p2p/{peer_id}"
