"""The data plane follows the libp2p path across real NATs (issue 13 phase 2b; marker ``netns``).

Real CPN hosts with a transfer service each (tests/support/nat_host.py
``--transfer 1``, one process per host) in the NAT testbed of tools/netlab.py.
A blob is fetched: from a private holder by a public fetcher (stream only:
the holder's data port cannot be reached); from a public holder by a private
one (TCP to the data port); between two EIM NATs after DCUtR punched them
(the data stream runs on the hole-punched connection); between two symmetric
NATs through a relay; between a symmetric and an EIM NAT on a punched TCP
connection (the ``punch`` path, both roles on either side), and through the
relay when that punch fails; and through a relay that is killed mid-transfer
(the fetch resumes on a circuit through another relay, keeping what it
verified).

Every wait is a driver command with a timeout (``wait``, ``wait_bytes``,
``fetch_wait`` return when their condition holds); no sleeps.  One testbed for
the module; the relay-killing test runs last.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netlab
import pytest
from support.natlab import NatLab, unavailable

from node.reach import split_circuit

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(shutil.which("nft") is None,
                       reason="netns: nft is not installed (tools/install installs nftables)"),
]

TOPOLOGY = "pub=public:3,eim1=eim,eim2=eim,eim3=eim,sym1=symmetric,sym2=symmetric"
PUBLIC = ("pub-0", "pub-1", "pub-2")
PRIVATE = ("eim1-0", "eim2-0", "eim3-0", "sym1-0", "sym2-0")
MIB = 1 << 20


def ok(answer: dict[str, Any]) -> dict[str, Any]:
    assert answer["ok"], answer
    return answer


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatLab]:
    why = unavailable()
    if why:
        pytest.skip(f"netns: {why}")
    logs: Path = tmp_path_factory.mktemp("natlab-data")
    with NatLab(TOPOLOGY, log_dir=logs, transfer=1) as lab:
        for name in (*PUBLIC, *PRIVATE):
            lab.start(name)
        for name in PUBLIC:
            ok(lab.cmd(name, "wait", status="public", timeout=30))
        for name in PRIVATE:
            ok(lab.cmd(name, "wait", status="private", relays=2, timeout=60))
        yield lab


def fetch(lab: NatLab, holder: str, fetcher: str, size: int, addrs: list[str] | None = None,
          ) -> dict[str, Any]:
    """``fetcher`` fetches a fresh ``size``-byte blob from ``holder`` at its announced
    addresses (or ``addrs``); returns fetch_wait's answer."""
    meta = ok(lab.cmd(holder, "put", size=size))["meta"]
    ok(lab.cmd(holder, "grant", peer=lab.peer(fetcher), digest=meta["digest"]))
    if addrs is None:
        addrs = ok(lab.cmd(holder, "info"))["announced"]
    ok(lab.cmd(fetcher, "fetch_start", peer=lab.peer(holder), addrs=addrs, meta=meta))
    return ok(lab.cmd(fetcher, "fetch_wait", digest=meta["digest"], timeout=120))


def test_a_public_peer_fetches_from_a_private_holder_over_the_stream(lab: NatLab) -> None:
    target = ok(lab.cmd("eim2-0", "info"))
    ok(lab.cmd("pub-1", "connect", peer=target["peer_id"], addrs=target["announced"]))
    # a relayed first connection is replaced by one the private side dials (DCUtR)
    ok(lab.cmd("pub-1", "wait", peer=target["peer_id"], paths=["direct", "reversed"], timeout=40))
    done = fetch(lab, "eim2-0", "pub-1", 8 * MIB)
    t = done["transfer"]
    assert done["error"] is None and t["phase"] == "done" and t["done_bytes"] == 8 * MIB
    # the holder is private: its ticket offers only the stream, which runs on the
    # connection the private side dialled (its relay, or a reversed connection)
    assert t["path"] in ("direct", "reversed"), t


def test_a_private_peer_fetches_from_a_public_holder_over_tcp(lab: NatLab) -> None:
    done = fetch(lab, "pub-2", "sym1-0", 8 * MIB)
    t = done["transfer"]
    assert done["error"] is None and t["phase"] == "done"
    assert t["path"] == "direct" and done["stats"]["path_direct"] >= 1, done


def test_two_eim_nats_move_data_on_the_hole_punched_connection(lab: NatLab) -> None:
    target = ok(lab.cmd("eim1-0", "info"))
    ok(lab.cmd("eim2-0", "connect", peer=target["peer_id"], addrs=target["announced"]))
    ok(lab.cmd("eim2-0", "wait", peer=lab.peer("eim1-0"), paths=["hole-punched"], timeout=40))
    done = fetch(lab, "eim1-0", "eim2-0", 8 * MIB)
    t = done["transfer"]
    assert done["error"] is None and t["phase"] == "done"
    assert t["path"] == "hole-punched", t


def test_a_first_contact_between_eim_nats_moves_its_data_hole_punched(lab: NatLab) -> None:
    """No connection yet: the first one is relayed, DCUtR upgrades it; the data
    stream waits for the upgrade or moves to the punched connection when it comes."""
    assert lab.peer("eim2-0") not in ok(lab.cmd("eim3-0", "info"))["paths"]
    done = fetch(lab, "eim2-0", "eim3-0", 16 * MIB)
    t = done["transfer"]
    assert done["error"] is None and t["phase"] == "done" and t["moved_bytes"] == 16 * MIB
    assert t["path"] == "hole-punched", t


def test_two_symmetric_nats_move_data_through_a_relay(lab: NatLab) -> None:
    done = fetch(lab, "sym2-0", "sym1-0", 4 * MIB)
    t = done["transfer"]
    assert done["error"] is None and t["phase"] == "done" and t["done_bytes"] == 4 * MIB
    assert t["path"] == "relayed" and done["stats"]["path_relayed"] >= 1, t


def test_a_symmetric_fetcher_punches_tcp_to_an_eim_holder(lab: NatLab) -> None:
    """Symmetric x EIM: DCUtR cannot connect them, so the libp2p connection
    stays relayed; the ticket offers ``punch`` and the sprayer (the symmetric
    fetcher) and the prober (the EIM holder) punch a raw TCP connection."""
    done = fetch(lab, "eim1-0", "sym1-0", 16 * MIB)
    t = done["transfer"]
    assert done["error"] is None and t["phase"] == "done" and t["moved_bytes"] == 16 * MIB, done
    assert t["path"] == "punched-tcp" and done["stats"]["path_punched_tcp"] >= 1, done
    assert ok(lab.cmd("sym1-0", "info"))["paths"][lab.peer("eim1-0")] == "relayed"


def test_an_eim_fetcher_punches_tcp_to_a_symmetric_holder(lab: NatLab) -> None:
    """The other way round: the holder sprays, then answers; the fetcher probes."""
    done = fetch(lab, "sym2-0", "eim2-0", 16 * MIB)
    t = done["transfer"]
    assert done["error"] is None and t["phase"] == "done" and t["moved_bytes"] == 16 * MIB, done
    assert t["path"] == "punched-tcp" and done["stats"]["path_punched_tcp"] >= 1, done


def test_a_punch_that_fails_falls_back_to_the_relay(lab: NatLab) -> None:
    """eim3-0's router drops every SYN it would forward to sym1-0's NAT: the
    prober's probes never leave, the punch fails within its time limit and
    the fetch moves its data on the relayed stream."""
    sym_wan = lab.layout["routers"]["sym1"]["wan_ip"]
    router = lab.layout["routers"]["eim3"]["ns"]
    rule = f"inet cpn_filter forward ip daddr {sym_wan} tcp flags & (syn | ack) == syn drop"
    netlab.must(netlab.run_in(router, ["nft", f"insert rule {rule}"]), "nft insert")
    done = fetch(lab, "sym1-0", "eim3-0", 4 * MIB)
    t = done["transfer"]
    assert done["error"] is None and t["phase"] == "done" and t["done_bytes"] == 4 * MIB, done
    assert t["path"] == "relayed" and done["stats"]["path_punched_tcp"] == 0, done


def test_a_relay_that_dies_mid_transfer_the_fetch_resumes_elsewhere(lab: NatLab) -> None:
    """sym1-0 fetches from sym2-0 (relayed: two symmetric sides) through the first
    of sym2-0's two relays; that relay is killed once data moves; the fetch
    resumes on a circuit through the second one and completes."""
    holder = ok(lab.cmd("sym2-0", "info"))
    circuits = [a for a in holder["announced"] if split_circuit(a) is not None]
    assert len(circuits) >= 2
    meta = ok(lab.cmd("sym2-0", "put", size=16 * MIB))["meta"]
    ok(lab.cmd("sym2-0", "grant", peer=lab.peer("sym1-0"), digest=meta["digest"]))
    ok(lab.cmd("sym1-0", "fetch_start", peer=holder["peer_id"], addrs=circuits, meta=meta))
    moving = ok(lab.cmd("sym1-0", "wait_bytes", digest=meta["digest"], n=2 * MIB, timeout=60))
    assert moving["transfer"]["path"] == "relayed"
    names = {lab.peer(n): n for n in PUBLIC}
    first_relay = split_circuit(circuits[0])[1]  # type: ignore[index]
    lab.stop(names[first_relay], kill=True)  # SIGKILL mid-transfer
    done = ok(lab.cmd("sym1-0", "fetch_wait", digest=meta["digest"], timeout=120))
    t = done["transfer"]
    assert done["error"] is None and t["phase"] == "done" and t["done_bytes"] == 16 * MIB, done
    # a second data stream (new ticket, new circuit); verified chunks were kept
    assert done["stats"]["path_relayed"] >= 2 and t["moved_bytes"] == 16 * MIB, done
