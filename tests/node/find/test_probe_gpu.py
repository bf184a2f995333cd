"""The real NVML probe on real hardware (skipped without NVML and a GPU; see
tests/conftest.py).  Prints the report so a run on a GPU machine documents
what was found."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from node.find.nvml import RealNvml
from node.find.probe import describe, probe
from protocol.advert import Price, make_advert, open_record
from protocol.envelope import public_key_proto_of, seal
from protocol.identity import peer_id_from_proto_key
from protocol.resources import COMPUTE_CAPABILITY_RE

pytestmark = pytest.mark.gpu


async def test_real_probe(tmp_path: Path) -> None:
    rep = await probe(tmp_path, backend=RealNvml())
    print("\n" + "\n".join(describe(rep)))
    assert rep.nvml_error is None and rep.gpu_errors == ()
    assert rep.gpus, "conftest said a GPU is present"
    assert rep.driver_version and rep.cuda_driver_version
    for g in rep.gpus:
        assert g.uuid.startswith(("GPU-", "MIG-"))
        assert g.memory_total_mib > 0 and 0 <= g.memory_free_mib <= g.memory_total_mib
        assert COMPUTE_CAPABILITY_RE.match(g.compute_capability)
        assert g.pci_bus_id is None or ":" in g.pci_bus_id
        info = g.gpu_info()
        assert info.vendor == "nvidia" and info.model != "unknown", info

    if shutil.which("nvidia-smi"):
        done = await trio.run_process(
            ["nvidia-smi", "--query-gpu=uuid,memory.total", "--format=csv,noheader,nounits"],
            capture_stdout=True,
        )
        out = done.stdout.decode()
        smi = {line.split(",")[0].strip(): int(line.split(",")[1]) for line in out.splitlines() if line}
        assert {g.uuid: g.memory_total_mib for g in rep.gpus} == smi

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    rs = rep.resource_set()
    adv = make_advert(
        peer_id=peer_id_from_proto_key(public_key_proto_of(key)),
        addrs=["/ip4/127.0.0.1/tcp/4001"],
        resources=rs,
        metrics=rep.metrics(),
        price=Price(gpu_hour=0, cpu_core_hour=0, memory_gib_hour=0),
        seq=1,
        now=1_800_000_000,
    )
    print("compute ids:", ", ".join(adv.compute_ids))
    whole = [g for g in rs.gpus if not g.mig]
    if whole:
        assert f"cpn:gpu/nvidia/{whole[0].model}" in adv.compute_ids
    assert open_record(seal(adv, key).raw, 1_800_000_001).message == adv
