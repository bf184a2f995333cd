"""Vectors for spec/transfer.md.

Operations (see spec/transfer.md, "Test vectors"):

* ``transfer.message.open``: open the signed control message in ``envelope_hex``
  (any transfer type, signer ``signer``); accept gives ``type`` and the
  decoded ``fields`` (lossless JSON form).
* ``transfer.chunk_list.verify``: the concatenated 32-byte entries in
  ``hashes_hex`` must match ``size``, ``chunk_size`` and ``root``, and the
  last entry must be ``digest``.
* ``transfer.keys.derive``: per-direction frame keys from a ticket.
* ``transfer.preamble.decode``: the data-connection preamble; gives ``ticket_id_hex``.
* ``transfer.frame.open``: open data frame ``frame_hex`` (header || ciphertext)
  sent by ``sender`` ("client" or "server") as frame number ``counter`` of
  that direction, under the keys of ``secret_hex``/``ticket_id_hex``; for a
  CHUNK frame, check the plaintext against ``chunk_hashes_hex`` (the chunk
  list of a blob of ``blob_size`` bytes in ``chunk_size`` chunks).  Accept gives
  ``type``, ``index`` and ``body_hex``.
"""

from __future__ import annotations

import hashlib
from typing import Any

from protocol import cbor
from protocol.chunks import chunk_hashes, chunk_root, digest_of
from protocol.envelope import public_key_proto_of, seal, signing_bytes
from protocol.identity import peer_id_from_proto_key
from protocol.transfer import (
    ChunkList,
    ChunkRange,
    FetchGrant,
    FrameSealer,
    FrameType,
    Have,
    HaveEntry,
    HolderEntry,
    Holders,
    Present,
    Request,
    Ticket,
    Want,
    WhoHas,
    derive_keys,
    encode_header,
    encode_preamble,
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


def generate() -> dict[str, Any]:
    key = key_from_seed(seed("transfer/provider"))
    signer = peer_id_from_proto_key(public_key_proto_of(key))
    other = key_from_seed(seed("transfer/other"))
    data = _blob()
    hashes = chunk_hashes(data, CS)
    digest, root = digest_of(data), chunk_root(hashes)
    secret = hashlib.sha256(b"cpn transfer vector secret").digest()
    ticket_id = hashlib.sha256(b"cpn transfer vector ticket").digest()[:16]
    c2s, s2c = derive_keys(secret, ticket_id)
    v: list[dict[str, Any]] = []

    # ---- control messages
    msgs: list[tuple[str, str, Message]] = [
        ("want", "a Want for one blob", Want(digests=(digest,))),
        ("have-complete", "a Have: the whole blob", Have(blobs=(HaveEntry(digest=digest, size=len(data), chunk_size=CS, complete=True, bitmap=b""),))),
        ("have-partial", "a Have: chunks 0 and 2 of 3 (bitmap LSB first)", Have(blobs=(HaveEntry(digest=digest, size=len(data), chunk_size=CS, complete=False, bitmap=b"\x05"),))),
        ("chunk-list", "the chunk list of a 3-chunk blob", ChunkList(digest=digest, size=len(data), chunk_size=CS, hashes=b"".join(hashes))),
        ("ticket", "a data-plane ticket", Ticket(ticket_id=ticket_id, secret=secret, digest=digest, host="127.0.0.1", port=40123, expires_at=NOW + 60)),
    ]
    # owner-vouched sources: the owner (signer) grants `other` to fetch from `holder`
    grantee = peer_id_from_proto_key(public_key_proto_of(other))
    holder = peer_id_from_proto_key(public_key_proto_of(key_from_seed(seed("transfer/holder"))))
    grant = FetchGrant(digest=digest, grantee=grantee, holder=holder, expires_at=NOW + 600)
    grant_env = seal(grant, key).raw
    msgs += [
        ("who-has", "WhoHas: which other peers hold this blob", WhoHas(digests=(digest,))),
        ("fetch-grant", "FetchGrant signed by the blob's owner: grantee may fetch it from holder", grant),
        ("holders", "Holders: one holder with the owner's grant and an address",
         Holders(holders=(HolderEntry(grant=grant_env, addrs=("/ip4/127.0.0.1/tcp/4001",)),))),
        ("present", "Present: the owner's grant, shown to the holder", Present(grant=grant_env)),
    ]
    for name, desc, msg in msgs:
        v.append(_open_vec(f"message-{name}", desc, seal(msg, key).raw, signer, _accept_msg(msg)))
    g = grant.to_wire()
    v.append(_open_vec("message-fetch-grant-self", "a FetchGrant whose grantee is the holder",
                       _raw_envelope(key, dict(g, grantee=holder), 75, "cpn/transfer/fetch-grant"), signer,
                       reject("invalid_field")))
    v.append(_open_vec("message-fetch-grant-bad-peer", "a FetchGrant whose grantee is not a peer ID",
                       _raw_envelope(key, dict(g, grantee="not-a-peer"), 75, "cpn/transfer/fetch-grant"), signer,
                       reject("bad_peer_id")))
    h = Holders(holders=(HolderEntry(grant=grant_env, addrs=()),)).to_wire()
    many = [dict(h["holders"][0], addrs=["/ip4/127.0.0.1/tcp/1"] * 9)]
    v.append(_open_vec("message-holders-too-many-addrs", "a holder entry with 9 addresses",
                       _raw_envelope(key, dict(h, holders=many), 74, "cpn/transfer/holders"), signer,
                       reject("invalid_field")))
    cl = ChunkList(digest=digest, size=len(data), chunk_size=CS, hashes=b"".join(hashes)).to_wire()
    bad = dict(cl, hashes=cl["hashes"][:-1])
    v.append(_open_vec("message-chunk-list-short", "a chunk list one byte short of 3 hashes", _raw_envelope(key, bad, 67, "cpn/transfer/chunk-list"), signer, reject("invalid_field")))
    t = Ticket(ticket_id=ticket_id, secret=secret, digest=digest, host="127.0.0.1", port=40123, expires_at=NOW).to_wire()
    v.append(_open_vec("message-ticket-short-secret", "a ticket whose secret is 16 bytes", _raw_envelope(key, dict(t, secret=secret[:16]), 69, "cpn/transfer/ticket"), signer, reject("invalid_field")))
    v.append(_open_vec("message-want-empty", "a Want for nothing", _raw_envelope(key, {"digests": []}, 64, "cpn/transfer/want"), signer, reject("invalid_field")))
    v.append(_open_vec("message-have-stray-bitmap-bits", "a partial Have with a bit beyond the last chunk", _raw_envelope(key, {"blobs": [{"digest": digest, "size": len(data), "chunk_size": CS, "complete": False, "bitmap": b"\x0d"}]}, 65, "cpn/transfer/have"), signer, reject("bad_bitmap")))
    v.append(_open_vec("message-wrong-signer", "a valid Want signed by another peer than the stream's", seal(Want(digests=(digest,)), other).raw, signer, reject("wrong_signer")))

    # ---- chunk lists
    def cl_vec(name: str, desc: str, hs: bytes, exp: dict[str, Any], size: int = len(data), rt: str = root) -> None:
        v.append(vector(f"chunk-list-{name}", desc, "transfer.chunk_list.verify",
                        {"hashes_hex": hs.hex(), "size": size, "chunk_size": CS, "root": rt, "digest": digest}, exp))

    cl_vec("valid", "the chunk list matches the signed root", b"".join(hashes), accept())
    swapped = b"".join([hashes[1], hashes[0], hashes[2]])
    cl_vec("reordered", "the right hashes in the wrong order", swapped, reject("bad_chunk_list"))
    forged = b"".join([hashes[0], hashlib.sha256(b"evil").digest(), hashes[2]])
    cl_vec("forged-hash", "one hash replaced (a source lying about chunk 1)", forged, reject("bad_chunk_list"))
    cl_vec("too-few", "two hashes for a three-chunk blob", b"".join(hashes[:2]), reject("bad_chunk_list"))
    inconsistent = [hashes[0], hashes[1], hashlib.sha256(b"other blob").digest()]
    cl_vec("last-not-digest", "a list matching its root whose last entry is not the blob digest (root and digest disagree)",
           b"".join(inconsistent), reject("bad_chunk_list"), rt=chunk_root(inconsistent))

    # ---- keys and preamble
    v.append(vector("keys-derive", "HKDF-SHA256(secret, salt=ticket_id, info='cpn/transfer/data/v1'), 64 bytes split in two",
                    "transfer.keys.derive", {"secret_hex": secret.hex(), "ticket_id_hex": ticket_id.hex()},
                    accept(client_to_server_key_hex=c2s.hex(), server_to_client_key_hex=s2c.hex())))
    pre = encode_preamble(ticket_id)
    v.append(vector("preamble-valid", "magic CPNT, version 1, three zero bytes, ticket id", "transfer.preamble.decode",
                    {"bytes_hex": pre.hex()}, accept(ticket_id_hex=ticket_id.hex())))
    v.append(vector("preamble-bad-magic", "not a CPN data connection", "transfer.preamble.decode",
                    {"bytes_hex": (b"GET " + pre[4:]).hex()}, reject("bad_preamble")))
    v.append(vector("preamble-bad-version", "version 2 is not defined", "transfer.preamble.decode",
                    {"bytes_hex": (pre[:4] + b"\x02" + pre[5:]).hex()}, reject("bad_version")))

    # ---- frames
    base = {"secret_hex": secret.hex(), "ticket_id_hex": ticket_id.hex(), "chunk_hashes_hex": b"".join(hashes).hex(),
            "blob_size": len(data), "chunk_size": CS}

    def fr(name: str, desc: str, frame: bytes, sender: str, counter: int, exp: dict[str, Any]) -> None:
        v.append(vector(f"frame-{name}", desc, "transfer.frame.open",
                        {**base, "sender": sender, "counter": counter, "frame_hex": frame.hex()}, exp))

    req_body = Request(ranges=(ChunkRange(start=0, end=3),)).encode()
    fr("request", "the client's first frame: a Request for chunks 0..2", _frame(FrameSealer(c2s), FrameType.REQUEST, 0, req_body), "client", 0,
       accept(type="REQUEST", index=0, body_hex=req_body.hex()))
    srv = FrameSealer(s2c)
    chunk0 = data[:CS]
    f0 = _frame(srv, FrameType.CHUNK, 0, chunk0)
    fr("chunk", "chunk 0, the server's first frame", f0, "server", 0, accept(type="CHUNK", index=0, body_hex=chunk0.hex()))
    last = data[2 * CS:]
    f1 = _frame(srv, FrameType.CHUNK, 2, last)
    fr("chunk-short-last", "the last chunk (100 bytes) as the server's second frame", f1, "server", 1, accept(type="CHUNK", index=2, body_hex=last.hex()))
    fr("chunk-replayed", "frame 0 replayed where frame 1 is expected (nonce mismatch)", f0, "server", 1, reject("bad_frame_tag"))
    tampered = bytearray(f0)
    tampered[40] ^= 1
    fr("chunk-tampered", "one ciphertext bit flipped", bytes(tampered), "server", 0, reject("bad_frame_tag"))
    relabel = encode_header(FrameType.CHUNK, 1, len(chunk0) + 16) + f0[12:]
    fr("chunk-relabelled", "the header's chunk index changed from 0 to 1 (header is authenticated)", relabel, "server", 0, reject("bad_frame_tag"))
    wrong = bytearray(chunk0)
    wrong[0] ^= 0xFF
    fr("chunk-corrupt", "an authentic frame whose chunk does not match the chunk list (a lying source)",
       _frame(FrameSealer(s2c), FrameType.CHUNK, 0, bytes(wrong)), "server", 0, reject("corrupt_chunk"))
    wrong_last = bytearray(last)
    wrong_last[-1] ^= 1
    fr("chunk-last-corrupt", "an authentic last chunk with its final byte changed (fails the whole-blob SHA-256)",
       _frame(FrameSealer(s2c), FrameType.CHUNK, 2, bytes(wrong_last)), "server", 0, reject("corrupt_chunk"))
    fr("chunk-wrong-direction", "a CHUNK frame sent by the client", _frame(FrameSealer(c2s), FrameType.CHUNK, 0, chunk0), "client", 0, reject("bad_frame"))
    fr("chunk-wrong-key", "a server frame sealed with the client-to-server key", _frame(FrameSealer(c2s), FrameType.END, 0, b""), "server", 0, reject("bad_frame_tag"))
    fr("oversize", "a header announcing a body beyond 16 MiB + 16", encode_header(FrameType.CHUNK, 0, (16 << 20) + 17), "server", 0, reject("oversize"))
    fr("unknown-type", "frame type 9", bytes([9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 16]) + bytes(16), "server", 0, reject("bad_frame"))
    fr("reserved-bits", "non-zero reserved header byte", bytes([2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 16]) + bytes(16), "server", 0, reject("bad_frame"))
    fr("end-with-index", "an END frame carrying a chunk index", encode_header(FrameType.END, 5, 16) + bytes(16), "server", 0, reject("bad_frame"))
    return vector_file("transfer", "transfer.md", 1, v)
