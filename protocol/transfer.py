"""Content-addressed chunk transfer (spec/transfer.md): the one import for every user.

Sans-IO core of spec/transfer.md, one concern per module; this module only
gathers their names, so ``from protocol.transfer import X`` works for all of
them:

* :mod:`protocol.transfer_messages`: the **control messages** (tags 64-95),
  signed envelopes on the libp2p stream ``/cpn/transfer/0.3.0`` (``Want``/
  ``Have``, ``GetChunkList``/``ChunkList``, ``TicketRequest``/``Ticket``,
  ``Offer``/``OfferResult``, ``TransferError``, ``WhoHas``/``Holders``/
  ``FetchGrant``/``Present``), their limits, and the chunk bitmaps of ``Have``;
* :mod:`protocol.transfer_frames`: the **data plane**, a plaintext preamble
  naming the ticket, then AES-256-GCM sealed frames (requests for chunk
  ranges, chunks, end, stop, errors) and the server's checks of both;
* :mod:`protocol.transfer_punch`: the **punch** data path (tags 77-79):
  a birthday-paradox TCP punch between a symmetric NAT and an EIM one;
* :mod:`protocol.transfer_chunklist`: chunk lists in pages (responder and
  initiator) and the check of each received chunk against its entry;
* :mod:`protocol.transfer_scheduler`: **ChunkScheduler**, pure state deciding
  which source fetches which chunk, penalising a source that sent a corrupt
  chunk and reassigning it.

Bulk data leaves libp2p because a py-libp2p stream moves ~100 MiB/s while raw
TCP moves >1 GiB/s; the control plane stays on libp2p (authenticated peers).
"""

from __future__ import annotations

from .transfer_chunklist import ChunkListAssembler, check_chunk, chunk_list_page
from .transfer_frames import (
    DATA_BODY_LIMITS,
    HEADER_SIZE,
    MAGIC,
    MAX_BODY,
    MAX_CONTROL_BODY,
    MAX_RANGES,
    MAX_REQUEST_CHUNKS,
    PREAMBLE_SIZE,
    TAG_SIZE,
    VERSION,
    ChunkRange,
    DataError,
    FrameOpener,
    FrameSealer,
    FrameType,
    Request,
    check_empty_body,
    check_ticket,
    decode_header,
    decode_preamble,
    derive_keys,
    encode_header,
    encode_preamble,
    parse_request,
    ranges_of,
)
from .transfer_messages import (
    CONTROL_LIMITS,
    DATA_PROTOCOL_ID,
    KNOWN_PATHS,
    MAX_CHUNK_LIST_PAGE,
    MAX_CHUNKS,
    MAX_CONTROL_FRAME,
    MAX_GRANT_TTL,
    MAX_GRANTS,
    MAX_PARTIAL,
    MAX_PATHS,
    MAX_WANT,
    PATH_PUNCH,
    PATH_STREAM,
    PATH_TCP,
    PROTOCOL_ID,
    ChunkList,
    Direction,
    FetchGrant,
    GetChunkList,
    Have,
    HaveEntry,
    HolderEntry,
    Holders,
    Offer,
    OfferResult,
    Present,
    Ticket,
    TicketRequest,
    TransferError,
    Want,
    WhoHas,
    bitmap_from_indexes,
    indexes_from_bitmap,
    usable_paths,
)
from .transfer_punch import (
    MAX_PROBES,
    MAX_SPRAY,
    PORT_MAX,
    PORT_MIN,
    PORT_SPACE,
    PROBE_ROUNDS,
    PROBES_PER_ROUND,
    PUNCH_PROTOCOL_ID,
    PUNCH_S,
    ROLE_PROBE,
    ROLE_SPRAY,
    ROLES,
    ROUND_S,
    SPRAY_SOCKETS,
    PunchGo,
    PunchReply,
    PunchRequest,
    complementary,
    probe_ports,
    punch_role,
    success_probability,
)
from .transfer_scheduler import ChunkScheduler, SourceState

__all__ = [
    # control messages (protocol.transfer_messages)
    "PROTOCOL_ID",
    "MAX_CONTROL_FRAME",
    "CONTROL_LIMITS",
    "MAX_CHUNKS",
    "MAX_CHUNK_LIST_PAGE",
    "MAX_WANT",
    "MAX_PARTIAL",
    "MAX_GRANTS",
    "MAX_GRANT_TTL",
    "Direction",
    "HaveEntry",
    "Want",
    "Have",
    "GetChunkList",
    "ChunkList",
    "TicketRequest",
    "Ticket",
    "Offer",
    "OfferResult",
    "TransferError",
    "WhoHas",
    "Holders",
    "HolderEntry",
    "FetchGrant",
    "Present",
    "bitmap_from_indexes",
    "indexes_from_bitmap",
    "DATA_PROTOCOL_ID",
    "PATH_TCP",
    "PATH_STREAM",
    "PATH_PUNCH",
    "KNOWN_PATHS",
    "MAX_PATHS",
    "usable_paths",
    # punched TCP (protocol.transfer_punch)
    "PUNCH_PROTOCOL_ID",
    "ROLE_SPRAY",
    "ROLE_PROBE",
    "ROLES",
    "PORT_MIN",
    "PORT_MAX",
    "PORT_SPACE",
    "SPRAY_SOCKETS",
    "PROBES_PER_ROUND",
    "PROBE_ROUNDS",
    "MAX_SPRAY",
    "MAX_PROBES",
    "ROUND_S",
    "PUNCH_S",
    "PunchRequest",
    "PunchReply",
    "PunchGo",
    "punch_role",
    "complementary",
    "probe_ports",
    "success_probability",
    # data plane (protocol.transfer_frames)
    "MAX_RANGES",
    "MAX_REQUEST_CHUNKS",
    "ChunkRange",
    "Request",
    "DataError",
    "FrameType",
    "MAGIC",
    "VERSION",
    "PREAMBLE_SIZE",
    "HEADER_SIZE",
    "TAG_SIZE",
    "MAX_BODY",
    "MAX_CONTROL_BODY",
    "DATA_BODY_LIMITS",
    "encode_preamble",
    "decode_preamble",
    "encode_header",
    "decode_header",
    "derive_keys",
    "FrameSealer",
    "FrameOpener",
    "check_ticket",
    "check_empty_body",
    "parse_request",
    "ranges_of",
    # chunk lists (protocol.transfer_chunklist)
    "check_chunk",
    "chunk_list_page",
    "ChunkListAssembler",
    # scheduling (protocol.transfer_scheduler)
    "SourceState",
    "ChunkScheduler",
]
