"""The libp2p protocol IDs CPN speaks, and the frame limits of each stream.

One place the daemon reads these wire facts from (spec/README.md lists
them too); the negotiation and transfer IDs are defined beside their state
machines and re-exported here.  Every stream
carries uvarint-length-prefixed frames; a frame longer than its stream's
limit is refused before it is read (reason ``oversize``).
"""

from __future__ import annotations

from typing import Final

from . import jobflow as _jobflow
from .dht_advert import ADVERT_PROTOCOL
from .negotiation_state import MAX_FRAME as NEGOTIATE_FRAME_LIMIT
from .negotiation_state import PROTOCOL_ID as NEGOTIATE_PROTOCOL
from .negotiation_state import STATUS_PROTOCOL_ID as STATUS_PROTOCOL
from .transfer import DATA_PROTOCOL_ID as TRANSFER_DATA_PROTOCOL
from .transfer import PROTOCOL_ID as TRANSFER_PROTOCOL

__all__ = [
    "ADVERT_PROTOCOL",
    "NEGOTIATE_PROTOCOL",
    "STATUS_PROTOCOL",
    "JOB_PROTOCOL",
    "TRANSFER_PROTOCOL",
    "TRANSFER_DATA_PROTOCOL",
    "KAD_PROTOCOL",
    "NEGOTIATE_FRAME_LIMIT",
    "JOB_FRAME_LIMIT",
    "JOB_FRAME_LIMITS",
]

#: Watch, cancel and settle an agreed job (spec/jobflow.md).
JOB_PROTOCOL: Final = "/cpn/job/0.1.0"
#: The standard libp2p Kademlia DHT (so stock libp2p nodes can find providers).
KAD_PROTOCOL: Final = "/ipfs/kad/1.0.0"

#: Bytes in one job-stream frame, and its decode limits (spec/jobflow.md).
JOB_FRAME_LIMIT: Final = _jobflow.MAX_FRAME
JOB_FRAME_LIMITS: Final = _jobflow.FRAME_LIMITS
