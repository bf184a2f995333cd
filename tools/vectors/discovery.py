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
    ContainerCapability,
    FreeCapacity,
    Price,
    Tombstone,
    all_free,
    make_advert,
)
from protocol.envelope import public_key_proto_of, seal, signing_bytes
from protocol.identity import peer_id_from_proto_key
from protocol.jobspec import GpuRequirement, Resources
from protocol.matching import Offer, evaluate, explain, rank
from protocol.resources import GpuInfo, Metric, ResourceSet

from . import NOW, accept, reject, seed, vector, vector_file

AREA = "discovery"
SPEC = "discovery.md"
REVISION = 4

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
            reject("invalid_field", field="free.gpu_uuids"),
        )
    )
    bad_type = dict(wire, seq="7")
    out.append(
        _open(
            "advert-seq-not-uint",
            "seq is text, not an integer.",
            _sign_raw(prov, Advert.TYPE, Advert.DOMAIN, cbor.encode(bad_type)),
            NOW + 1,
            reject("invalid_field", field="seq"),
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
    out += _more_open_vectors(prov, other, adv, wire)
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


def _more_open_vectors(
    prov: Ed25519PrivateKey, other: Ed25519PrivateKey, adv: Advert, wire: dict[str, Any]
) -> list[dict[str, Any]]:
    """Every check of spec/discovery.md section 2, and its order where two could fail."""
    pid = peer(prov)

    def signed_wire(w: dict[str, Any], k: Ed25519PrivateKey = prov) -> bytes:
        return _sign_raw(k, Advert.TYPE, Advert.DOMAIN, cbor.encode(w))

    def field(name: str, description: str, w: dict[str, Any], path: str) -> dict[str, Any]:
        return _open(name, description, signed_wire(w), NOW + 1, reject("invalid_field", field=path))

    gpus = wire["resources"]["gpus"]
    good = seal(adv, prov).raw
    flipped = cbor.decode(good)
    flipped["sig"] = bytes([flipped["sig"][0] ^ 1]) + flipped["sig"][1:]
    spec_env = _sign_raw(prov, 1, "cpn/jobspec", cbor.encode({}))
    spec_bad_sig = cbor.decode(spec_env)
    spec_bad_sig["sig"] = bytes(64)
    deep: Any = 0
    for _ in range(8):
        deep = [deep]
    return [
        _open("record-unknown-type", "An envelope of type 200 (not registered).",
              _sign_raw(prov, 200, "cpn/unknown", cbor.encode({})), NOW + 1, reject("unknown_type")),
        _open("record-type-before-signature", "A job spec envelope with a zero signature: the type is checked first.",
              cbor.encode(spec_bad_sig), NOW + 1, reject("unexpected_type")),
        _open("record-bad-key", "The envelope key is not an Ed25519 key.",
              cbor.encode(dict(cbor.decode(good), key=b"\x08\x02\x12\x20" + bytes(32))), NOW + 1, reject("bad_key")),
        _open("record-bad-key-before-signature", "A bad key and a flipped signature: the key first.",
              cbor.encode(dict(flipped, key=b"\x08\x02\x12\x20" + bytes(32))), NOW + 1, reject("bad_key")),
        _open("record-signature-before-schema", "An invalid payload whose signature does not verify: signature first.",
              cbor.encode(dict(cbor.decode(signed_wire(dict(wire, seq="x"))), sig=bytes(64))), NOW + 1,
              reject("bad_signature")),
        _open("record-too-deep", "A payload nested 9 levels: records are decoded with max_depth 8.",
              signed_wire(dict(wire, metrics=deep)), NOW + 1, reject("too_deep")),
        _open("record-too-many-items", "257 addresses: the item limit (256) comes before the field rule (16).",
              signed_wire(dict(wire, addrs=[f"/ip4/10.0.0.{i % 250}/tcp/{i}" for i in range(257)])), NOW + 1,
              reject("too_many_items")),
        _open("record-wrong-signer-before-wrong-peer", "Signed by another key and fetched for a third peer.",
              seal(adv, other).raw, NOW + 1, reject("wrong_signer"), peer_id=peer(key(seed("discovery third")))),
        _open("record-wrong-peer-before-not-yet-valid", "Fetched for another peer and issued in the future.",
              good, NOW - 31, reject("wrong_peer"), peer_id=peer(other)),
        _open("record-lifetime-before-expired", "A lifetime too long and already expired: lifetime first.",
              seal(adv.replace(expires_at=NOW + MAX_LIFETIME + 1), prov).raw, NOW + 700, reject("lifetime_too_long")),
        _open("record-not-yet-valid-before-lifetime", "Issued in the future with a lifetime too long.",
              seal(adv.replace(expires_at=NOW + MAX_LIFETIME + 1), prov).raw, NOW - 31, reject("not_yet_valid")),
        field("advert-bad-peer-id", "peer_id is not an Ed25519 peer ID.", dict(wire, peer_id="QmNotEd25519"), "peer_id"),
        field("advert-too-many-addrs", "17 addresses.", dict(wire, addrs=[f"/ip4/10.0.0.1/tcp/{i}" for i in range(17)]),
              "addrs"),
        field("advert-bad-addr", "An address that is not a multiaddr string.", dict(wire, addrs=["127.0.0.1:4001"]),
              "addrs[0]"),
        field("advert-duplicate-addr", "The same address twice.", dict(wire, addrs=["/ip4/1.2.3.4/tcp/1"] * 2), "addrs"),
        field("advert-bad-compute-id", "A compute identifier with a final newline.",
              dict(wire, compute_ids=["cpn:gpu\n"]), "compute_ids[0]"),
        field("advert-duplicate-gpu-uuid", "Two GPUs with the same uuid (the resource set's own rule).",
              dict(wire, resources=dict(wire["resources"], gpus=[gpus[0], gpus[0]])), "resources.gpus[1].uuid"),
        field("advert-free-cpu-above-host", "More free CPU than the host has.",
              dict(wire, free=dict(wire["free"], cpu_millis=32001)), "free.cpu_millis"),
        field("advert-free-negative", "Negative free memory.", dict(wire, free=dict(wire["free"], memory_mib=-1)),
              "free.memory_mib"),
        field("advert-runtime-none-with-limits", "Runtime none cannot enforce limits.",
              dict(wire, container={"runtime": "none", "limits": ["memory"], "gpu_cdi": False}), "container.runtime"),
        field("advert-runtime-not-a-token", "A runtime with upper case.",
              dict(wire, container={"runtime": "Podman", "limits": [], "gpu_cdi": False}), "container.runtime"),
        field("advert-expires-before-issued", "expires_at equal to issued_at.",
              dict(wire, expires_at=wire["issued_at"]), "expires_at"),
        field("advert-bad-metric-unit", "A metric unit with a space.",
              dict(wire, metrics=[{"type": "x", "unit": "per s", "source": "measured", "value": 1}]), "metrics[0].unit"),
        field("advert-gpu-model-not-token", "A GPU model that is not a token.",
              dict(wire, resources=dict(wire["resources"], gpus=[dict(gpus[0], model="H100")] + gpus[1:])),
              "resources.gpus[0].model"),
        field("advert-nested-before-outer", "A bad peer_id and a bad GPU model: the nested resources rule comes first.",
              dict(wire, peer_id="x", resources=dict(wire["resources"], gpus=[dict(gpus[0], model="H100")] + gpus[1:])),
              "resources.gpus[0].model"),
        _open("tombstone-not-yet-valid", "A tombstone issued more than 30 s in the future.",
              seal(Tombstone(peer_id=pid, seq=8, issued_at=NOW + 100), prov).raw, NOW + 69, reject("not_yet_valid")),
        _open("tombstone-bad-peer-id", "A tombstone whose peer_id is not a peer ID.",
              _sign_raw(prov, Tombstone.TYPE, Tombstone.DOMAIN, cbor.encode({"peer_id": "x", "seq": 1, "issued_at": NOW})),
              NOW + 1, reject("invalid_field", field="peer_id")),
        _open("tombstone-missing-field", "A tombstone without seq.",
              _sign_raw(prov, Tombstone.TYPE, Tombstone.DOMAIN, cbor.encode({"peer_id": pid, "issued_at": NOW})),
              NOW + 1, reject("missing_field")),
        _open("tombstone-last-valid-second", "A tombstone 599 s after issued_at.",
              seal(Tombstone(peer_id=pid, seq=8, issued_at=NOW), prov).raw, NOW + 599,
              accept(type="Tombstone", signer=pid, seq=8)),
    ]


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


FREE = FreeCapacity(
    gpu_uuids=(RESOURCES.gpus[1].uuid, RESOURCES.gpus[2].uuid),
    cpu_millis=16000,
    memory_mib=131072,
    disk_mib=400_000,
)


def _req(
    count: int = 1,
    *,
    mem: int = 0,
    models: tuple[str, ...] = (),
    cc: str | None = None,
    cpu: int = 2000,
    ram: int = 8192,
    disk: int = 1024,
    vendor: str | None = "nvidia",
) -> Resources:
    gpu = (
        None
        if count == 0
        else GpuRequirement(
            count=count,
            min_memory_mib=mem,
            vendor=vendor,
            models=models,
            min_compute_capability=cc,
        )
    )
    return Resources(gpu=gpu, cpu_millis=cpu, memory_mib=ram, disk_mib=disk)


def _match_vectors() -> list[dict[str, Any]]:
    adv = sample_advert(free=FREE)
    mig_res = ResourceSet(
        cpu_cores=8, cpu_model="x", memory_mib=65536, disk_mib=100_000,
        gpus=(_gpu(11, "a100", "NVIDIA A100-SXM4-40GB", 40960, "8.0", mig=True),
              _gpu(12, "a100", "NVIDIA A100-SXM4-40GB", 40960, "8.0")),
    )  # fmt: skip
    mig_adv = sample_advert(resources=mig_res, free=all_free(mig_res), compute_ids=())
    cap = ContainerCapability(runtime="podman/runc", limits=("memory", "cpu"), gpu_cdi=False)
    req = _req

    cases: list[tuple[str, str, Advert, Resources, int | None, int | None, bool]] = [
        ("match-fits-tightest-gpu", "One GPU with 16 GiB: the free L4 is chosen over the H100.",
         adv, req(1, mem=16384), None, None, False),
        ("match-h100-free", "One H100: the free one.", adv, req(1, models=("h100",)), None, None, False),
        ("match-gpu-count", "Four GPUs on a host with three.", adv, req(4), None, None, False),
        ("match-gpu-vendor", "An AMD GPU on an NVIDIA host.", adv, req(1, vendor="amd"), None, None, False),
        ("match-gpu-free", "Two H100s exist but only one is free.", adv, req(2, models=("h100",)), None, None, False),
        ("match-gpu-model", "No A100 at all.", adv, req(1, models=("a100",)), None, None, False),
        ("match-gpu-mem", "No GPU here has 90 GiB.", adv, req(1, mem=92160), None, None, False),
        ("match-gpu-mem-then-busy", "Two GPUs with 40 GiB: only the H100s qualify and one is busy.",
         adv, req(2, mem=40960), None, None, False),
        ("match-gpu-cc", "Compute capability 10.0 is above every GPU here.", adv, req(1, cc="10.0"), None, None, False),
        ("match-gpu-cc-numeric", "9.0 >= 8.10 numerically (not as text): the H100 qualifies.",
         adv, req(1, cc="8.10", mem=40960), None, None, False),
        ("match-gpu-mig", "Two A100s, one in MIG mode: too few schedulable whole.",
         mig_adv, req(2, models=("a100",)), None, None, False),
        ("match-gpu-mig-one", "One A100: the one not in MIG mode.", mig_adv, req(1, models=("a100",)), None, None, False),
        ("match-one-gpu-failure-only", "Model and memory both fail: only the first GPU step is listed.",
         adv, req(1, models=("a100",), mem=92160), None, None, False),
        ("match-cpu-and-memory", "More cores and memory than the host has.",
         adv, req(0, cpu=64000, ram=300000), None, None, False),
        ("match-cpu-free", "Within the host, but more CPU than is free now.", adv, req(0, cpu=20000), None, None, False),
        ("match-memory-free-disk-free", "Memory and disk exist but are not free; CPU fits.",
         adv, req(0, ram=200000, disk=450_000), None, None, False),
        ("match-disk", "More disk than the host has: disk, not disk-free.", adv, req(0, disk=600_000), None, None, False),
        ("match-free-only-after-capacity", "CPU beyond the host (no cpu-free) and memory beyond what is free.",
         adv, req(0, cpu=40000, ram=200000), None, None, False),
        ("match-everything", "Every kind of failure at once, in table order.",
         adv, req(1, models=("a100",), cpu=64000, ram=300000, disk=600_000), 1, 3600, True),
        ("match-container-none", "A container is required and the runtime is none.", adv, req(0), None, None, True),
        ("match-container-no-cdi", "A GPU job needs GPUs passed into containers (gpu_cdi).",
         sample_advert(free=FREE, container=cap), req(1), None, None, True),
        ("match-container-cpu-job", "A CPU job needs only a verified runtime.",
         sample_advert(free=FREE, container=cap), req(0), None, None, True),
        ("match-price-within", "One GPU for an hour within max_price.", adv, req(1), 2_600_000, 3600, False),
        ("match-price-over", "One GPU for an hour above max_price.", adv, req(1), 2_500_000, 3600, False),
        ("match-price-rounds-up", "Cost of 1 s rounds up to a whole micro-unit.", adv, req(0, cpu=1, ram=1), 0, 1, False),
        ("match-price-needs-run-s", "max_price without run_s: no price check.", adv, req(1), 1, None, False),
    ]
    out = []
    for name, description, advert, r, max_price, run_s, need_container in cases:
        out.append(_evaluate(name, description, advert, r, NOW + 1, max_price, run_s, need_container))
    out.append(_evaluate("match-expired", "An advert past expires_at never matches.", adv, req(1), NOW + 300, None, None,
                         False))
    out.append(_evaluate("match-no-now", "Without now, expiry is not checked.", adv, req(1), None, None, None, False))
    return out


def _evaluate(name: str, description: str, adv: Advert, r: Resources, now: int | None, max_price: int | None,
              run_s: int | None, require_container: bool) -> dict[str, Any]:
    fit = evaluate(r, adv, now=now, max_price=max_price, run_s=run_s, require_container=require_container)
    return vector(
        name,
        description,
        "match.evaluate",
        {
            "advert_hex": adv.encode().hex(),
            "requirement_hex": r.encode().hex(),
            "now": now,
            "max_price": max_price,
            "run_s": run_s,
            "require_container": require_container,
        },
        accept(failures=list(fit.failures), gpu_uuids=list(fit.gpu_uuids), hourly_cost=fit.hourly_cost,
               fit_pct=fit.fit_pct),
    )


def _explain_vectors() -> list[dict[str, Any]]:
    adv = sample_advert(free=FREE)
    small = ResourceSet(cpu_cores=4, cpu_model="x", memory_mib=8192, disk_mib=10_000, gpus=())
    others = [
        adv,
        sample_advert(key(seed("discovery b")), free=FREE),
        sample_advert(key(seed("discovery c")), resources=small, free=all_free(small), compute_ids=()),
        sample_advert(key(seed("discovery d")), resources=small, free=all_free(small), compute_ids=()),
    ]
    out = []
    for name, description, r, invalid, unreachable in (
        ("explain-mixed", "Two hosts fit one H100; two CPU-only hosts fail gpu-count; plus 1 invalid, 2 unreachable.",
         _req(1, models=("h100",)), 1, 2),
        ("explain-first-failure-only", "Each eliminated candidate counts once, under its first failure.",
         _req(2, models=("a100",), cpu=64000), 0, 0),
        ("explain-all-match", "Everything fits: no counts after the head.", _req(0), 0, 0),
    ):
        matched, why = explain(r, others, now=NOW + 1, invalid=invalid, unreachable=unreachable)
        indices = [others.index(a) for a, _ in matched]
        out.append(vector(
            name, description, "match.explain",
            {"adverts_hex": [a.encode().hex() for a in others], "requirement_hex": r.encode().hex(),
             "now": NOW + 1, "max_price": None, "run_s": None, "require_container": False,
             "invalid": invalid, "unreachable": unreachable},
            accept(matched=indices, eliminated=[[k, v] for k, v in why.to_json()["eliminated"].items()],
                   summary=why.summary()),
        ))
    return out


def _rank_vectors() -> list[dict[str, Any]]:
    r = _req(1)
    cheap = Price(gpu_hour=1_000_000, cpu_core_hour=20_000, memory_gib_hour=2_000)
    half = FreeCapacity(gpu_uuids=(RESOURCES.gpus[2].uuid,), cpu_millis=4000, memory_mib=16384, disk_mib=400_000)

    def adv(label: str, **over: Any) -> Advert:
        return sample_advert(key(seed(f"discovery rank {label}")), **{"free": FREE, **over})

    sets: list[tuple[str, str, list[tuple[Advert, int | None]]]] = [
        ("rank-price-first", "The cheaper offer wins over a nearer one.",
         [(adv("a"), 5), (adv("b", price=cheap), 80)]),
        ("rank-measured-first", "At equal price a measured round trip ranks before an unmeasured one.",
         [(adv("a"), None), (adv("b"), 250)]),
        ("rank-rtt-buckets", "9 ms (bucket 0) before 12 ms (bucket 1); 12 and 19 ms are one bucket, then fit decides.",
         [(adv("a"), 19), (adv("b", free=half), 12), (adv("c"), 9)]),
        ("rank-fit-then-peer-id", "Same price and bucket: higher fit first, then peer ID in code-point order.",
         [(adv("a"), 3), (adv("b"), 4), (adv("c", free=half), 7)]),
    ]
    out = []
    for name, description, offers in sets:
        made = [Offer(advert=a, fit=evaluate(r, a), rtt_ms=rtt) for a, rtt in offers]
        order = [made.index(o) for o in rank(made)]
        out.append(vector(
            name, description, "match.rank",
            {"requirement_hex": r.encode().hex(),
             "offers": [{"advert_hex": a.encode().hex(), "rtt_ms": rtt} for a, rtt in offers]},
            accept(order=order, peer_ids=[offers[i][0].peer_id for i in order],
                   fit_pct=[made[i].fit.fit_pct for i in order]),
        ))
    return out


def generate() -> dict[str, Any]:
    return vector_file(
        AREA,
        SPEC,
        REVISION,
        _open_vectors() + _select_vectors() + _match_vectors() + _explain_vectors() + _rank_vectors(),
    )
