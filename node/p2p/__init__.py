"""The one adapter between CPN and py-libp2p: the only package that imports libp2p.

Its modules: :mod:`~node.p2p.host` (the host, dialing, streams, the DHT calls
the node makes), :mod:`~node.p2p.streams` (:class:`FramedStream`),
:mod:`~node.p2p.dht` (our record validators, the kad server's provider
store and stream cap, our own kad RPCs), :mod:`~node.p2p.routing` (the
sans-IO lookup and provide of :mod:`protocol.kademlia` driven over those
RPCs), :mod:`~node.p2p.keys` (the identity key as a libp2p key pair), and
NAT traversal: :mod:`~node.p2p.nat` (reachability, announced addresses),
:mod:`~node.p2p.autonat` (AutoNAT with a real dial-back),
:mod:`~node.p2p.relay` (circuit relay v2 service and client calls),
:mod:`~node.p2p.keeper` (a private node's relay slots), :mod:`~node.p2p.paths`
(DCUtR hole punching, the path of each connection); and how it talks:
:mod:`~node.p2p.lazy` (one request, one answer, one round trip) and
:mod:`~node.p2p.tuning` (yamux frames: window updates, RTT pings, SYN and
ACK on the next frame).
The rest of the node imports from ``node.p2p`` only.

Everything py-libp2p-specific is handled here once, so the rest of the node
sees a small, typed surface (peer IDs are ``str``, addresses are ``str``
multiaddrs, streams are :class:`FramedStream`):

* **Noise only.**  py-libp2p offers ``/noise``, ``/tls``, ``/secio`` and
  ``/plaintext`` by default; with plaintext a peer could claim a peer ID whose
  key it does not hold.  We configure Noise as the sole security transport.
* **yamux**, and ``max_connections_per_peer=1`` (the default config waits on a
  ~250 ms happy-eyeballs timer for every dial).
* **kad-dht** in server mode on the standard ``/ipfs/kad/1.0.0`` protocol with
  ``strict_validation=True`` and our own namespace validators, so a stock
  libp2p (e.g. js-libp2p) can find our providers while nobody can store
  arbitrary values through us.
* **Reachability.**  AutoNAT (fixed dial-back), identify's observed
  addresses, circuit relay v2 and DCUtR (:mod:`~node.p2p.nat`): peers only
  ever learn addresses they can use; a private node is reached through
  relays and, where the NATs allow, hole punching.
* **Framing.**  A remote ``reset()`` reads as ``StreamEOF`` in py-libp2p, the
  same as a clean close, so every message is length-prefixed
  (:class:`FramedStream`) and a truncated frame is an error, not a message.
* **Logs.**  The ``libp2p`` logger does not propagate; we forward it into
  ``cpn.libp2p`` and demote its noisy per-close warnings to DEBUG.

Callers put a ``trio.fail_after`` around every network call (no keepalive: a
frozen peer otherwise hangs a stream for minutes).
"""

from node.p2p.dht import LookupResult, ProvideReport, RecordValidator
from node.p2p.host import DIAL_TIMEOUT, P2PHost, open_host
from node.p2p.keys import from_libp2p_keypair, to_libp2p_keypair
from node.p2p.routing import EarlyStop
from node.p2p.streams import FramedStream, PeerUnreachable, StreamClosed, StreamHandler

__all__ = [
    "StreamClosed",
    "PeerUnreachable",
    "FramedStream",
    "StreamHandler",
    "P2PHost",
    "RecordValidator",
    "LookupResult",
    "ProvideReport",
    "EarlyStop",
    "open_host",
    "DIAL_TIMEOUT",
    "to_libp2p_keypair",
    "from_libp2p_keypair",
]
