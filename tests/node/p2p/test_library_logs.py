"""py-libp2p's log records, forwarded under ``cpn.libp2p``: failures the node
handles itself are demoted to DEBUG, everything else keeps its level."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from node.logs import route_library_logs


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[Keep]:
    cpn, lib = logging.getLogger("cpn"), logging.getLogger("libp2p")
    levels = cpn.level, lib.level
    keep = Keep()
    cpn.addHandler(keep)
    cpn.setLevel(logging.DEBUG)
    route_library_logs()
    lib.setLevel(logging.DEBUG)
    try:
        yield keep
    finally:
        cpn.removeHandler(keep)
        cpn.setLevel(levels[0])
        lib.setLevel(levels[1])


@pytest.mark.parametrize(
    ("logger", "level", "message"),
    [
        ("kad_dht.kad_dht", logging.WARNING, "Failed to read DHT message from stream: "),
        ("kad_dht.kad_dht", logging.WARNING, "Failed to parse protobuf message: "),
        ("kad_dht.value_store", logging.WARNING, "Failed to store value at peer 12D3: "),
        ("host.basic_host", logging.ERROR, "Failed to open stream to peer 12D3:\n  Error: ..."),
        ("protocol_muxer.multiselect_client", logging.ERROR, "MultiselectClient handshake: x"),
        ("network.auto_connector", logging.INFO, "Connections (20) below target (200)"),
    ],
)
def test_handled_failures_become_debug(kept: Keep, logger: str, level: int, message: str) -> None:
    logging.getLogger("libp2p." + logger).log(level, message)
    (rec,) = kept.records
    assert (rec.name, rec.levelno) == ("cpn.libp2p." + logger, logging.DEBUG)


def test_other_records_keep_their_level(kept: Keep) -> None:
    logging.getLogger("libp2p.kad_dht.kad_dht").error("Received an invalid-signed-record")
    logging.getLogger("libp2p.host.basic_host").warning("Failed to read DHT message")  # other logger
    assert [(r.name, r.levelno) for r in kept.records] == [
        ("cpn.libp2p.kad_dht.kad_dht", logging.ERROR),
        ("cpn.libp2p.host.basic_host", logging.WARNING),
    ]
