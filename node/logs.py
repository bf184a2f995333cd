"""Logging for the daemon and CLI: one handler on the ``cpn`` logger.

py-libp2p's records are forwarded into ``cpn.libp2p`` by :mod:`node.p2p`, so
this one handler (and its level) covers everything the daemon prints.
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
    # py-libp2p's level follows ours (see node.p2p.route_libp2p_logs).
    logging.getLogger("libp2p").setLevel(
        logging.DEBUG if root.isEnabledFor(logging.DEBUG) else logging.WARNING
    )
