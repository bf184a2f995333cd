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

    py-libp2p logs a WARNING for every clean remote close of a DHT stream
    ("Failed to read DHT message from stream"), and WARNING or ERROR for
    expected NAT-traversal failures; those become DEBUG.
    """

    _NOISY = (
        "Failed to read DHT message",
        "Incomplete DHT message",
        "Error sending ADD_PROVIDER",
        # our /cpn-advert/<peer> keys are > 50 bytes; py-libp2p refuses them in FIND_NODE
        "FIND_NODE key is not a valid PeerId",
        # NAT traversal (node/p2p/nat.py): expected failures, logged by us at INFO where useful
        "Failed to establish direct connection with",  # DCUtR: a hole punch that cannot work
        "Timeout in DCUtR protocol",
        "Error in DCUtR protocol",
        "Maximum hole punch attempts",
        "No direct addresses found for peer",
        "No addresses to try for hole punch",
        "Cannot assign requested address",  # DCUtR dials from our busy listen port
        "Error pushing identify to peer",  # a peer that left while we pushed
        "are unusable (relay-only",  # kad: a relayed-only peer it cannot dial itself
        "Unexpected error reading from stream",  # relay: every clean yamux close
        "Error relaying data",
        "Error reading from hop stream",
        "Reservation failed with relay",
        "Error handling AutoNAT stream",
    )

    def emit(self, record: logging.LogRecord) -> None:
        target = logging.getLogger("cpn.libp2p." + record.name.removeprefix("libp2p."))
        if logging.WARNING <= record.levelno <= logging.ERROR and any(
            n in record.getMessage() for n in self._NOISY
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
