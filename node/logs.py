"""Logging for the daemon and CLI: one handler on the ``cpn`` logger.

py-libp2p's records are forwarded into ``cpn.libp2p`` (:func:`route_library_logs`,
installed by :mod:`node.p2p`), so this one handler (and its level) covers
everything the daemon prints.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str = "info", stream: object = None) -> None:
    """Send ``cpn.*`` records at ``level`` or above to stderr (idempotent)."""
    root = logging.getLogger("cpn")
    root.setLevel(getattr(logging, level.upper()))
    root.propagate = False
    for h in list(root.handlers):
        if getattr(h, "_cpn", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter(FORMAT))
    handler._cpn = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    # py-libp2p's level follows ours (see route_library_logs).
    logging.getLogger("libp2p").setLevel(
        logging.DEBUG if root.isEnabledFor(logging.DEBUG) else logging.WARNING
    )



class _ForwardHandler(logging.Handler):
    """Re-emit libp2p records under ``cpn.libp2p`` so our handlers and levels apply.

    Records about failures the node handles itself are demoted to DEBUG: a
    remote peer closing or resetting a kad stream (py-libp2p logs a WARNING
    for every clean close), a stream that could not be opened (its
    ``new_stream`` logs an ERROR of seven lines before raising, and every
    caller handles the error: kad queries count it as a failure, finds as an
    unreachable candidate), a best-effort store that missed one peer, the
    auto-connector's progress every 10 s, and expected NAT-traversal failures
    (a hole punch that cannot work, a relay slot refused).
    """

    #: (logger below ``libp2p.``, text in the message): demoted to DEBUG
    _NOISY = (
        ("kad_dht.kad_dht", "Failed to read DHT message"),  # the client closed or reset
        ("kad_dht.kad_dht", "Incomplete DHT message"),
        ("kad_dht.kad_dht", "Failed to parse protobuf message"),  # the client left before our answer
        # our /cpn-advert/<peer> keys are > 50 bytes; py-libp2p refuses them in FIND_NODE
        ("kad_dht.kad_dht", "FIND_NODE key is not a valid PeerId"),
        ("kad_dht.provider_store", "Error sending ADD_PROVIDER"),
        ("kad_dht.provider_store", "Failed to send ADD_PROVIDER"),
        ("kad_dht.value_store", "Failed to store value at peer"),
        ("kad_dht.peer_routing", "Failed to open stream to"),
        ("host.basic_host", "Failed to open stream to peer"),
        ("protocol_muxer.multiselect_client", "MultiselectClient handshake"),
        ("network.auto_connector", ""),
        ("transport.tcp.tcp", "Failed to open TCP stream"),  # a dial refused: the caller decides
        # NAT traversal (node/p2p/nat.py): expected failures, logged by us at INFO where
        # useful; "" = from any libp2p logger
        ("", "Failed to establish direct connection with"),  # DCUtR: a hole punch that cannot work
        ("", "Timeout in DCUtR protocol"),
        ("", "Error in DCUtR protocol"),
        ("", "Maximum hole punch attempts"),
        ("", "No direct addresses found for peer"),
        ("", "No addresses to try for hole punch"),
        ("", "Cannot assign requested address"),  # DCUtR dials from our busy listen port
        ("", "Error pushing identify to peer"),  # a peer that left while we pushed
        ("", "are unusable (relay-only"),  # kad: a relayed-only peer it cannot dial itself
        ("", "Unexpected error reading from stream"),  # relay: every clean yamux close
        ("", "Error relaying data"),
        ("", "Error reading from hop stream"),
        ("", "Reservation failed with relay"),
        ("", "Error handling AutoNAT stream"),
    )

    def emit(self, record: logging.LogRecord) -> None:
        sub = record.name.removeprefix("libp2p.")
        target = logging.getLogger("cpn.libp2p." + sub)
        if record.levelno > logging.DEBUG and any(
            (not name or sub == name) and text in record.getMessage() for name, text in self._NOISY
        ):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.name = target.name
        if target.isEnabledFor(record.levelno):
            target.handle(record)


def route_library_logs() -> None:
    """Install the forwarding handler on the ``libp2p`` logger (idempotent)."""
    lib = logging.getLogger("libp2p")
    lib.propagate = False
    if not any(isinstance(h, _ForwardHandler) for h in lib.handlers):
        lib.addHandler(_ForwardHandler())
    lib.setLevel(
        logging.DEBUG if logging.getLogger("cpn").isEnabledFor(logging.DEBUG) else logging.WARNING
    )
