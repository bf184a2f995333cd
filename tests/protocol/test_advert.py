"""Advert and tombstone records: schema rules, validation at a given time,
signer binding, and which record wins (protocol/advert.py)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from protocol import cbor
from protocol.advert import (
    MAX_ADDRS,
    MAX_LIFETIME,
    MAX_RECORD_SIZE,
    NO_CONTAINER,
    Advert,
    ContainerCapability,
    FreeCapacity,
    Price,
    Tombstone,
    open_record,
    refresh_due,
    select_newest,
    select_opened,
    select_raw,
    validate_advert,
)
from protocol.envelope import open_envelope, public_key_proto_of, seal
from protocol.errors import ProtocolError, ValidationError
from protocol.identity import peer_id_from_proto_key
from protocol.resources import GpuInfo, Metric, ResourceSet

T0 = 1_800_000_000


def key(n: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32)


def pid(k: Ed25519PrivateKey) -> str:
    return peer_id_from_proto_key(public_key_proto_of(k))


def gpu(i: int, model: str = "h100", mem: int = 81559) -> GpuInfo:
    return GpuInfo(
        vendor="nvidia",
        model=model,
        name=f"NVIDIA {model.upper()}",
        uuid=f"GPU-{i:04d}",
        memory_mib=mem,
        compute_capability="9.0",
        mig=False,
    )


def advert(k: Ed25519PrivateKey, **over: object) -> Advert:
    gpus = (gpu(0), gpu(1))
    fields: dict[str, object] = dict(
        peer_id=pid(k),
        addrs=("/ip4/127.0.0.1/tcp/4001",),
        resources=ResourceSet(
            cpu_cores=16, cpu_model="AMD EPYC", memory_mib=65536, disk_mib=100_000, gpus=gpus
        ),
        metrics=(Metric(type="gpu-count", unit="count", source="nominal", value=2),),
        free=FreeCapacity(
            gpu_uuids=("GPU-0001",), cpu_millis=8000, memory_mib=32768, disk_mib=50_000
        ),
        price=Price(gpu_hour=2_000_000, cpu_core_hour=10_000, memory_gib_hour=1_000),
        container=NO_CONTAINER,
        compute_ids=("cpn:gpu", "cpn:gpu/nvidia", "cpn:gpu/nvidia/h100"),
        seq=1,
        issued_at=T0,
        expires_at=T0 + 300,
    )
    fields.update(over)
    return Advert(**fields)  # type: ignore[arg-type]


def reason(fn: object, *args: object, **kw: object) -> str:
    with pytest.raises(ProtocolError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    return info.value.reason


# --------------------------------------------------------------------------- schema


def test_roundtrip_through_envelope() -> None:
    k = key(1)
    adv = advert(k)
    signed = seal(adv, k)
    got = open_record(signed.raw, T0 + 10)
    assert got.message == adv
    assert got.signer == adv.peer_id
    assert len(signed.raw) < MAX_RECORD_SIZE


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"peer_id": "not-a-peer"}, "peer_id"),
        ({"addrs": ("127.0.0.1:4001",)}, "addrs[0]"),
        ({"addrs": ("/ip4/1.2.3.4/tcp/1",) * 2}, "addrs"),
        ({"addrs": tuple(f"/ip4/127.0.0.1/tcp/{i}" for i in range(MAX_ADDRS + 1))}, "addrs"),
        ({"expires_at": T0}, "expires_at"),
        ({"seq": -1}, "seq"),
        ({"compute_ids": ("cpn:gpu", "cpn:gpu")}, "compute_ids"),
        ({"compute_ids": ("gpu",)}, "compute_ids[0]"),
        ({"compute_ids": ("x" * 200,)}, "compute_ids[0]"),
        (
            {"free": FreeCapacity(gpu_uuids=("GPU-9",), cpu_millis=0, memory_mib=0, disk_mib=0)},
            "free.gpu_uuids",
        ),
        (
            {"free": FreeCapacity(gpu_uuids=(), cpu_millis=16001, memory_mib=0, disk_mib=0)},
            "free.cpu_millis",
        ),
        (
            {"free": FreeCapacity(gpu_uuids=(), cpu_millis=0, memory_mib=65537, disk_mib=0)},
            "free.memory_mib",
        ),
        (
            {"free": FreeCapacity(gpu_uuids=(), cpu_millis=0, memory_mib=0, disk_mib=100_001)},
            "free.disk_mib",
        ),
    ],
)
def test_schema_rules_name_the_field(over: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        advert(key(1), **over)
    assert info.value.field == field


def test_sub_struct_rules() -> None:
    with pytest.raises(ValidationError):
        Price(gpu_hour=-1, cpu_core_hour=0, memory_gib_hour=0)
    with pytest.raises(ValidationError):
        FreeCapacity(gpu_uuids=("a", "a"), cpu_millis=0, memory_mib=0, disk_mib=0)
    with pytest.raises(ValidationError) as info:
        ContainerCapability(runtime="none", limits=("memory",), gpu_cdi=False)
    assert info.value.field == "runtime"
    with pytest.raises(ValidationError):
        ContainerCapability(runtime="Podman Runc", limits=(), gpu_cdi=False)
    ok = ContainerCapability(runtime="podman/runc", limits=("memory", "pids"), gpu_cdi=True)
    assert ContainerCapability.from_wire(ok.to_wire()) == ok


def test_tombstone_schema() -> None:
    with pytest.raises(ValidationError):
        Tombstone(peer_id=pid(key(1)), seq=-1, issued_at=T0)
    t = Tombstone(peer_id=pid(key(1)), seq=3, issued_at=T0)
    assert Tombstone.decode(t.encode()) == t


def test_malformed_payload_is_rejected_on_open() -> None:
    k = key(1)
    wire = advert(k).to_wire()
    wire["extra"] = 1
    from protocol.envelope import signing_bytes

    payload = cbor.encode(wire)
    sig = k.sign(signing_bytes(Advert.DOMAIN, Advert.TYPE, payload))
    raw = cbor.encode(
        {"key": public_key_proto_of(k), "payload": payload, "sig": sig, "type": Advert.TYPE}
    )
    assert reason(open_record, raw, T0) == "unknown_field"
    assert reason(open_record, b"\xff" * 10, T0) != ""
    assert reason(open_record, b"\x00" * (MAX_RECORD_SIZE + 1), T0) == "oversize"


# --------------------------------------------------------------------------- time rules


def test_validity_window() -> None:
    k = key(1)
    signed = seal(advert(k), k)
    assert validate_advert(signed, T0) == signed.message
    assert validate_advert(signed, T0 + 299) == signed.message
    assert reason(validate_advert, signed, T0 + 300) == "expired"
    # a little clock skew is tolerated, more is not
    assert validate_advert(signed, T0 - 30) == signed.message
    assert reason(validate_advert, signed, T0 - 31) == "not_yet_valid"
    assert validate_advert(signed, T0 - 31, max_clock_skew=60) == signed.message


def test_lifetime_too_long() -> None:
    k = key(1)
    signed = seal(advert(k, expires_at=T0 + MAX_LIFETIME + 1), k)
    assert reason(validate_advert, signed, T0 + 1) == "lifetime_too_long"
    ok = seal(advert(k, expires_at=T0 + MAX_LIFETIME), k)
    assert validate_advert(ok, T0 + 1).lifetime == MAX_LIFETIME


def test_tombstone_lapses_after_max_lifetime() -> None:
    k = key(1)
    t = seal(Tombstone(peer_id=pid(k), seq=1, issued_at=T0), k)
    assert open_record(t.raw, T0 + MAX_LIFETIME - 1).message == t.message
    assert reason(open_record, t.raw, T0 + MAX_LIFETIME) == "expired"
    assert reason(open_record, t.raw, T0 - 31) == "not_yet_valid"


# --------------------------------------------------------------------------- signer rules


def test_wrong_signer_is_rejected() -> None:
    victim, attacker = key(1), key(2)
    signed = seal(advert(victim), attacker)  # valid signature, but by someone else
    assert reason(validate_advert, signed, T0) == "wrong_signer"
    assert reason(open_record, signed.raw, T0) == "wrong_signer"


def test_forged_signature_is_rejected() -> None:
    victim, attacker = key(1), key(2)
    env = cbor.decode(seal(advert(victim), attacker).raw)
    env["key"] = public_key_proto_of(victim)  # claim the victim's key
    assert reason(open_record, cbor.encode(env), T0) == "bad_signature"


def test_expected_peer() -> None:
    k = key(1)
    signed = seal(advert(k), k)
    assert open_record(signed.raw, T0, peer_id=pid(k)).signer == pid(k)
    assert reason(open_record, signed.raw, T0, peer_id=pid(key(2))) == "wrong_peer"


def test_other_message_types_are_refused() -> None:
    k = key(1)
    t = seal(Tombstone(peer_id=pid(k), seq=1, issued_at=T0), k)
    assert reason(validate_advert, t, T0) == "unexpected_type"


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_single_byte_change_never_validates_as_same_record(pos: int, flip: int) -> None:
    k = key(1)
    raw = bytearray(seal(advert(k), k).raw)
    i = pos % len(raw)
    if flip == 0 or raw[i] ^ flip == raw[i]:
        return
    raw[i] ^= flip
    try:
        got = open_record(bytes(raw), T0 + 1)
    except ProtocolError:
        return
    raise AssertionError(f"tampered record accepted: {got}")


# --------------------------------------------------------------------------- selection


def test_select_newest_prefers_seq_then_tombstone() -> None:
    k = key(1)
    a1 = seal(advert(k, seq=1), k)
    a2 = seal(advert(k, seq=2, issued_at=T0 + 1, expires_at=T0 + 301), k)
    t2 = seal(Tombstone(peer_id=pid(k), seq=2, issued_at=T0 + 2), k)
    t1 = seal(Tombstone(peer_id=pid(k), seq=1, issued_at=T0 + 2), k)
    now = T0 + 10
    assert select_newest([a1, a2], now) == 1
    assert select_newest([a2, a1], now) == 0
    assert select_newest([a2, t2], now) == 1  # tombstone with equal seq wins
    assert select_newest([t1, a2], now) == 1  # advert with higher seq beats older tombstone
    assert select_newest([t2, a1, a2], now) == 0


def test_select_newest_skips_invalid_records() -> None:
    k = key(1)
    fresh = seal(advert(k, seq=1, issued_at=T0 + 200, expires_at=T0 + 500), k)
    stale_but_higher = seal(advert(k, seq=9), k)  # expires at T0 + 300
    forged = seal(advert(k, seq=50), key(2))
    now = T0 + 400
    assert select_newest([stale_but_higher, forged, fresh], now) == 2
    assert reason(select_newest, [stale_but_higher, forged], now) == "no_valid_record"


def test_select_raw() -> None:
    k = key(1)
    a1 = seal(advert(k, seq=1), k).raw
    a2 = seal(advert(k, seq=2), k).raw
    assert select_raw([b"garbage", a1, a2], T0) == 2
    assert select_raw([a2, a1], T0, peer_id=pid(k)) == 0
    assert reason(select_raw, [b"garbage"], T0) == "no_valid_record"


def test_refresh_due_is_half_lifetime() -> None:
    adv = advert(key(1), issued_at=T0, expires_at=T0 + 300)
    assert refresh_due(adv) == T0 + 150


def test_registered_tags_are_in_discovery_range() -> None:
    assert 16 <= Advert.TYPE <= 31 and 16 <= Tombstone.TYPE <= 31
    signed = seal(Tombstone(peer_id=pid(key(3)), seq=0, issued_at=T0), key(3))
    assert open_envelope(signed.raw, expected=Tombstone).message.seq == 0


def test_make_advert_uses_identifier_ladder() -> None:
    from protocol.advert import all_free, make_advert, next_seq
    from protocol.identifiers import advertised_ids

    k = key(4)
    rs = advert(k).resources
    adv = make_advert(
        peer_id=pid(k),
        addrs=["/ip4/127.0.0.1/tcp/1", "/ip4/127.0.0.1/tcp/1"],
        resources=rs,
        metrics=(),
        price=Price(gpu_hour=0, cpu_core_hour=0, memory_gib_hour=0),
        seq=next_seq(None, T0),
        now=T0,
    )
    assert adv.compute_ids == tuple(advertised_ids(rs))
    assert "cpn:gpu/nvidia/h100" in adv.compute_ids
    assert adv.addrs == ("/ip4/127.0.0.1/tcp/1",)
    assert adv.free == all_free(rs) and adv.lifetime == 300 and adv.seq == T0
    assert next_seq(T0 + 5, T0) == T0 + 6 and next_seq(5, T0) == T0
    assert open_record(seal(adv, k).raw, T0 + 1).message == adv


def test_maximal_advert_fits_record_limits() -> None:
    """Every advert the schema allows must also pass the size/decoder limits."""
    from protocol.advert import MAX_COMPUTE_IDS, MAX_GPUS, MAX_METRICS, make_advert

    k = key(5)
    gpus = tuple(
        GpuInfo(
            vendor="nvidia",
            model=f"model{i}",  # all different: the longest identifier ladder
            name="NVIDIA H100 80GB HBM3 " + "x" * 40,
            uuid=f"GPU-{i:08x}-0000-4000-8000-{i:012x}",
            memory_mib=81559,
            compute_capability="9.0",
            mig=False,
        )
        for i in range(MAX_GPUS)
    )
    rs = ResourceSet(
        cpu_cores=256, cpu_model="c" * 64, memory_mib=1 << 21, disk_mib=1 << 24, gpus=gpus
    )
    metrics = tuple(
        Metric(type=f"metric-{i:02d}-" + "m" * 20, unit="MiB", source="measured", value=1 << 40)
        for i in range(MAX_METRICS)
    )
    addrs = [
        f"/ip6/2001:db8:1234:5678:9abc:def0:1234:{i:x}/udp/40001/quic-v1" for i in range(MAX_ADDRS)
    ]
    adv = make_advert(
        peer_id=pid(k),
        addrs=addrs,
        resources=rs,
        metrics=metrics,
        price=Price(gpu_hour=10**12, cpu_core_hour=10**12, memory_gib_hour=10**12),
        seq=1 << 40,
        now=T0,
    )
    assert 128 < len(adv.compute_ids) <= MAX_COMPUTE_IDS
    raw = seal(adv, k).raw
    assert len(raw) <= MAX_RECORD_SIZE
    assert open_record(raw, T0 + 1).message == adv


_POOL_KEY = key(6)
_POOL = (
    [
        seal(advert(_POOL_KEY, seq=s, issued_at=T0 + i, expires_at=T0 + i + 300), _POOL_KEY)
        for i, s in enumerate([1, 2, 2, 3, 5])
    ]
    + [seal(Tombstone(peer_id=pid(_POOL_KEY), seq=s, issued_at=T0 + 10), _POOL_KEY) for s in (2, 4)]
    + [seal(advert(_POOL_KEY, seq=9), key(7))]
)  # wrong signer: never wins


@given(st.permutations(range(len(_POOL))), st.integers(min_value=1, max_value=len(_POOL)))
def test_select_newest_is_order_independent(order: list[int], n: int) -> None:
    """Every DHT node must pick the same record from the same set, in any order."""
    chosen = [_POOL[i] for i in order[:n]]
    valid = [r for r in chosen if r.signer == r.message.peer_id]
    if not valid:
        assert reason(select_newest, chosen, T0 + 20) == "no_valid_record"
        return
    winner = chosen[select_newest(chosen, T0 + 20)]
    again = list(reversed(chosen))
    assert again[select_newest(again, T0 + 20)].digest == winner.digest
    top = max(r.message.seq for r in valid)
    assert winner.message.seq == top
    if any(isinstance(r.message, Tombstone) and r.message.seq == top for r in valid):
        assert isinstance(winner.message, Tombstone)


def test_memo_skips_only_the_signature_check_of_bytes_already_opened() -> None:
    k = key(1)
    signed = seal(advert(k), k)
    memo: dict[bytes, object] = {}
    first = open_record(signed.raw, T0, peer_id=pid(k), memo=memo)  # type: ignore[arg-type]
    assert list(memo) == [signed.raw]
    assert open_record(signed.raw, T0 + 1, peer_id=pid(k), memo=memo) is first  # type: ignore[arg-type]
    # the record rules still run on every open: time, and the peer the caller expects
    assert reason(open_record, signed.raw, T0 + 300, memo=memo) == "expired"
    assert reason(open_record, signed.raw, T0, peer_id=pid(key(2)), memo=memo) == "wrong_peer"
    # bytes that fail are not remembered, and other bytes are checked afresh
    env = cbor.decode(seal(advert(k, seq=2), key(2)).raw)
    env["key"] = public_key_proto_of(k)
    assert reason(open_record, cbor.encode(env), T0, memo=memo) == "bad_signature"
    assert list(memo) == [signed.raw]


def test_select_opened_returns_the_winner_opened() -> None:
    k = key(1)
    old, new = seal(advert(k, seq=1), k), seal(advert(k, seq=2), k)
    index, record = select_opened([old.raw, b"junk", new.raw], T0, peer_id=pid(k))
    assert index == 2 and record.raw == new.raw
    assert select_raw([old.raw, b"junk", new.raw], T0, peer_id=pid(k)) == 2
