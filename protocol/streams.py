"""The libp2p protocol IDs CPN speaks, and the frame limits of each stream.

One place for these wire facts, so the daemon and a second implementation
read them from the same table (spec/README.md lists them too).  Every stream
carries uvarint-length-prefixed frames; a frame longer than its stream's
limit is refused before it is read (reason ``oversize``).
"""

from __future__ import annotations

from typing import Final

from . import cbor
from .negotiation_state import MAX_FRAME as NEGOTIATE_FRAME_LIMIT
from .transfer import PROTOCOL_ID as TRANSFER_PROTOCOL

__all__ = [
    "ADVERT_PROTOCOL",
    "NEGOTIATE_PROTOCOL",
    "STATUS_PROTOCOL",
    "JOB_PROTOCOL",
    "TRANSFER_PROTOCOL",
    "KAD_PROTOCOL",
    "ADVERT_REQUEST_LIMIT",
    "NEGOTIATE_FRAME_LIMIT",
    "JOB_FRAME_LIMIT",
    "JOB_FRAME_LIMITS",
]

#: A node's signed advert, fetched directly (spec/dht.md section 3).
ADVERT_PROTOCOL: Final = "/cpn/advert/0.1.0"
#: Offer, quote or refusal, accept, agreement (spec/negotiation.md).
NEGOTIATE_PROTOCOL: Final = "/cpn/negotiate/0.1.0"
#: Provider-to-submitter job status events (spec/negotiation.md).
STATUS_PROTOCOL: Final = "/cpn/negotiate/status/0.1.0"
#: Watch, cancel and settle an agreed job (spec/jobflow.md).
JOB_PROTOCOL: Final = "/cpn/job/0.1.0"
#: The standard libp2p Kademlia DHT (so stock libp2p nodes can find providers).
KAD_PROTOCOL: Final = "/ipfs/kad/1.0.0"

#: Bytes in an advert request frame (it is empty).
ADVERT_REQUEST_LIMIT: Final = 64
#: Bytes in one job-stream frame (a Result with 1024 outputs fits).
JOB_FRAME_LIMIT: Final = 4 << 20
JOB_FRAME_LIMITS: Final = cbor.Limits(max_size=JOB_FRAME_LIMIT, max_depth=16, max_items=4096)
