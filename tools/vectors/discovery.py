"""Discovery test vectors (spec/discovery.md): advert and tombstone records,
record selection, and matching.

Operations (spec/discovery.md, "Test vectors"):

``record.open``
    input ``envelope_hex``, ``now``, optional ``peer_id`` (the peer the record
    must be for).  Accept: ``type`` ("Advert" | "Tombstone"), ``signer``,
    ``seq``.  Reject: the reason.
``record.select``
    input ``records_hex`` (list), ``now``.  Accept: ``index`` of the record
    that wins.  Reject (none valid): ``no_valid_record``.
``match.evaluate``
    input ``advert_hex`` (CBOR of an Advert payload), ``requirement_hex``
    (CBOR of a job-spec ``Resources``), ``now``, ``max_price``, ``run_s``.
    Accept: ``failures`` (constraint names, in order; empty = fits),
    ``gpu_uuids`` chosen, ``hourly_cost``.

Keys come from fixed seeds, times are fixed integers: the file is reproducible.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import cbor
from protocol.advert import (
    MAX_LIFETIME,
    MAX_RECORD_SIZE,
    Advert,
    FreeCapacity,
    Price,
    Tombstone,
    make_advert,
)
from protocol.envelope import public_key_proto_of, seal, signing_bytes
from protocol.identity import peer_id_from_proto_key
from protocol.jobspec import GpuRequirement, Resources
from protocol.matching import evaluate
from protocol.resources import GpuInfo, Metric, ResourceSet

from . import NOW, accept, reject, seed, vector, vector_file

AREA = "discovery"
SPEC = "discovery.md"
REVISION = 1

PROVIDER_SEED = seed("discovery provider")
OTHER_SEED = seed("discovery other")


def key(s: bytes) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(s)


def peer(k: Ed25519PrivateKey) -> str:
    return peer_id_from_proto_key(public_key_proto_of(k))


def _gpu(i: int, model: str, name: str, mib: int, cc: str, *, mig: bool = False) -> GpuInfo:
    uuid = f"GPU-{i:08x}-0000-4000-8000-{i:012x}"
    return GpuInfo(
        vendor="nvidia",
        model=model,
        name=name,
        uuid=uuid,
        memory_mib=mib,
        compute_capability=cc,
        mig=mig,
    )


RESOURCES = ResourceSet(
    cpu_cores=32,
    cpu_model="AMD EPYC 9654 96-Core Processor",
    memory_mib=262144,
    disk_mib=500_000,
    gpus=(
        _gpu(1, "h100", "NVIDIA H100 80GB HBM3", 81559, "9.0"),
        _gpu(2, "h100", "NVIDIA H100 80GB HBM3", 81559, "9.0"),
        _gpu(3, "l4", "NVIDIA L4", 23034, "8.9"),
    ),
)
METRICS = (
    Metric(type="gpu-count", unit="count", source="nominal", value=3),
    Metric(type="gpu-utilisation", unit="percent", source="measured", value=7),
)
PRICE = Price(gpu_hour=2_500_000, cpu_core_hour=20_000, memory_gib_hour=2_000)


def sample_advert(k: Ed25519PrivateKey | None = None, **over: Any) -> Advert:
    """The provider's advert issued at NOW with a 300 s lifetime; ``over`` replaces fields."""
    k = k or key(PROVIDER_SEED)
    adv = make_advert(
        peer_id=peer(k),
        addrs=["/ip4/127.0.0.1/tcp/40001", "/ip4/127.0.0.1/udp/40001/quic-v1"],
        resources=RESOURCES,
        metrics=METRICS,
        price=PRICE,
        seq=7,
        now=NOW,
    )
    return adv.replace(**over) if over else adv


def _sign_raw(k: Ed25519PrivateKey, tag: int, domain: str, payload: bytes) -> bytes:
    """An envelope around arbitrary payload bytes (to build malformed records)."""
    sig = k.sign(signing_bytes(domain, tag, payload))
    return cbor.encode({"key": public_key_proto_of(k), "payload": payload, "sig": sig, "type": tag})


def _seeds(**named: bytes) -> dict[str, str]:
    return {f"{n}_seed_hex": s.hex() for n, s in named.items()}


def _open(
    name: str, description: str, raw: bytes, now: int, expected: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    return vector(
        name, description, "record.open", {"envelope_hex": raw.hex(), "now": now, **extra}, expected
    )


def _open_vectors() -> list[dict[str, Any]]:
    prov, other = key(PROVIDER_SEED), key(OTHER_SEED)
    pid = peer(prov)
    adv = sample_advert(prov)
    good = seal(adv, prov).raw
    tomb = seal(Tombstone(peer_id=pid, seq=8, issued_at=NOW + 100), prov).raw
    ok = accept(type="Advert", signer=pid, seq=7)
    out = [
        _open(
            "advert-valid",
            "A fresh advert signed by the peer it names.",
            good,
            NOW + 1,
            ok,
            **_seeds(signer=PROVIDER_SEED),
        ),
        _open(
            "advert-valid-expected-peer",
            "Fetched for the peer it names.",
            good,
            NOW + 1,
            ok,
            peer_id=pid,
        ),
        _open("advert-last-valid-second", "Valid up to expires_at - 1.", good, NOW + 299, ok),
        _open(
            "advert-expired",
            "now == expires_at: expired (no grace period).",
            good,
            NOW + 300,
            reject("expired"),
        ),
        _open(
            "advert-clock-skew-tolerated",
            "issued_at up to 30 s in the future is tolerated.",
            good,
            NOW - 30,
            ok,
        ),
        _open(
            "advert-not-yet-valid",
            "issued_at more than 30 s in the future.",
            good,
            NOW - 31,
            reject("not_yet_valid"),
        ),
        _open(
            "advert-lifetime-too-long",
            f"expires_at - issued_at > {MAX_LIFETIME} s.",
            seal(adv.replace(expires_at=NOW + MAX_LIFETIME + 1), prov).raw,
            NOW + 1,
            reject("lifetime_too_long"),
        ),
        _open(
            "advert-lifetime-max",
            f"A lifetime of exactly {MAX_LIFETIME} s is allowed.",
            seal(adv.replace(expires_at=NOW + MAX_LIFETIME), prov).raw,
            NOW + 1,
            ok,
        ),
        _open(
            "advert-wrong-signer",
            "Validly signed, but by a key other than the peer it names.",
            seal(adv, other).raw,
            NOW + 1,
            reject("wrong_signer"),
            **_seeds(signer=OTHER_SEED),
        ),
        _open(
            "advert-wrong-peer",
            "Valid record, but not for the peer the finder asked about.",
            good,
            NOW + 1,
            reject("wrong_peer"),
            peer_id=peer(other),
        ),
    ]
    forged = cbor.decode(seal(adv, other).raw)
    forged["key"] = public_key_proto_of(prov)
    out.append(
        _open(
            "advert-forged-signature",
            "Claims the provider's key; signature made with another key.",
            cbor.encode(forged),
            NOW + 1,
            reject("bad_signature"),
        )
    )
    flipped = bytearray(good)
    flipped[-70] ^= 0x01  # inside the payload: signature no longer matches
    out.append(
        _open(
            "advert-tampered-payload",
            "One payload byte changed after signing.",
            bytes(flipped),
            NOW + 1,
            reject("bad_signature"),
        )
    )
    wire = adv.to_wire()
    extra = dict(wire, color="blue")
    out.append(
        _open(
            "advert-unknown-field",
            "Payload map has a field the schema lacks.",
            _sign_raw(prov, Advert.TYPE, Advert.DOMAIN, cbor.encode(extra)),
            NOW + 1,
            reject("unknown_field"),
        )
    )
    missing = {k: v for k, v in wire.items() if k != "price"}
    out.append(
        _open(
            "advert-missing-field",
            "Payload map lacks the price field.",
            _sign_raw(prov, Advert.TYPE, Advert.DOMAIN, cbor.encode(missing)),
            NOW + 1,
            reject("missing_field"),
        )
    )
    bad_free = dict(wire, free=dict(wire["free"], gpu_uuids=["GPU-not-listed"]))
    out.append(
        _open(
            "advert-free-gpu-not-listed",
            "free.gpu_uuids names a GPU not in resources.",
            _sign_raw(prov, Advert.TYPE, Advert.DOMAIN, cbor.encode(bad_free)),
            NOW + 1,
            reject("invalid_field"),
        )
    )
    bad_type = dict(wire, seq="7")
    out.append(
        _open(
            "advert-seq-not-uint",
            "seq is text, not an integer.",
            _sign_raw(prov, Advert.TYPE, Advert.DOMAIN, cbor.encode(bad_type)),
            NOW + 1,
            reject("invalid_field"),
        )
    )
    out.append(
        _open(
            "record-not-an-envelope",
            "A CBOR array is not an envelope.",
            cbor.encode([1, 2, 3]),
            NOW + 1,
            reject("malformed"),
        )
    )
    out.append(
        _open(
            "record-oversize",
            f"Records are at most {MAX_RECORD_SIZE} bytes.",
            b"\x00" * (MAX_RECORD_SIZE + 1),
            NOW + 1,
            reject("oversize"),
        )
    )
    out.append(
        _open(
            "record-other-message-type",
            "A valid envelope of a non-discovery type (job spec, tag 1).",
            _sign_raw(prov, 1, "cpn/jobspec", cbor.encode({})),
            NOW + 1,
            reject("unexpected_type"),
        )
    )
    out += [
        _open(
            "tombstone-valid",
            "A withdrawal signed by the peer it names.",
            tomb,
            NOW + 101,
            accept(type="Tombstone", signer=pid, seq=8),
        ),
        _open(
            "tombstone-expired",
            f"Tombstones lapse {MAX_LIFETIME} s after issued_at.",
            tomb,
            NOW + 100 + MAX_LIFETIME,
            reject("expired"),
        ),
        _open(
            "tombstone-wrong-signer",
            "A tombstone for the provider signed by another key.",
            seal(Tombstone(peer_id=pid, seq=8, issued_at=NOW), other).raw,
            NOW + 1,
            reject("wrong_signer"),
        ),
    ]
    return out


def _select_vectors() -> list[dict[str, Any]]:
    prov, other = key(PROVIDER_SEED), key(OTHER_SEED)
    pid = peer(prov)
    a7 = seal(sample_advert(prov), prov).raw
    a8 = seal(sample_advert(prov, seq=8, issued_at=NOW + 10, expires_at=NOW + 310), prov).raw
    t8 = seal(Tombstone(peer_id=pid, seq=8, issued_at=NOW + 20), prov).raw
    t7 = seal(Tombstone(peer_id=pid, seq=7, issued_at=NOW + 20), prov).raw
    a9 = seal(sample_advert(prov, seq=9, issued_at=NOW + 30, expires_at=NOW + 330), prov).raw
    forged99 = seal(sample_advert(prov, seq=99), other).raw
    late = seal(sample_advert(prov, seq=5, issued_at=NOW + 200, expires_at=NOW + 500), prov).raw

    def sel(
        name: str, description: str, records: list[bytes], now: int, expected: dict[str, Any]
    ) -> dict[str, Any]:
        return vector(
            name,
            description,
            "record.select",
            {"records_hex": [r.hex() for r in records], "now": now},
            expected,
        )

    return [
        sel(
            "select-higher-seq",
            "The advert with the higher seq wins.",
            [a7, a8],
            NOW + 40,
            accept(index=1),
        ),
        sel(
            "select-tombstone-equal-seq",
            "A tombstone with seq >= the advert's withdraws it.",
            [a8, t8],
            NOW + 40,
            accept(index=1),
        ),
        sel(
            "select-tombstone-higher-seq",
            "A tombstone beats an older advert.",
            [t8, a7],
            NOW + 40,
            accept(index=0),
        ),
        sel(
            "select-advert-after-tombstone",
            "A newer advert beats an older tombstone (node restarted).",
            [t7, a9],
            NOW + 40,
            accept(index=1),
        ),
        sel(
            "select-ignores-forged",
            "A forged record never wins, whatever its seq.",
            [forged99, a7],
            NOW + 40,
            accept(index=1),
        ),
        sel(
            "select-ignores-expired",
            "An expired record never wins, whatever its seq.",
            [a9, late],
            NOW + 400,
            accept(index=1),
        ),
        sel(
            "select-none-valid",
            "Nothing valid to select.",
            [forged99, b"\xa0"],
            NOW + 40,
            reject("no_valid_record"),
        ),
    ]


def _match_vectors() -> list[dict[str, Any]]:
    adv = sample_advert(
        free=FreeCapacity(
            gpu_uuids=(RESOURCES.gpus[1].uuid, RESOURCES.gpus[2].uuid),
            cpu_millis=16000,
            memory_mib=131072,
            disk_mib=400_000,
        )
    )

    def req(
        count: int = 1,
        *,
        mem: int = 0,
        models: tuple[str, ...] = (),
        cc: str | None = None,
        cpu: int = 2000,
        ram: int = 8192,
    ) -> Resources:
        gpu = (
            None
            if count == 0
            else GpuRequirement(
                count=count,
                min_memory_mib=mem,
                vendor="nvidia",
                models=models,
                min_compute_capability=cc,
            )
        )
        return Resources(gpu=gpu, cpu_millis=cpu, memory_mib=ram, disk_mib=1024)

    cases: list[tuple[str, str, Resources, int | None, int | None]] = [
        (
            "match-fits-tightest-gpu",
            "One GPU with 16 GiB: the free L4 is chosen over the H100.",
            req(1, mem=16384),
            None,
            None,
        ),
        ("match-h100-free", "One H100: the free one.", req(1, models=("h100",)), None, None),
        (
            "match-gpu-free",
            "Two H100s exist but only one is free.",
            req(2, models=("h100",)),
            None,
            None,
        ),
        ("match-gpu-model", "No A100 at all.", req(1, models=("a100",)), None, None),
        ("match-gpu-mem", "No GPU here has 90 GiB.", req(1, mem=92160), None, None),
        (
            "match-gpu-mem-then-busy",
            "Two GPUs with 40 GiB: only the H100s qualify and one is busy.",
            req(2, mem=40960),
            None,
            None,
        ),
        (
            "match-gpu-cc",
            "Compute capability 10.0 is above every GPU here.",
            req(1, cc="10.0"),
            None,
            None,
        ),
        (
            "match-cpu-and-memory",
            "More cores and memory than the host has.",
            req(0, cpu=64000, ram=300000),
            None,
            None,
        ),
        (
            "match-cpu-free",
            "Within the host, but more CPU than is free now.",
            req(0, cpu=20000),
            None,
            None,
        ),
        ("match-price-within", "One GPU for an hour within max_price.", req(1), 2_600_000, 3600),
        ("match-price-over", "One GPU for an hour above max_price.", req(1), 2_500_000, 3600),
    ]
    out = []
    for name, description, r, max_price, run_s in cases:
        fit = evaluate(r, adv, now=NOW + 1, max_price=max_price, run_s=run_s)
        out.append(
            vector(
                name,
                description,
                "match.evaluate",
                {
                    "advert_hex": adv.encode().hex(),
                    "requirement_hex": r.encode().hex(),
                    "now": NOW + 1,
                    "max_price": max_price,
                    "run_s": run_s,
                },
                accept(
                    failures=list(fit.failures),
                    gpu_uuids=list(fit.gpu_uuids),
                    hourly_cost=fit.hourly_cost,
                ),
            )
        )
    expired = evaluate(req(1), adv, now=NOW + 300)
    out.append(
        vector(
            "match-expired",
            "An advert past expires_at never matches.",
            "match.evaluate",
            {
                "advert_hex": adv.encode().hex(),
                "requirement_hex": req(1).encode().hex(),
                "now": NOW + 300,
                "max_price": None,
                "run_s": None,
            },
            accept(failures=list(expired.failures), gpu_uuids=[], hourly_cost=expired.hourly_cost),
        )
    )
    return out


def generate() -> dict[str, Any]:
    return vector_file(AREA, SPEC, REVISION, _open_vectors() + _select_vectors() + _match_vectors())
