#!/usr/bin/env python3
"""Signed messages per second against raw Ed25519 sign/verify (single core).

    .venv/bin/python bench/signing.py [--seconds 0.5] [--json]

For two messages, a small one (a discovery ``Tombstone``, ~60 B payload) and a
job spec (the sample of tests/protocol, ~2 KB), it measures:

* raw Ed25519 ``sign`` / ``verify`` (cryptography) of exactly the bytes the
  envelope signs (domain-separated: ``protocol.envelope.signing_bytes``);
* ``seal`` (canonical CBOR encode + sign + envelope encode) and
  ``open_envelope`` (envelope decode + peer-ID derivation + verify + payload
  decode + validation), i.e. a whole signed message;

and the overhead of the protocol over the bare signature.  bench/protocol_core.py
has the broader per-operation view (CBOR, identifiers); this script answers
only "what does signing cost us beyond Ed25519 itself".  A benchmark, not a
test: nothing asserts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "protocol"))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from jobspec_samples import sample_spec  # noqa: E402

from protocol.advert import Tombstone  # noqa: E402
from protocol.envelope import open_envelope, seal, signing_bytes  # noqa: E402
from protocol.identity import peer_id_from_raw_key  # noqa: E402
from protocol.wire import Message  # noqa: E402


def rate(fn: Callable[[], object], seconds: float) -> float:
    n, start = 0, time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(20):
            fn()
        n += 20
        now = time.perf_counter()
        if now >= deadline:
            return n / (now - start)


def measure(name: str, msg: Message, key: Ed25519PrivateKey, seconds: float) -> dict[str, object]:
    payload = msg.encode()
    to_sign = signing_bytes(msg.DOMAIN, msg.TYPE, payload)
    public = key.public_key()
    sig = key.sign(to_sign)
    signed = seal(msg, key)
    cls = type(msg)
    raw_sign = rate(lambda: key.sign(to_sign), seconds)
    raw_verify = rate(lambda: public.verify(sig, to_sign), seconds)
    seal_rate = rate(lambda: seal(msg, key), seconds)
    open_rate = rate(lambda: open_envelope(signed.raw, expected=cls), seconds)
    return {
        "message": name,
        "payload_bytes": len(payload),
        "envelope_bytes": len(signed.raw),
        "raw_sign_per_s": round(raw_sign),
        "seal_per_s": round(seal_rate),
        "seal_vs_raw_sign": round(seal_rate / raw_sign, 2),
        "raw_verify_per_s": round(raw_verify),
        "open_per_s": round(open_rate),
        "open_vs_raw_verify": round(open_rate / raw_verify, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement (default 0.5)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    peer = peer_id_from_raw_key(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    messages: list[tuple[str, Message]] = [
        ("Tombstone (tag 17)", Tombstone(peer_id=peer, seq=1_700_000_000, issued_at=1_700_000_000)),
        ("JobSpec (tag 1)", sample_spec()),
    ]
    results = [measure(name, msg, key, args.seconds) for name, msg in messages]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    cols = [("message", "message"), ("payload_bytes", "payload B"), ("raw_sign_per_s", "raw sign/s"),
            ("seal_per_s", "seal/s"), ("seal_vs_raw_sign", "ratio"),
            ("raw_verify_per_s", "raw verify/s"), ("open_per_s", "open/s"),
            ("open_vs_raw_verify", "ratio")]  # fmt: skip
    rows = [[title for _, title in cols]]
    rows += [[f"{r[k]:,}" if isinstance(r[k], int) else str(r[k]) for k, _ in cols] for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    for row in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
