"""The sans-IO parts of the ``punch`` path (protocol/transfer_punch.py, spec/transfer.md section 3.7)."""

from __future__ import annotations

import pytest

from protocol.errors import ValidationError
from protocol.transfer import (
    MAX_PROBES,
    MAX_SPRAY,
    PORT_MAX,
    PORT_MIN,
    PORT_SPACE,
    PROBE_ROUNDS,
    PROBES_PER_ROUND,
    ROLE_PROBE,
    ROLE_SPRAY,
    SPRAY_SOCKETS,
    PunchGo,
    PunchReply,
    PunchRequest,
    complementary,
    probe_ports,
    punch_role,
    success_probability,
)


@pytest.mark.parametrize(("nat", "status", "role"), [
    ("symmetric", "private", ROLE_SPRAY),
    ("symmetric", "unknown", ROLE_SPRAY),
    ("eim", "private", ROLE_PROBE),
    ("eim", "unknown", ROLE_PROBE),
    ("none", "private", ROLE_PROBE),  # a stateful firewall: no translation, inbound dropped
    ("none", "unknown", None),
    ("unknown", "private", None),
    ("eim", "public", None),
    ("symmetric", "public", None),
])
def test_roles(nat: str, status: str, role: str | None) -> None:
    assert punch_role(nat, status) == role


def test_a_punch_needs_one_sprayer_and_one_prober() -> None:
    assert complementary(ROLE_SPRAY, ROLE_PROBE) and complementary(ROLE_PROBE, ROLE_SPRAY)
    assert not complementary(ROLE_SPRAY, ROLE_SPRAY) and not complementary(ROLE_PROBE, ROLE_PROBE)
    assert not complementary(None, ROLE_PROBE) and not complementary(ROLE_SPRAY, None)


def test_probe_ports_are_distinct_in_range_and_reproducible() -> None:
    seed = bytes(range(16))
    ports = probe_ports(seed, PROBES_PER_ROUND)
    assert len(ports) == len(set(ports)) == PROBES_PER_ROUND
    assert all(PORT_MIN <= p <= PORT_MAX for p in ports)
    assert probe_ports(seed, PROBES_PER_ROUND) == ports
    assert probe_ports(bytes(16), PROBES_PER_ROUND) != ports
    again = probe_ports(seed, 100, frozenset(ports))
    assert not set(again) & set(ports)
    assert probe_ports(seed, 10) == ports[:10]  # a prefix: the order drawn
    with pytest.raises(ValueError):
        probe_ports(b"short", 1)
    with pytest.raises(ValueError):
        probe_ports(seed, PORT_SPACE + 1)


def test_the_reference_plan_succeeds_about_99_in_100() -> None:
    p = success_probability(SPRAY_SOCKETS, PROBES_PER_ROUND * PROBE_ROUNDS)
    assert 0.985 < p < 0.995
    assert success_probability(SPRAY_SOCKETS, PROBES_PER_ROUND) == pytest.approx(0.899, abs=0.001)
    assert success_probability(0, 1000) == 0.0 and success_probability(PORT_SPACE, 1) == 1.0
    assert SPRAY_SOCKETS <= MAX_SPRAY and PROBES_PER_ROUND * PROBE_ROUNDS <= MAX_PROBES


def test_messages_validate_their_fields() -> None:
    tid = bytes(16)
    PunchRequest(ticket_id=tid, role=ROLE_PROBE, ip="198.51.100.100", port=40000)
    PunchRequest(ticket_id=tid, role=ROLE_SPRAY, ip="198.51.100.101", port=0)
    PunchReply(role=ROLE_SPRAY, ip="198.51.100.101", port=0)
    PunchGo(sockets=SPRAY_SOCKETS)
    bad = [
        (lambda: PunchRequest(ticket_id=tid[:8], role=ROLE_PROBE, ip="198.51.100.1", port=40000), "ticket_id"),
        (lambda: PunchRequest(ticket_id=tid, role="listen", ip="198.51.100.1", port=40000), "role"),
        (lambda: PunchRequest(ticket_id=tid, role=ROLE_PROBE, ip="2001:db8::1", port=40000), "ip"),
        (lambda: PunchRequest(ticket_id=tid, role=ROLE_PROBE, ip="127.0.0.1", port=40000), "ip"),
        (lambda: PunchRequest(ticket_id=tid, role=ROLE_PROBE, ip="0.0.0.0", port=40000), "ip"),
        (lambda: PunchRequest(ticket_id=tid, role=ROLE_PROBE, ip="198.51.100.1", port=80), "port"),
        (lambda: PunchReply(role=ROLE_SPRAY, ip="198.51.100.1", port=40000), "port"),
        (lambda: PunchGo(sockets=0), "sockets"),
        (lambda: PunchGo(sockets=MAX_SPRAY + 1), "sockets"),
    ]
    for make, field in bad:
        with pytest.raises(ValidationError) as exc:
            make()
        assert exc.value.field == field
