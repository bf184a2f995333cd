"""CPN protocol core: sans-IO.  No module here imports trio, libp2p, sockets,
asyncio, time or random: time, keys and randomness are parameters.

Modules: ``cbor`` (deterministic CBOR), ``wire`` (typed structs and the message
registry), ``identity`` (libp2p peer IDs), ``envelope`` (signed envelopes),
``errors``.  Feature modules add their messages to the same registry.
"""

from .errors import LocalProtocolError, ProtocolError, ValidationError

__all__ = ["ProtocolError", "LocalProtocolError", "ValidationError"]
PROTOCOL_VERSION = "0.1"
