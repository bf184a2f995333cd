"""A real CPN libp2p host (node.p2p.open_host) driven by JSON lines on stdin.

Run inside a network namespace of the NAT testbed (``nsenter --net=...``) by
tests and bench scripts (see :class:`NatHosts`).  It prints one JSON line
``{"ready": {...}}`` once the host runs, then answers each command line with
one JSON line (``{"ok": true, ...}`` or ``{"ok": false, "error": ...}``).

Commands: ``info`` (peer ID, listen and announced addresses, reachability,
connected peers with their path), ``wait`` (until a condition on the
reachability holds: ``status``, ``relays`` >= n, ``nat_type``; or until the
path to ``peer`` is one of ``paths``), ``echo`` (open an echo stream to
``peer`` at ``addrs`` and send ``size`` bytes through it), ``connect``,
``disconnect``, ``quit``.  Every command has a ``timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio

STARTED = time.monotonic()
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from node.logs import setup_logging  # noqa: E402
from node.p2p import FramedStream, P2PHost, open_host  # noqa: E402
from node.reach import RelayPolicy  # noqa: E402

ECHO = "/cpn-test/echo/1"
CHUNK = 1 << 20


async def _echo(stream: FramedStream) -> None:
    while True:
        frame = await stream.receive_frame(2 * CHUNK)
        if not frame:
            return
        await stream.send_frame(frame)


class Driver:
    def __init__(self, p2p: P2PHost) -> None:
        self.p2p = p2p
        self._changed = trio.Event()

        def poke(*_: object) -> None:
            self._changed.set()

        # Everything a ``wait`` condition reads changes with one of these:
        p2p.nat.on_change.append(poke)  # reachability, announced addresses, relays
        p2p.nat.tracker.listeners.append(poke)  # connections (and so their paths)
        p2p.nat.punch.listeners.append(poke)  # a DCUtR attempt ended

    def info(self) -> dict[str, Any]:
        p = self.p2p
        return {
            "peer_id": p.peer_id,
            "listen": p.listen_addrs,
            "announced": p.advertised_addrs(),
            "reach": p.reachability.to_json(),
            "relays": p.nat.keeper.relays(),
            "paths": {q: p.connection_path(q) for q in p.connected_peers()},
            "offering": p.nat.relay.offering,
            "routing_table": [str(x) for x in p._dht.routing_table.get_peer_ids()],
        }

    async def cmd_info(self) -> dict[str, Any]:
        return self.info()

    def _punched(self, peer: str, tries: int) -> bool:
        """``tries`` DCUtR hole punches with ``peer`` ended (either side began them)."""
        from libp2p.peer.id import ID

        return self.p2p.nat.punch.tries[ID.from_base58(peer)] >= tries

    async def cmd_wait(self, status: str | None = None, relays: int | None = None,
                       nat_type: str | None = None, peer: str | None = None,
                       paths: list[str] | None = None, punch_tries: int | None = None,
                       without_relay: str | None = None) -> dict[str, Any]:
        """Return once every condition given holds (re-checked at every change)."""
        while True:
            r = self.p2p.reachability
            held = self.p2p.nat.keeper.relays()
            ok = (status is None or r.status == status) and (
                relays is None or len(held) >= relays) and (
                without_relay is None or without_relay not in held) and (
                nat_type is None or r.nat_type == nat_type) and (
                paths is None or self.p2p.connection_path(peer or "") in paths) and (
                punch_tries is None or self._punched(peer or "", punch_tries))
            if ok:
                return self.info()
            self._changed = trio.Event()
            await self._changed.wait()

    async def cmd_observations(self) -> dict[str, Any]:
        """What peers told us they see of our connections (identify)."""
        return {"observations": [vars(o) for o in self.p2p.nat._observations()]}

    async def cmd_peerstore(self) -> dict[str, Any]:
        """Every address our peerstore holds for any peer (identify, kad, peer records)."""
        store = self.p2p._host.get_peerstore()
        out: dict[str, list[str]] = {}
        for pid in store.peer_ids():
            if str(pid) == self.p2p.peer_id:
                continue
            try:
                addrs = {str(a) for a in store.addrs(pid)}
            except KeyError:  # PeerStoreError: expired or only a key known
                addrs = set()
            env = store.get_peer_record(pid)
            if env is not None:
                addrs |= {str(a) for a in env.record().addrs}
            out[str(pid)] = sorted(addrs)
        return {"addrs": out}

    async def cmd_echo(self, peer: str, addrs: list[str] | None = None,
                       size: int = 1024) -> dict[str, Any]:
        t0 = time.monotonic()
        stream = await self.p2p.open_stream(peer, ECHO, addrs or [])
        t1 = time.monotonic()
        sent = 0
        try:
            while sent < size:
                n = min(CHUNK, size - sent)
                await stream.send_frame(b"x" * n)
                back = await stream.receive_frame(2 * CHUNK)
                if len(back) != n:
                    raise RuntimeError(f"echoed {len(back)} of {n} bytes")
                sent += n
        finally:
            await stream.close()
        t2 = time.monotonic()
        return {"open_s": t1 - t0, "s": t2 - t1, "bytes": sent,
                "path": self.p2p.connection_path(peer)}

    async def cmd_connect(self, peer: str, addrs: list[str]) -> dict[str, Any]:
        await self.p2p.connect(peer, addrs)
        return {"path": self.p2p.connection_path(peer)}

    async def cmd_disconnect(self, peer: str) -> dict[str, Any]:
        from libp2p.peer.id import ID

        await self.p2p._host.disconnect(ID.from_base58(peer))
        return {}


async def serve(args: argparse.Namespace) -> None:
    policy = RelayPolicy(reservation_ttl_s=args.reservation_ttl, reservations=args.reservations)
    async with open_host(Ed25519PrivateKey.generate(), [args.listen], bootstrap=args.bootstrap,
                         relay=policy) as p2p:
        p2p.set_stream_handler(ECHO, _echo)
        driver = Driver(p2p)
        print(json.dumps({"ready": dict(driver.info(), start_s=time.monotonic() - STARTED)}),
              flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buf = b""
        while True:
            while b"\n" not in buf:
                data = await stdin.receive_some(65536)
                if not data:
                    return
                buf += data
            line, _, buf = buf.partition(b"\n")
            req = json.loads(line)
            name = req.pop("cmd")
            timeout = req.pop("timeout", 60)
            if name == "quit":
                print(json.dumps({"ok": True}), flush=True)
                return
            try:
                with trio.fail_after(timeout):
                    res = await getattr(driver, "cmd_" + name)(**req)
                print(json.dumps({"ok": True, **res}), flush=True)
            except Exception as exc:  # noqa: BLE001 - reported to the test
                print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}",
                                  "info": driver.info()}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--bootstrap", action="append", default=[])
    p.add_argument("--reservation-ttl", type=int, default=3600)
    p.add_argument("--reservations", type=int, default=2)
    p.add_argument("--log-level", default="info")
    args = p.parse_args()
    setup_logging(args.log_level)
    trio.run(serve, args)


if __name__ == "__main__":
    main()
