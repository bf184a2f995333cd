"""Attackers for the adversarial tests and bench/floods.py (not a test module).

Each one is a real peer on 127.0.0.1 speaking the real protocols, only with
hostile intent: a bare libp2p host that offers jobs it never means to run,
a DHT peer that answers provider lookups with hundreds of forged provider
records, a TCP tarpit that accepts connections and never answers, a provider
that floods a submitter with log lines.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import multiaddr
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from libp2p.kad_dht.pb.kademlia_pb2 import Message as KadMessage
from libp2p.peer.id import ID

from node.keys import peer_id_of
from node.p2p import FramedStream, P2PHost, StreamClosed, open_host
from protocol.envelope import Signed, seal
from protocol.identifiers import dht_key
from protocol.jobflow import JobCancel, JobPhase, JobUpdate, JobWatch
from protocol.jobspec import BlobRef, ImageRef, InputRef, JobSpec, Resources, Timeouts
from protocol.streams import JOB_FRAME_LIMIT, JOB_FRAME_LIMITS, JOB_PROTOCOL, KAD_PROTOCOL

LOOP = "/ip4/127.0.0.1/tcp/0"


@asynccontextmanager
async def bare_peer(key: Ed25519PrivateKey | None = None) -> AsyncIterator[tuple[P2PHost, Ed25519PrivateKey]]:
    """A libp2p host with no CPN services: the attacker's (or an honest client's) own."""
    key = key or Ed25519PrivateKey.generate()
    async with open_host(key, [LOOP]) as p2p:
        yield p2p, key


def blob(tag: str, media_type: str = "application/octet-stream", size: int = 1024) -> BlobRef:
    """A blob reference nobody holds (its digest names no stored bytes)."""
    h = secrets.token_hex(32)
    return BlobRef(digest=f"sha256:{h}", size=size, chunk_size=1 << 20, chunk_root=f"sha256:{secrets.token_hex(32)}",
                   media_type=media_type)


def job_spec(
    *,
    cpu_millis: int = 500,
    memory_mib: int = 64,
    transfer_s: int = 60,
    queue_s: int = 60,
    run_s: int = 60,
    created_at: int | None = None,
    max_price: int = 10_000_000,
    with_input: bool = False,
) -> JobSpec:
    """A job whose image (and input) no peer holds: it can be negotiated, never run."""
    image = ImageRef(manifest=blob("m", "application/vnd.oci.image.manifest.v1+json", 512),
                     config=blob("c", "application/vnd.oci.image.config.v1+json", 512),
                     layers=(blob("l", "application/vnd.oci.image.layer.v1.tar+gzip"),))
    inputs = (InputRef(blob=blob("i"), path="/data/in"),) if with_input else ()
    return JobSpec(
        name="adversary", image=image, command=("/bin/true",), args=(), env={}, workdir="/",
        resources=Resources(gpu=None, cpu_millis=cpu_millis, memory_mib=memory_mib, disk_mib=16),
        inputs=inputs, outputs=(), timeouts=Timeouts(transfer_s=transfer_s, queue_s=queue_s, run_s=run_s),
        network="none", max_price=max_price, created_at=int(time.time()) if created_at is None else created_at,
        nonce=os.urandom(16),
    )


def signed_job(key: Ed25519PrivateKey, **kw: Any) -> Signed[JobSpec]:
    return seal(job_spec(**kw), key)


# --------------------------------------------------------------------------- the tarpit


async def tarpit(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """A TCP port that accepts every connection and never says a word (each dial
    to it costs its caller a full timeout).  ``task_status.started(port)``."""

    async def hold(conn: trio.SocketStream) -> None:
        async with conn:
            await trio.sleep_forever()

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, hold, listeners)
        task_status.started(port)


def closed_port() -> int:
    """A loopback port nobody listens on (a dial there is refused at once)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- the Sybil DHT peer


def fake_providers(n: int, addrs: list[str]) -> list[tuple[str, list[str]]]:
    """``n`` provider identities that exist only as records (their keys are thrown away)."""
    return [(peer_id_of(Ed25519PrivateKey.generate()), [addrs[i % len(addrs)]]) for i in range(n)]


def _kad_key(key: bytes) -> bytes:
    """The kad key of a CID: its multihash (as every libp2p DHT, and node/p2p/, uses)."""
    return key[2:] if len(key) > 2 and key[0] == 0x01 and key[1] < 0x80 else key


def _xor_distance(a: bytes, b: bytes) -> int:
    """Kademlia's XOR metric over the SHA-256 of key and peer ID bytes."""
    return int.from_bytes(hashlib.sha256(a).digest(), "big") ^ int.from_bytes(hashlib.sha256(b).digest(), "big")


def closest_key(identifiers: list[str], others: list[str], *, tries: int = 20_000) -> Ed25519PrivateKey:
    """A key whose peer ID is closer (kad XOR metric) to every identifier's DHT key
    than any of ``others``: where a Sybil places itself to be asked first."""
    keys = [_kad_key(dht_key(i)) for i in identifiers]
    best = [min(_xor_distance(k, ID.from_base58(p).to_bytes()) for p in others) for k in keys]
    for _ in range(tries):
        key = Ed25519PrivateKey.generate()
        pid = ID.from_base58(peer_id_of(key)).to_bytes()
        if all(_xor_distance(k, pid) < b for k, b in zip(keys, best, strict=True)):
            return key
    raise RuntimeError("no close key found")


def _peer(peer_id: str, addrs: list[str]) -> Any:
    p = KadMessage.Peer()
    p.id = ID.from_base58(peer_id).to_bytes()
    p.addrs.extend(multiaddr.Multiaddr(a).to_bytes() for a in addrs)
    return p


def answer_providers_with(p2p: P2PHost, providers: list[tuple[str, list[str]]]) -> None:
    """Make ``p2p`` a lying DHT server: every GET_PROVIDERS is answered with
    ``providers`` (forged records first, as a flood would), every other query
    with no peers."""

    async def handle(stream: FramedStream) -> None:
        for _ in range(100):  # a client asks a few questions per stream at most
            try:
                req = KadMessage()
                req.ParseFromString(await stream.receive_frame(1 << 20))
            except StreamClosed:
                return
            except Exception:  # noqa: BLE001 - not a kad message: this liar just hangs up
                return
            resp = KadMessage()
            resp.type = req.type
            resp.key = req.key
            if req.type == KadMessage.MessageType.GET_PROVIDERS:
                resp.providerPeers.extend(_peer(p, a) for p, a in providers)
            await stream.send_frame(resp.SerializeToString())

    p2p.set_stream_handler(KAD_PROTOCOL, handle)


# --------------------------------------------------------------------------- the log-flooding provider


def flood_logs(p2p: P2PHost, key: Ed25519PrivateKey, *, line: str = "x" * 400, per_update: int = 256,
               updates: int = 100_000) -> list[int]:
    """Make ``p2p``'s job protocol answer every watch with an endless log, the job
    forever RUNNING.  Returns a list whose first item counts the lines sent."""
    sent = [0]

    async def handle(stream: FramedStream) -> None:
        from protocol.envelope import open_envelope

        watch = open_envelope(await stream.receive_frame(JOB_FRAME_LIMIT), expected=(JobWatch, JobCancel),
                              signer=stream.remote_peer, limits=JOB_FRAME_LIMITS).message
        if isinstance(watch, JobCancel):
            return  # ignored: the job "runs" on
        n = watch.log_lines
        for _ in range(updates):  # bounded: the submitter's deadline ends it long before
            u = JobUpdate(agreement_id=watch.agreement_id, phase=JobPhase.RUNNING, at=int(time.time()),
                          detail="", transfer_done=0, transfer_total=0, log_from=n,
                          lines=tuple([line] * per_update))
            try:
                await stream.send_frame(seal(u, key).raw)
            except StreamClosed:
                return
            n += per_update
            sent[0] += per_update

    p2p.set_stream_handler(JOB_PROTOCOL, handle)
    return sent


# --------------------------------------------------------------------------- negotiating from a bare peer


async def quote(p2p: P2PHost, key: Ed25519PrivateKey, provider: Any, job: Signed[JobSpec],
                clock: Any = None) -> Any:
    """Offer ``job`` to the daemon ``provider`` with the real client code; the QuoteSession."""
    from node.clock import unix_now
    from node.negotiate.client import request_quote

    with trio.fail_after(30):
        return await request_quote(p2p, key, provider.peer_id, job, clock=clock or unix_now,
                                   addrs=provider.p2p.listen_addrs)


async def agree(p2p: P2PHost, key: Ed25519PrivateKey, provider: Any, job: Signed[JobSpec],
                clock: Any = None) -> Any:
    """Quote and accept: the co-signed Agreement, or the QuoteSession that did not get one."""
    from node.clock import unix_now
    from node.negotiate.client import accept_quote

    s = await quote(p2p, key, provider, job, clock)
    if s.quote is None:
        return s
    with trio.fail_after(30):
        agreement = await accept_quote(s, clock=clock or unix_now)
    return agreement if agreement is not None else s


async def until_capacity(node: Any, pred: Any) -> None:
    """Wait until ``pred()`` holds, re-checked on every change of ``node``'s capacity."""
    sched = node.scheduler
    changed = [trio.Event()]

    def on_change() -> None:
        changed[0].set()

    sched.on_change.append(on_change)
    try:
        while not pred():
            await changed[0].wait()
            changed[0] = trio.Event()
    finally:
        sched.on_change.remove(on_change)


def cpu_share(node: Any, parts: int) -> int:
    """``1/parts`` of ``node``'s CPU, in millis (what a job may ask to fill it in ``parts`` jobs)."""
    return int(node.scheduler.resources.cpu_cores * 1000 // parts)
