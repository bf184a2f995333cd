"""Vectors for spec/transfer.md.

Operations (see spec/transfer.md, "Test vectors"):

* ``transfer.frame_prefix.decode``: the uvarint length prefix of a control
  frame (limit 1 MiB); accept gives ``length`` and ``prefix_bytes``.
* ``transfer.message.open``: open the signed control message in ``envelope_hex``
  (any transfer type, signer ``signer``); accept gives ``type`` and the
  decoded ``fields`` (lossless JSON form); ``invalid_field`` rejects name the
  ``field``.
* ``transfer.chunk_list.page``: the responder's page ``start``/``count`` of
  the chunk list ``hashes_hex``; accept gives ``start`` and ``hashes_hex``.
* ``transfer.chunk_list.assemble``: the initiator's paged fetch: requests of
  ``page`` entries answered by ``pages``; accept gives the ``requests`` made.
* ``transfer.chunk_list.verify``: the concatenated 32-byte entries in
  ``hashes_hex`` must match ``size``, ``chunk_size`` and ``root``, and the
  last entry must be ``digest``.
* ``transfer.keys.derive``: per-direction frame keys from a ticket.
* ``transfer.preamble.decode``: the data-connection preamble; gives ``ticket_id_hex``.
* ``transfer.data.admit``: the server admits a preamble against its ``tickets``
  at ``now``; gives ``ticket_id_hex``.
* ``transfer.frame.open``: open data frame ``frame_hex`` (header || ciphertext)
  sent by ``sender`` ("client" or "server") as frame number ``counter`` of
  that direction, under the keys of ``secret_hex``/``ticket_id_hex``; for a
  CHUNK frame, check the plaintext against ``chunk_hashes_hex`` (the chunk
  list of a blob of ``blob_size`` bytes in ``chunk_size`` chunks).  Accept gives
  ``type``, ``index`` and ``body_hex``.
* ``transfer.data.request``: the server checks a REQUEST plaintext against a
  blob of ``chunk_count`` chunks of which it holds ``held`` (null: all);
  accept gives the ``ranges``.
* ``transfer.data.error``: decode an ERROR plaintext; gives ``reason``, ``detail``.
* ``transfer.ticket.paths``: the paths of a Ticket a fetcher that knows ``known``
  tries, in order; gives ``tried`` (rejects ``no_usable_path``).
* ``transfer.punch.role``: the punch role of a node with ``nat_type`` and
  ``status``; gives ``role`` and, with the other side's ``peer_role``,
  whether the two make a ``punch`` (spec/transfer.md section 3.7).
"""

from __future__ import annotations

import hashlib
from typing import Any

from protocol import cbor
from protocol.chunks import chunk_hashes, chunk_root, digest_of
from protocol.envelope import public_key_proto_of, seal, signing_bytes
from protocol.identity import peer_id_from_proto_key
from protocol.jobflow import JobCancel
from protocol.transfer import (
    MAX_CHUNK_LIST_PAGE,
    MAX_CHUNKS,
    MAX_CONTROL_FRAME,
    MAX_PARTIAL,
    MAX_REQUEST_CHUNKS,
    MAX_WANT,
    ChunkList,
    ChunkRange,
    DataError,
    FetchGrant,
    FrameSealer,
    FrameType,
    GetChunkList,
    Have,
    HaveEntry,
    HolderEntry,
    Holders,
    Offer,
    OfferResult,
    Present,
    PunchGo,
    PunchReply,
    PunchRequest,
    Request,
    Ticket,
    TicketRequest,
    TransferError,
    Want,
    WhoHas,
    complementary,
    derive_keys,
    encode_header,
    encode_preamble,
    punch_role,
)
from protocol.wire import Message

from . import NOW, accept, json_value, key_from_seed, reject, seed, vector, vector_file

CS = 4096


def _blob() -> bytes:
    return b"".join(hashlib.sha256(b"cpn transfer vector %d" % i).digest() * 128 for i in range(3))[: 2 * CS + 100]


def _raw_envelope(key: Any, msg_wire: dict[str, Any], tag: int, domain: str) -> bytes:
    """An envelope around a hand-built payload (to carry invalid messages)."""
    payload = cbor.encode(msg_wire)
    return cbor.encode({"key": public_key_proto_of(key), "payload": payload,
                        "sig": key.sign(signing_bytes(domain, tag, payload)), "type": tag})


def _open_vec(name: str, desc: str, env: bytes, signer: str, expected: dict[str, Any]) -> dict[str, Any]:
    return vector(name, desc, "transfer.message.open", {"envelope_hex": env.hex(), "signer": signer}, expected)


def _accept_msg(msg: Message) -> dict[str, Any]:
    return accept(type=type(msg).__name__, fields=json_value(cbor.decode(msg.encode())))


def _frame(sealer: FrameSealer, kind: FrameType, index: int, body: bytes) -> bytes:
    header, ct = sealer.seal(kind, index, body)
    return header + ct




def _fake_digest(i: int) -> str:
    return "sha256:" + hashlib.sha256(b"cpn transfer vector digest %d" % i).hexdigest()


def _fake_hashes(k: int) -> bytes:
    """k distinct 32-byte entries (message-level checks do not look at their values)."""
    return b"".join(hashlib.sha256(b"entry %d" % i).digest() for i in range(k))


def _prefix_vectors() -> list[dict[str, Any]]:
    op = "transfer.frame_prefix.decode"

    def pv(name: str, desc: str, raw: bytes, exp: dict[str, Any]) -> dict[str, Any]:
        return vector(f"frame-prefix-{name}", desc, op, {"bytes_hex": raw.hex()}, exp)

    return [
        pv("zero", "an empty frame: prefix 00", b"\x00", accept(length=0, prefix_bytes=1)),
        pv("one-byte-max", "127 fits one prefix byte", b"\x7f", accept(length=127, prefix_bytes=1)),
        pv("two-bytes", "128 takes two prefix bytes (LEB128, low 7 bits first)", b"\x80\x01",
           accept(length=128, prefix_bytes=2)),
        pv("limit", f"exactly the limit, {MAX_CONTROL_FRAME} bytes", b"\x80\x80\x40",
           accept(length=MAX_CONTROL_FRAME, prefix_bytes=3)),
        pv("limit-plus-one", f"{MAX_CONTROL_FRAME + 1} bytes: refused on the prefix, before any body byte",
           b"\x81\x80\x40", reject("oversize")),
        pv("huge", "a 4-byte prefix announcing 2^28 - 1 bytes", b"\xff\xff\xff\x7f", reject("oversize")),
        pv("non-minimal", "0 written in two bytes (80 00)", b"\x80\x00", reject("malformed")),
        pv("too-long", "ten continuation bytes of value 0", b"\x80" * 10, reject("malformed")),
    ]


def _control_vectors(key: Any, signer: str, other: Any, data: bytes, hashes: list[bytes],
                     secret: bytes, ticket_id: bytes) -> list[dict[str, Any]]:
    digest, root = digest_of(data), chunk_root(hashes)
    size = len(data)
    v: list[dict[str, Any]] = []

    def ok(name: str, desc: str, msg: Message) -> None:
        v.append(_open_vec(f"message-{name}", desc, seal(msg, key).raw, signer, _accept_msg(msg)))

    def bad(name: str, desc: str, cls: type[Message], wire: dict[str, Any], reason: str,
            field: str | None = None) -> None:
        exp = reject(reason, field=field) if field is not None else reject(reason)
        v.append(_open_vec(f"message-{name}", desc, _raw_envelope(key, wire, cls.TYPE, cls.DOMAIN), signer, exp))

    # ---- Want (64) / WhoHas (73)
    want = Want(digests=(digest,))
    ok("want", "a Want for one blob", want)
    many = tuple(_fake_digest(i) for i in range(MAX_WANT))
    ok("want-max", f"a Want for {MAX_WANT} distinct blobs (the most)", Want(digests=many))
    bad("want-empty", "a Want for nothing", Want, {"digests": []}, "invalid_field", "digests")
    bad("want-too-many", f"a Want for {MAX_WANT + 1} blobs", Want,
        {"digests": [*many, _fake_digest(MAX_WANT)]}, "invalid_field", "digests")
    bad("want-duplicate", "the same digest twice", Want, {"digests": [digest, digest]}, "invalid_field", "digests")
    bad("want-bad-digest", "an upper-case digest (digests are lowercase hex)", Want,
        {"digests": [digest, digest.upper().replace("SHA256", "sha256")]}, "invalid_field", "digests[1]")

    # ---- Have (65)
    full = HaveEntry(digest=digest, size=size, chunk_size=CS, complete=True, bitmap=b"")
    part = HaveEntry(digest=digest, size=size, chunk_size=CS, complete=False, bitmap=b"\x05")
    ok("have-complete", "a Have: the whole blob", Have(blobs=(full,)))
    ok("have-partial", "a Have: chunks 0 and 2 of 3 (bitmap LSB first)", Have(blobs=(part,)))
    ok("have-empty", "a Have holding none of the wanted blobs", Have(blobs=()))
    parts = [dict(part.to_wire(), digest=_fake_digest(i)) for i in range(MAX_PARTIAL + 1)]
    ok("have-partial-max", f"{MAX_PARTIAL} partial entries (the most)",
       Have(blobs=tuple(HaveEntry.from_wire(p) for p in parts[:MAX_PARTIAL])))
    bad("have-partial-too-many", f"{MAX_PARTIAL + 1} partial entries", Have, {"blobs": parts}, "invalid_field", "blobs")
    bad("have-duplicate", "two entries for one digest", Have, {"blobs": [full.to_wire(), part.to_wire()]},
        "invalid_field", "blobs")
    bad("have-stray-bitmap-bits", "a partial Have with a bit beyond the last chunk", Have,
        {"blobs": [dict(part.to_wire(), bitmap=b"\x0d")]}, "bad_bitmap")
    bad("have-bitmap-wrong-length", "a bitmap of 2 bytes for 3 chunks (ceil(3/8) = 1)", Have,
        {"blobs": [dict(part.to_wire(), bitmap=b"\x05\x00")]}, "invalid_field", "blobs[0].bitmap")
    bad("have-complete-with-bitmap", "complete = true with a non-empty bitmap", Have,
        {"blobs": [dict(full.to_wire(), bitmap=b"\x07")]}, "invalid_field", "blobs[0].bitmap")
    bad("have-chunk-size-not-power-of-two", "chunk_size 4160: a multiple of 64 but not a power of two", Have,
        {"blobs": [dict(full.to_wire(), chunk_size=4160)]}, "invalid_field", "blobs[0].chunk_size")
    bad("have-too-many-chunks", f"a blob of {MAX_CHUNKS + 1} chunks", Have,
        {"blobs": [dict(full.to_wire(), size=(MAX_CHUNKS + 1) * CS)]}, "invalid_field", "blobs[0].size")

    # ---- GetChunkList (66) / ChunkList (67)
    ok("get-chunk-list", "the first page of a chunk list, the largest count", GetChunkList(digest=digest))
    ok("get-chunk-list-page-2", "the second page (entries 4096..8191)",
       GetChunkList(digest=digest, start=MAX_CHUNK_LIST_PAGE, count=MAX_CHUNK_LIST_PAGE))
    gcl = GetChunkList(digest=digest).to_wire()
    bad("get-chunk-list-count-zero", "count 0", GetChunkList, dict(gcl, count=0), "invalid_field", "count")
    bad("get-chunk-list-count-over", f"count {MAX_CHUNK_LIST_PAGE + 1}", GetChunkList,
        dict(gcl, count=MAX_CHUNK_LIST_PAGE + 1), "invalid_field", "count")
    bad("get-chunk-list-start-over", f"start {MAX_CHUNKS}: no blob has that many chunks", GetChunkList,
        dict(gcl, start=MAX_CHUNKS), "invalid_field", "start")
    bad("get-chunk-list-no-page", "revision 2's GetChunkList (digest only)", GetChunkList, {"digest": digest},
        "missing_field")
    cl = ChunkList(digest=digest, size=size, chunk_size=CS, hashes=b"".join(hashes))
    ok("chunk-list", "the whole chunk list of a 3-chunk blob (one page)", cl)
    ok("chunk-list-last-page", "the last page of a 3-chunk blob: entry 2",
       ChunkList(digest=digest, size=size, chunk_size=CS, start=2, hashes=hashes[2]))
    empty = ChunkList(digest=digest_of(b""), size=0, chunk_size=CS, hashes=b"")
    ok("chunk-list-empty-blob", "an empty blob: one page at start 0 with no entries", empty)
    big = (2 * MAX_CHUNK_LIST_PAGE + 1) * CS
    ok("chunk-list-page-max", f"a full page of {MAX_CHUNK_LIST_PAGE} entries (start 4096 of 8193)",
       ChunkList(digest=digest, size=big, chunk_size=CS, start=MAX_CHUNK_LIST_PAGE,
                 hashes=_fake_hashes(MAX_CHUNK_LIST_PAGE)))
    clw = cl.to_wire()
    bad("chunk-list-page-over", f"{MAX_CHUNK_LIST_PAGE + 1} entries in one page", ChunkList,
        dict(clw, size=big, hashes=_fake_hashes(MAX_CHUNK_LIST_PAGE + 1)), "invalid_field", "hashes")
    bad("chunk-list-partial-entry", "hashes one byte short of 3 entries", ChunkList,
        dict(clw, hashes=clw["hashes"][:-1]), "invalid_field", "hashes")
    bad("chunk-list-past-end", "start 1 with 3 entries: past the last chunk", ChunkList, dict(clw, start=1),
        "invalid_field", "hashes")
    bad("chunk-list-empty-page", "no entries for a non-empty blob", ChunkList, dict(clw, hashes=b""),
        "invalid_field", "hashes")
    bad("chunk-list-start-beyond", "start 3 of a 3-chunk blob", ChunkList, dict(clw, start=3, hashes=hashes[2]),
        "invalid_field", "start")
    bad("chunk-list-empty-blob-entry", "an entry for an empty blob", ChunkList,
        dict(empty.to_wire(), hashes=hashes[0]), "invalid_field", "hashes")

    # ---- TicketRequest (68) / Ticket (69)
    ok("ticket-request", "admission to the data plane for one blob", TicketRequest(digest=digest))
    bad("ticket-request-bad-digest", "a digest without the sha256: prefix", TicketRequest,
        {"digest": digest[7:]}, "invalid_field", "digest")
    ticket = Ticket(ticket_id=ticket_id, secret=secret, digest=digest, host="127.0.0.1", port=40123,
                    expires_at=NOW + 60, paths=("tcp", "stream"))
    ok("ticket", "a data-plane ticket offering the TCP data port first, then a libp2p stream", ticket)
    ok("ticket-stream-only", "a private holder: only the libp2p stream path (host:port kept, unused)",
       ticket.replace(paths=("stream",)))
    ok("ticket-unknown-path", "an unknown path name is valid on the wire (a fetcher skips it)",
       ticket.replace(paths=("quic-punch", "stream")))
    ok("ticket-ipv6", "a ticket with an IPv6 literal host (no brackets)", ticket.replace(host="2001:db8::7"))
    t = ticket.to_wire()
    bad("ticket-short-secret", "a ticket whose secret is 16 bytes", Ticket, dict(t, secret=secret[:16]),
        "invalid_field", "secret")
    bad("ticket-hostname", "a host name instead of an IP literal", Ticket, dict(t, host="localhost"),
        "invalid_field", "host")
    bad("ticket-port-zero", "port 0", Ticket, dict(t, port=0), "invalid_field", "port")
    bad("ticket-no-paths", "an empty list of paths", Ticket, dict(t, paths=[]), "invalid_field", "paths")
    bad("ticket-duplicate-path", "the same path twice", Ticket, dict(t, paths=["tcp", "tcp"]),
        "invalid_field", "paths")
    bad("ticket-bad-path-name", "a path name with capitals", Ticket, dict(t, paths=["TCP"]),
        "invalid_field", "paths[0]")
    bad("ticket-too-many-paths", "9 paths", Ticket, dict(t, paths=[f"p{i}" for i in range(9)]),
        "invalid_field", "paths")
    bad("ticket-revision-4", "revision 4's ticket (no paths)", Ticket,
        {k: val for k, val in t.items() if k != "paths"}, "missing_field")

    # ---- Offer (70) / OfferResult (71) / TransferError (72)
    offer = Offer(digest=digest, size=size, chunk_size=CS, chunk_root=root)
    ok("offer", "an upload: store this blob, pull it from me", offer)
    bad("offer-bad-root", "a chunk root that is not a sha256: digest", Offer,
        dict(offer.to_wire(), chunk_root="md5:00"), "invalid_field", "chunk_root")
    bad("offer-empty-chunk-size", "chunk_size 0", Offer, dict(offer.to_wire(), chunk_size=0),
        "invalid_field", "chunk_size")
    result = OfferResult(digest=digest, stored=True)
    ok("offer-result", "the receiver stored the blob", result)
    bad("offer-result-missing-stored", "an OfferResult without stored", OfferResult, {"digest": digest},
        "missing_field")
    bad("offer-result-extra-field", "an OfferResult with an extra field", OfferResult,
        dict(result.to_wire(), bytes=size), "unknown_field")
    err = TransferError(reason="unauthorized", detail="no agreement lets you fetch this blob")
    ok("transfer-error", "a refusal", err)
    bad("transfer-error-reason-case", "reasons are lowercase identifiers", TransferError,
        dict(err.to_wire(), reason="Unauthorized"), "invalid_field", "reason")
    bad("transfer-error-long-detail", "a detail of 1025 characters", TransferError,
        dict(err.to_wire(), detail="x" * 1025), "invalid_field", "detail")

    # ---- owner-vouched sources: WhoHas (73), Holders (74), FetchGrant (75), Present (76)
    grantee = peer_id_from_proto_key(public_key_proto_of(other))
    holder = peer_id_from_proto_key(public_key_proto_of(key_from_seed(seed("transfer/holder"))))
    grant = FetchGrant(digest=digest, grantee=grantee, holder=holder, expires_at=NOW + 600)
    grant_env = seal(grant, key).raw
    ok("who-has", "WhoHas: which other peers hold this blob", WhoHas(digests=(digest,)))
    bad("who-has-empty", "WhoHas for nothing", WhoHas, {"digests": []}, "invalid_field", "digests")
    ok("fetch-grant", "FetchGrant signed by the blob's owner: grantee may fetch it from holder", grant)
    g = grant.to_wire()
    bad("fetch-grant-self", "a FetchGrant whose grantee is the holder", FetchGrant, dict(g, grantee=holder),
        "invalid_field", "holder")
    bad("fetch-grant-bad-peer", "a FetchGrant whose grantee is not a peer ID", FetchGrant,
        dict(g, grantee="not-a-peer"), "bad_peer_id")
    ok("holders", "Holders: one holder with the owner's grant and an address",
       Holders(holders=(HolderEntry(grant=grant_env, addrs=("/ip4/127.0.0.1/tcp/4001",)),)))
    h = HolderEntry(grant=grant_env, addrs=()).to_wire()
    bad("holders-too-many-addrs", "a holder entry with 9 addresses", Holders,
        {"holders": [dict(h, addrs=["/ip4/127.0.0.1/tcp/1"] * 9)]}, "invalid_field", "holders[0].addrs")
    bad("holders-too-many", "65 holder entries", Holders, {"holders": [h] * 65}, "invalid_field", "holders")
    ok("present", "Present: the owner's grant, shown to the holder", Present(grant=grant_env))
    bad("present-empty-grant", "Present without a grant", Present, {"grant": b""}, "invalid_field", "grant")

    # ---- PunchRequest (77) / PunchReply (78) / PunchGo (79)
    preq = PunchRequest(ticket_id=ticket_id, role="probe", ip="198.51.100.100", port=40123)
    ok("punch-request", "a prober fetcher: its public IP and the mapped port its probes come from", preq)
    ok("punch-request-spray", "a sprayer fetcher: port 0", preq.replace(role="spray", ip="198.51.100.101", port=0))
    r = preq.to_wire()
    bad("punch-request-short-ticket", "an 8-byte ticket id", PunchRequest, dict(r, ticket_id=ticket_id[:8]),
        "invalid_field", "ticket_id")
    bad("punch-request-bad-role", "an unknown role", PunchRequest, dict(r, role="listen"), "invalid_field", "role")
    bad("punch-request-ipv6", "an IPv6 address", PunchRequest, dict(r, ip="2001:db8::1"), "invalid_field", "ip")
    bad("punch-request-loopback", "a loopback address", PunchRequest, dict(r, ip="127.0.0.1"), "invalid_field", "ip")
    bad("punch-request-low-port", "a prober's port below 1024", PunchRequest, dict(r, port=80),
        "invalid_field", "port")
    bad("punch-request-spray-port", "a sprayer naming a port", PunchRequest, dict(r, role="spray", port=40123),
        "invalid_field", "port")
    ok("punch-reply", "a sprayer holder: its connections are out", PunchReply(role="spray", ip="198.51.100.101", port=0))
    bad("punch-reply-no-ip", "a reply without an ip", PunchReply, {"role": "probe", "port": 40123}, "missing_field")
    ok("punch-go", "the sprayer fetcher opened 384 connections", PunchGo(sockets=384))
    bad("punch-go-too-many", "513 connections (the most is 512)", PunchGo, {"sockets": 513}, "invalid_field", "sockets")
    bad("punch-go-none", "no connection", PunchGo, {"sockets": 0}, "invalid_field", "sockets")

    # ---- envelope-level
    v.append(_open_vec("message-wrong-signer", "a valid Want signed by another peer than the stream's",
                       seal(want, other).raw, signer, reject("wrong_signer")))
    v.append(_open_vec("message-not-transfer", "a JobCancel (tag 100) on the transfer stream",
                       seal(JobCancel(agreement_id=bytes(16), detail=""), key).raw, signer,
                       reject("unexpected_type")))
    return v


def _chunk_list_vectors(data: bytes, hashes: list[bytes]) -> list[dict[str, Any]]:
    digest, root, size = digest_of(data), chunk_root(hashes), len(data)
    v: list[dict[str, Any]] = []
    whole = b"".join(hashes)

    def pg(name: str, desc: str, start: int, count: int, exp: dict[str, Any], hs: bytes = whole,
           sz: int = size, dg: str = digest) -> None:
        v.append(vector(f"chunk-list-page-{name}", desc, "transfer.chunk_list.page",
                        {"digest": dg, "size": sz, "chunk_size": CS, "hashes_hex": hs.hex(),
                         "start": start, "count": count}, exp))

    pg("first", "entries 0 and 1 of 3", 0, 2, accept(start=0, hashes_hex=b"".join(hashes[:2]).hex()))
    pg("last", "from entry 2, count 4096: the one entry left", 2, 4096, accept(start=2, hashes_hex=hashes[2].hex()))
    pg("beyond", "start 3 of a 3-entry list", 3, 1, reject("bad_chunk_index"))
    pg("empty-blob", "an empty blob: one empty page at 0", 0, 4096, accept(start=0, hashes_hex=""),
       hs=b"", sz=0, dg=digest_of(b""))
    pg("empty-blob-beyond", "an empty blob: start 1", 1, 4096, reject("bad_chunk_index"), hs=b"", sz=0,
       dg=digest_of(b""))

    def asm(name: str, desc: str, page: int, pages: list[tuple[int, bytes]], exp: dict[str, Any]) -> None:
        v.append(vector(f"chunk-list-assemble-{name}", desc, "transfer.chunk_list.assemble",
                        {"digest": digest, "size": size, "chunk_size": CS, "root": root, "page": page,
                         "pages": [{"start": s, "hashes_hex": h.hex()} for s, h in pages]}, exp))

    asm("two-pages", "pages of 2: entries 0-1, then 2", 2, [(0, b"".join(hashes[:2])), (2, hashes[2])],
        accept(requests=[[0, 2], [2, 2]]))
    asm("short-page", "the first page has 1 entry where 2 were due", 2, [(0, hashes[0])], reject("bad_chunk_list"))
    asm("wrong-start", "the second answer starts at 1", 2, [(0, b"".join(hashes[:2])), (1, hashes[2])],
        reject("bad_chunk_list"))
    forged = hashlib.sha256(b"evil").digest()
    asm("forged", "the pages are well formed but the list fails the root", 2,
        [(0, b"".join(hashes[:2])), (2, forged)], reject("bad_chunk_list"))

    def cl_vec(name: str, desc: str, hs: bytes, exp: dict[str, Any], rt: str = root) -> None:
        v.append(vector(f"chunk-list-{name}", desc, "transfer.chunk_list.verify",
                        {"hashes_hex": hs.hex(), "size": size, "chunk_size": CS, "root": rt, "digest": digest}, exp))

    cl_vec("valid", "the chunk list matches the signed root", whole, accept())
    cl_vec("reordered", "the right hashes in the wrong order", b"".join([hashes[1], hashes[0], hashes[2]]),
           reject("bad_chunk_list"))
    cl_vec("forged-hash", "one hash replaced (a source lying about chunk 1)",
           b"".join([hashes[0], forged, hashes[2]]), reject("bad_chunk_list"))
    cl_vec("too-few", "two hashes for a three-chunk blob", b"".join(hashes[:2]), reject("bad_chunk_list"))
    inconsistent = [hashes[0], hashes[1], hashlib.sha256(b"other blob").digest()]
    cl_vec("last-not-digest", "a list matching its root whose last entry is not the blob digest "
           "(root and digest disagree)", b"".join(inconsistent), reject("bad_chunk_list"), rt=chunk_root(inconsistent))
    return v


def _data_plane_vectors(data: bytes, hashes: list[bytes], secret: bytes, ticket_id: bytes) -> list[dict[str, Any]]:
    c2s, s2c = derive_keys(secret, ticket_id)
    v: list[dict[str, Any]] = []
    v.append(vector("keys-derive", "HKDF-SHA256(secret, salt=ticket_id, info='cpn/transfer/data/v1'), "
                    "64 bytes split in two", "transfer.keys.derive",
                    {"secret_hex": secret.hex(), "ticket_id_hex": ticket_id.hex()},
                    accept(client_to_server_key_hex=c2s.hex(), server_to_client_key_hex=s2c.hex())))

    # ---- preamble and admission
    pre = encode_preamble(ticket_id)

    def pv(name: str, desc: str, raw: bytes, exp: dict[str, Any]) -> None:
        v.append(vector(f"preamble-{name}", desc, "transfer.preamble.decode", {"bytes_hex": raw.hex()}, exp))

    pv("valid", "magic CPNT, version 1, three zero bytes, ticket id", pre, accept(ticket_id_hex=ticket_id.hex()))
    pv("bad-magic", "not a CPN data connection", b"GET " + pre[4:], reject("bad_preamble"))
    pv("short", "23 bytes", pre[:-1], reject("bad_preamble"))
    pv("bad-version", "version 2 is not defined", pre[:4] + b"\x02" + pre[5:], reject("bad_version"))
    pv("version-zero", "version 0", pre[:4] + b"\x00" + pre[5:], reject("bad_version"))
    pv("reserved-nonzero", "version 1 with a non-zero reserved byte", pre[:6] + b"\x01" + pre[7:],
       reject("bad_version"))
    other_id = hashlib.sha256(b"another ticket").digest()[:16]

    def adm(name: str, desc: str, raw: bytes, tickets: list[tuple[bytes, int, bool]], now: int,
            exp: dict[str, Any]) -> None:
        v.append(vector(f"admit-{name}", desc, "transfer.data.admit",
                        {"bytes_hex": raw.hex(), "now": now,
                         "tickets": [{"ticket_id_hex": t.hex(), "expires_at": e, "used": u} for t, e, u in tickets]},
                        exp))

    issued = [(other_id, NOW + 60, False), (ticket_id, NOW + 60, False)]
    adm("valid", "the preamble names an issued, unused ticket", pre, issued, NOW, accept(ticket_id_hex=ticket_id.hex()))
    adm("at-expiry", "now = expires_at: still valid", pre, issued, NOW + 60, accept(ticket_id_hex=ticket_id.hex()))
    adm("expired", "now = expires_at + 1", pre, issued, NOW + 61, reject("bad_ticket"))
    adm("unknown", "no ticket with that id was issued", pre, issued[:1], NOW, reject("bad_ticket"))
    adm("used", "the ticket was consumed by an earlier connection whose first frame authenticated", pre,
        [(ticket_id, NOW + 60, True)], NOW,
        reject("bad_ticket"))
    adm("bad-magic-first", "a bad preamble is refused before the ticket is looked up", b"GET " + pre[4:], issued, NOW,
        reject("bad_preamble"))

    # ---- frames
    base = {"secret_hex": secret.hex(), "ticket_id_hex": ticket_id.hex(), "chunk_hashes_hex": b"".join(hashes).hex(),
            "blob_size": len(data), "chunk_size": CS}

    def fr(name: str, desc: str, frame: bytes, sender: str, counter: int, exp: dict[str, Any]) -> None:
        v.append(vector(f"frame-{name}", desc, "transfer.frame.open",
                        {**base, "sender": sender, "counter": counter, "frame_hex": frame.hex()}, exp))

    def hdr(kind: int, index: int, length: int, reserved: bytes = b"\0\0\0") -> bytes:
        return bytes((kind,)) + reserved + index.to_bytes(4, "big") + length.to_bytes(4, "big")

    req_body = Request(ranges=(ChunkRange(start=0, end=3),)).encode()
    cli = FrameSealer(c2s)
    fr("request", "the client's first frame: a Request for chunks 0..2", _frame(cli, FrameType.REQUEST, 0, req_body),
       "client", 0, accept(type="REQUEST", index=0, body_hex=req_body.hex()))
    fr("stop", "STOP, the client's second frame: empty body", _frame(cli, FrameType.STOP, 0, b""), "client", 1,
       accept(type="STOP", index=0, body_hex=""))
    fr("stop-with-body", "an authentic STOP with a 1-byte body", _frame(FrameSealer(c2s), FrameType.STOP, 0, b"\0"),
       "client", 0, reject("bad_frame"))
    srv = FrameSealer(s2c)
    chunk0 = data[:CS]
    f0 = _frame(srv, FrameType.CHUNK, 0, chunk0)
    fr("chunk", "chunk 0, the server's first frame", f0, "server", 0, accept(type="CHUNK", index=0, body_hex=chunk0.hex()))
    last = data[2 * CS:]
    f1 = _frame(srv, FrameType.CHUNK, 2, last)
    fr("chunk-short-last", "the last chunk (100 bytes) as the server's second frame", f1, "server", 1,
       accept(type="CHUNK", index=2, body_hex=last.hex()))
    fr("end", "END as the server's third frame", _frame(srv, FrameType.END, 0, b""), "server", 2,
       accept(type="END", index=0, body_hex=""))
    fr("end-with-body", "an authentic END with a body", _frame(FrameSealer(s2c), FrameType.END, 0, b"x"), "server", 0,
       reject("bad_frame"))
    err_body = DataError(reason="not_held", detail="chunk 1 is not held here").encode()
    fr("error", "ERROR not_held, the server's first frame", _frame(FrameSealer(s2c), FrameType.ERROR, 0, err_body),
       "server", 0, accept(type="ERROR", index=0, body_hex=err_body.hex()))
    fr("chunk-replayed", "frame 0 replayed where frame 1 is expected (nonce mismatch)", f0, "server", 1,
       reject("bad_frame_tag"))
    tampered = bytearray(f0)
    tampered[40] ^= 1
    fr("chunk-tampered", "one ciphertext bit flipped", bytes(tampered), "server", 0, reject("bad_frame_tag"))
    relabel = encode_header(FrameType.CHUNK, 1, len(chunk0) + 16) + f0[12:]
    fr("chunk-relabelled", "the header's chunk index changed from 0 to 1 (header is authenticated)", relabel,
       "server", 0, reject("bad_frame_tag"))
    wrong = bytearray(chunk0)
    wrong[0] ^= 0xFF
    fr("chunk-corrupt", "an authentic frame whose chunk does not match the chunk list (a lying source)",
       _frame(FrameSealer(s2c), FrameType.CHUNK, 0, bytes(wrong)), "server", 0, reject("corrupt_chunk"))
    wrong_last = bytearray(last)
    wrong_last[-1] ^= 1
    fr("chunk-last-corrupt", "an authentic last chunk with its final byte changed (fails the whole-blob SHA-256)",
       _frame(FrameSealer(s2c), FrameType.CHUNK, 2, bytes(wrong_last)), "server", 0, reject("corrupt_chunk"))
    fr("chunk-wrong-length", "an authentic chunk 0 one byte short", _frame(FrameSealer(s2c), FrameType.CHUNK, 0,
       chunk0[:-1]), "server", 0, reject("corrupt_chunk"))
    fr("chunk-index-beyond", "an authentic CHUNK with index 3 of a 3-chunk blob",
       _frame(FrameSealer(s2c), FrameType.CHUNK, 3, last), "server", 0, reject("bad_chunk_index"))
    fr("chunk-wrong-direction", "a CHUNK frame sent by the client", _frame(FrameSealer(c2s), FrameType.CHUNK, 0, chunk0),
       "client", 0, reject("bad_frame"))
    fr("request-wrong-direction", "a REQUEST frame sent by the server",
       _frame(FrameSealer(s2c), FrameType.REQUEST, 0, req_body), "server", 0, reject("bad_frame"))
    fr("chunk-wrong-key", "a server frame sealed with the client-to-server key",
       _frame(FrameSealer(c2s), FrameType.END, 0, b""), "server", 0, reject("bad_frame_tag"))
    fr("oversize", "a header announcing a body beyond 16 MiB + 16", hdr(2, 0, (16 << 20) + 17), "server", 0,
       reject("oversize"))
    fr("chunk-over-chunk-size", "a CHUNK header announcing chunk_size + 17 bytes (4113)", hdr(2, 0, CS + 17),
       "server", 0, reject("oversize"))
    fr("request-oversize", "a REQUEST header announcing 65537 bytes", hdr(1, 0, 65537), "client", 0,
       reject("oversize"))
    fr("short-length", "a header announcing 15 bytes: less than the tag", hdr(3, 0, 15), "server", 0,
       reject("bad_frame"))
    fr("unknown-type", "frame type 9", hdr(9, 0, 16) + bytes(16), "server", 0, reject("bad_frame"))
    fr("reserved-bits", "non-zero reserved header byte", hdr(2, 0, 16, b"\0\1\0") + bytes(16), "server", 0,
       reject("bad_frame"))
    fr("end-with-index", "an END frame carrying a chunk index", hdr(3, 5, 16) + bytes(16), "server", 0,
       reject("bad_frame"))
    fr("end-with-index-oversize", "an END with an index and 70000 bytes: the length is checked first",
       hdr(3, 5, 70000), "server", 0, reject("oversize"))

    # ---- REQUEST and ERROR bodies
    def rq(name: str, desc: str, body: bytes, n: int, held: list[int] | None, exp: dict[str, Any]) -> None:
        v.append(vector(f"request-{name}", desc, "transfer.data.request",
                        {"body_hex": body.hex(), "chunk_count": n, "held": held}, exp))

    def body(*ranges: tuple[int, int]) -> bytes:
        return cbor.encode({"ranges": [{"start": s, "end": e} for s, e in ranges]})

    rq("valid", "chunks 0..2 and chunk 1 again", body((0, 3), (1, 2)), 3, None, accept(ranges=[[0, 3], [1, 2]]))
    rq("partial-held", "a partial holder asked for the chunks it holds", body((0, 1), (2, 3)), 3, [0, 2],
       accept(ranges=[[0, 1], [2, 3]]))
    rq("not-held", "a partial holder asked for chunk 1, which it lacks", body((0, 2),), 3, [0, 2], reject("not_held"))
    rq("beyond-blob", "chunk 3 of a 3-chunk blob", body((2, 4),), 3, None, reject("bad_chunk_index"))
    rq("beyond-before-held", "beyond the blob and not held: bad_chunk_index is checked first", body((1, 4),), 3, [0],
       reject("bad_chunk_index"))
    rq("max-chunks", f"{MAX_REQUEST_CHUNKS} chunks in all (the most)", body((0, 4000), (0, 96)), 8192, None,
       accept(ranges=[[0, 4000], [0, 96]]))
    rq("too-many-chunks", f"{MAX_REQUEST_CHUNKS + 1} chunks in all", body((0, 4000), (0, 97)), 8192, None,
       reject("invalid_field", field="ranges"))
    rq("no-ranges", "an empty list of ranges", body(), 3, None, reject("invalid_field", field="ranges"))
    rq("too-many-ranges", "1025 ranges", body(*[(0, 1)] * 1025), 3, None, reject("invalid_field", field="ranges"))
    rq("empty-range", "start = end", body((1, 1),), 3, None, reject("invalid_field", field="ranges[0].end"))
    rq("negative-start", "start -1", body((-1, 1),), 3, None, reject("invalid_field", field="ranges[0].start"))
    rq("end-over-max", f"end {MAX_CHUNKS + 1}", body((0, MAX_CHUNKS + 1),), 3, None,
       reject("invalid_field", field="ranges[0].end"))
    rq("missing-field", "a range without end", cbor.encode({"ranges": [{"start": 0}]}), 3, None,
       reject("missing_field"))
    rq("not-cbor", "a body that is not one CBOR item", b"\xa1", 3, None, reject("truncated"))

    def de(name: str, desc: str, raw: bytes, exp: dict[str, Any]) -> None:
        v.append(vector(f"data-error-{name}", desc, "transfer.data.error", {"body_hex": raw.hex()}, exp))

    for reason in ("bad_chunk_index", "not_held", "bad_frame", "oversize"):
        d = DataError(reason=reason, detail="")
        de(reason.replace("_", "-"), f"ERROR {reason}", d.encode(), accept(reason=reason, detail=""))
    de("reason-empty", "an empty reason", cbor.encode({"reason": "", "detail": ""}),
       reject("invalid_field", field="reason"))
    de("detail-long", "a detail of 1025 characters", cbor.encode({"reason": "not_held", "detail": "x" * 1025}),
       reject("invalid_field", field="detail"))
    de("missing-detail", "no detail", cbor.encode({"reason": "not_held"}), reject("missing_field"))
    return v


def generate() -> dict[str, Any]:
    key = key_from_seed(seed("transfer/provider"))
    signer = peer_id_from_proto_key(public_key_proto_of(key))
    other = key_from_seed(seed("transfer/other"))
    data = _blob()
    hashes = chunk_hashes(data, CS)
    secret = hashlib.sha256(b"cpn transfer vector secret").digest()
    ticket_id = hashlib.sha256(b"cpn transfer vector ticket").digest()[:16]
    v = _prefix_vectors()
    v += _control_vectors(key, signer, other, data, hashes, secret, ticket_id)
    v += _chunk_list_vectors(data, hashes)
    v += _data_plane_vectors(data, hashes, secret, ticket_id)
    v += _path_vectors()
    v += _punch_role_vectors()
    return vector_file("transfer", "transfer.md", 6, v)


def _punch_role_vectors() -> list[dict[str, Any]]:
    """Who sprays, who probes, and which pairs punch (spec/transfer.md section 3.7)."""
    op = "transfer.punch.role"
    cases = [
        ("symmetric-eim", "symmetric", "private", "probe", "a symmetric NAT sprays; with a prober: a punch"),
        ("eim-symmetric", "eim", "private", "spray", "an EIM NAT probes; with a sprayer: a punch"),
        ("firewall-symmetric", "none", "private", "spray", "private without NAT (a filter) probes"),
        ("eim-eim", "eim", "unknown", "probe", "two probers: no punch (DCUtR's case)"),
        ("symmetric-symmetric", "symmetric", "private", "spray", "two sprayers: no punch"),
        ("public", "none", "public", "spray", "a public node takes no role"),
        ("public-eim", "eim", "public", "spray", "public whatever identify says: no role"),
        ("unknown-nat", "unknown", "private", "spray", "an unknown NAT type: no role"),
        ("none-unknown", "none", "unknown", None, "no NAT, reachability not known yet: no role"),
    ]
    out = []
    for name, nat, status, peer, desc in cases:
        role = punch_role(nat, status)
        out.append(vector(f"punch-role-{name}", desc, op, {"nat_type": nat, "status": status, "peer_role": peer},
                          accept(role=role, punch=complementary(role, peer))))
    return out


def _path_vectors() -> list[dict[str, Any]]:
    """The fetcher's choice among a Ticket's paths (it knows ``tcp`` and ``stream``)."""
    op = "transfer.ticket.paths"

    def pv(name: str, desc: str, paths: list[str], exp: dict[str, Any]) -> dict[str, Any]:
        return vector(f"paths-{name}", desc, op, {"paths": paths, "known": ["tcp", "stream"]}, exp)

    return [
        pv("both", "tcp first, then stream: both tried in that order", ["tcp", "stream"],
           accept(tried=["tcp", "stream"])),
        pv("stream-first", "the holder's order is kept", ["stream", "tcp"], accept(tried=["stream", "tcp"])),
        pv("unknown-skipped", "an unknown path is skipped", ["quic-punch", "stream"], accept(tried=["stream"])),
        pv("none-usable", "only unknown paths: the source fails", ["quic-punch"],
           reject("no_usable_path")),
    ]
