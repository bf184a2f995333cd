"""Resource probe with injected NVML backends (node/probe.py).

This machine has no GPU, so NVML is faked: FakeNvml for the probe logic, and
a stand-in ``pynvml`` module to check RealNvml's translation of pynvml calls
and errors.  tests/node/test_probe_gpu.py runs the real thing where it can.
"""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from node.find import probe as probe_mod
from node.find.nvml import FAKE_PRESETS, FakeNvml, RealNvml, load_fake_nvml, make_backend
from node.find.probe import cpu_cores as probe_cpu_cores
from node.find.probe import describe, probe, probe_gpus, probe_sync
from node.find.probe import memory_mib as probe_memory_mib
from protocol.advert import ContainerCapability, Price, make_advert, open_record
from protocol.envelope import public_key_proto_of, seal
from protocol.identity import peer_id_from_proto_key

MIB = 1 << 20


@pytest.fixture(autouse=True)
def nothing_said_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from a process that has logged no probe finding yet."""
    monkeypatch.setattr(probe_mod, "_SAID", set())


def test_compact_spec_several_models() -> None:
    nv = load_fake_nvml("h100:2,a100-40g:1,rtx4090:1,t4", seed="node-a")
    g = probe_gpus(nv)
    assert g.nvml_error is None and g.gpu_errors == ()
    assert [x.name for x in g.gpus] == [  # the fake backend marks every name it reports
        "NVIDIA H100 80GB HBM3 (fake)",
        "NVIDIA H100 80GB HBM3 (fake)",
        "NVIDIA A100-SXM4-40GB (fake)",
        "NVIDIA GeForce RTX 4090 (fake)",
        "Tesla T4 (fake)",
    ]
    assert all(x.fake for x in g.gpus)
    infos = [x.gpu_info() for x in g.gpus]
    assert [(i.vendor, i.model) for i in infos] == [
        ("nvidia", "h100"),
        ("nvidia", "h100"),
        ("nvidia", "a100"),
        ("nvidia", "rtx4090"),
        ("nvidia", "t4"),
    ]
    assert [i.compute_capability for i in infos] == ["9.0", "9.0", "8.0", "8.9", "7.5"]
    assert infos[2].memory_mib == 40960
    assert g.driver_version == "550.54.15" and g.cuda_driver_version == "12.4"
    assert len({i.uuid for i in infos}) == 5
    assert nv.calls[0] == "init" and nv.calls[-1] == "shutdown"


def test_fake_uuids_are_reproducible_per_seed() -> None:
    a1 = probe_gpus(load_fake_nvml("l4:2", seed="a")).gpus
    a2 = probe_gpus(load_fake_nvml("l4:2", seed="a")).gpus
    b = probe_gpus(load_fake_nvml("l4:2", seed="b")).gpus
    assert [g.uuid for g in a1] == [g.uuid for g in a2]
    assert {g.uuid for g in a1}.isdisjoint(g.uuid for g in b)
    assert all(g.uuid.startswith("GPU-") and len(g.uuid) == 40 for g in a1)


def test_mig_modes() -> None:
    spec = {
        "gpus": [
            {"name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920, "cc": "8.0", "mig": True},
            {"name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920, "cc": "8.0", "mig": False},
            {"name": "NVIDIA L4", "memory_mib": 23034, "cc": "8.9", "mig": None},
        ]
    }
    gpus = probe_gpus(FakeNvml(spec)).gpus
    assert [g.mig_mode for g in gpus] == [True, False, None]
    assert [g.gpu_info().mig for g in gpus] == [True, False, False]
    assert probe_gpus(load_fake_nvml("a100-80g+mig:1")).gpus[0].mig_mode is True


def test_init_failure_gives_zero_gpus_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    nv = FakeNvml(
        {
            "gpus": [{"name": "NVIDIA L4", "memory_mib": 23034, "cc": "8.9"}],
            "fail": {"init": "Driver Not Loaded"},
        }
    )
    with caplog.at_level(logging.INFO, logger="cpn.probe"):
        g = probe_gpus(nv)
    assert g.gpus == () and g.nvml_error == "init: Driver Not Loaded"
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["NVML unavailable (Driver Not Loaded): advertising zero GPUs"]
    assert "shutdown" not in nv.calls  # never initialised


def test_a_finding_is_a_warning_once_and_debug_after(caplog: pytest.LogCaptureFixture) -> None:
    """The host is probed again before every advert refresh (every ~5 minutes):
    a host without NVML said so as a warning each time."""
    nv = FakeNvml({"gpus": [], "fail": {"init": "NVML Shared Library Not Found"}})
    with caplog.at_level(logging.DEBUG, logger="cpn.probe"):
        for _ in range(3):
            assert probe_gpus(nv).nvml_error == "init: NVML Shared Library Not Found"
        assert probe_gpus(FakeNvml({"gpus": [], "fail": {"init": "Driver Not Loaded"}})).gpus == ()
    said = [(r.levelname, r.getMessage().split(" (")[1].split(")")[0]) for r in caplog.records]
    assert said == [
        ("WARNING", "NVML Shared Library Not Found"),
        ("DEBUG", "NVML Shared Library Not Found"),
        ("DEBUG", "NVML Shared Library Not Found"),
        ("WARNING", "Driver Not Loaded"),  # a new finding is said again
    ]


def test_count_failure_gives_zero_gpus_and_shuts_down() -> None:
    nv = FakeNvml(
        {
            "gpus": [{"name": "NVIDIA L4", "memory_mib": 23034, "cc": "8.9"}],
            "fail": {"count": "Unknown Error"},
        }
    )
    g = probe_gpus(nv)
    assert g.gpus == () and g.nvml_error is not None and "Unknown Error" in g.nvml_error
    assert nv.calls[-1] == "shutdown"


def test_essential_device_call_failure_leaves_that_gpu_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spec = {
        "gpus": [
            {"name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "cc": "9.0"},
            {
                "name": "NVIDIA H100 80GB HBM3",
                "memory_mib": 81559,
                "cc": "9.0",
                "fail": {"memory": "GPU is lost"},
            },
            {
                "name": "NVIDIA H100 80GB HBM3",
                "memory_mib": 81559,
                "cc": "9.0",
                "fail": {"uuid": "Unknown Error"},
            },
        ]
    }
    with caplog.at_level(logging.WARNING, logger="cpn.probe"):
        g = probe_gpus(FakeNvml(spec))
    assert [x.index for x in g.gpus] == [0]
    assert g.gpu_errors == (
        "GPU 1: left out, NVML error: GPU is lost",
        "GPU 2: left out, NVML error: Unknown Error",
    )
    assert len(caplog.records) == 2


def test_optional_device_call_failure_keeps_gpu() -> None:
    spec = {
        "gpus": [
            {
                "name": "NVIDIA L4",
                "memory_mib": 23034,
                "cc": "8.9",
                "free_mib": 1000,
                "utilisation": 37,
                "fail": {"pci_bus_id": "No Permission"},
            },
            {
                "name": "NVIDIA L4",
                "memory_mib": 23034,
                "cc": "8.9",
                "fail": {"utilisation": "Not Supported", "mig_mode": "Unknown Error"},
            },
        ],
        "fail": {"driver_version": "Unknown Error"},
    }
    a, b = probe_gpus(FakeNvml(spec)).gpus
    assert a.pci_bus_id is None and a.utilisation_gpu_pct == 37 and a.memory_free_mib == 1000
    assert b.pci_bus_id == "00000000:11:00.0"
    assert b.utilisation_gpu_pct is None and b.mig_mode is None
    assert probe_gpus(FakeNvml(spec)).driver_version is None


@pytest.mark.parametrize("spec", ["", "none"])
def test_no_gpus_is_fine(caplog: pytest.LogCaptureFixture, spec: str) -> None:
    with caplog.at_level(logging.INFO, logger="cpn.probe"):
        g = probe_gpus(load_fake_nvml(spec))
    assert g.gpus == () and g.nvml_error is None
    assert [r.getMessage() for r in caplog.records] == ["NVML reports no GPUs"]


def test_module_entry_point_prints_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.find.probe import main

    assert main(["--fake", "h100:1", "--data-dir", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["gpus"][0]["name"] == "NVIDIA H100 80GB HBM3 (fake)"
    assert report["container"]["runtime"] == "none"
    with pytest.raises(SystemExit):
        main(["--fake", "b300:1"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("b300:1", "unknown fake GPU 'b300'"),
        ("h100:x", "bad GPU count"),
        ("h100:99", "must be 0..64"),
        ('{"gpus": [{"name": "x"}]}', "gpus[0]"),
        ('{"gpuz": []}', "unknown key"),
        ('{"gpus": [', "not valid JSON"),
        (
            '{"gpus": [{"name": "x", "memory_mib": 1, "cc": "1.0", "fail": {"nope": "x"}}]}',
            "unknown call",
        ),
        ("/nonexistent/fake.json", "cannot read"),
        ('{"gpus": [{"name": "x", "memory_mib": "80", "cc": "9.0"}]}', "memory_mib must be"),
        ('{"gpus": [{"name": "x", "memory_mib": 80, "cc": 9}]}', "cc must be"),
        ('{"gpus": [{"name": "x", "memory_mib": 80, "cc": "9.0", "free_mib": 81}]}', "free_mib"),
        ('{"gpus": [{"name": "x", "memory_mib": 80, "cc": "9.0", "mig": "yes"}]}', "mig must be"),
        ('{"gpus": [7]}', "must be an object"),
        ('{"fail": {"boot": "x"}}', "fail keys"),
        ('{"cuda_driver_version": "12.4"}', "cuda_driver_version"),
    ],
)
def test_bad_fake_specs_are_clear_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        load_fake_nvml(spec)
    assert message in str(info.value)


def test_fake_spec_from_file(tmp_path: Path) -> None:
    path = tmp_path / "gpus.json"
    path.write_text(
        json.dumps(
            {
                "gpus": [
                    {"name": "NVIDIA H200", "memory_mib": 143771, "cc": "9.0", "uuid": "GPU-fixed"}
                ],
                "cuda_driver_version": 12080,
            }
        )
    )
    g = probe_gpus(load_fake_nvml(path))
    assert g.gpus[0].uuid == "GPU-fixed" and g.cuda_driver_version == "12.8"
    assert probe_gpus(load_fake_nvml(str(path))).gpus[0].memory_total_mib == 143771
    assert isinstance(make_backend(str(path)), FakeNvml)
    assert isinstance(make_backend(None), RealNvml)


def test_every_preset_normalises_to_its_key_family() -> None:
    for key, (name, mib, cc) in FAKE_PRESETS.items():
        info = probe_gpus(load_fake_nvml(f"{key}:1")).gpus[0].gpu_info()
        assert info.vendor == "nvidia", key
        assert info.model == key.split("-")[0], (key, info.model)
        assert (info.name, info.memory_mib, info.compute_capability) == (name + " (fake)", mib, cc)


# --------------------------------------------------------------------------- RealNvml


def _stub_pynvml(*, init_error: str | None = None) -> types.ModuleType:
    """A stand-in for the pynvml module with one H100 (MIG unsupported)."""
    m = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's name
        pass

    m.NVMLError = NVMLError  # type: ignore[attr-defined]
    m.NVMLError_NotSupported = NVMLError_NotSupported  # type: ignore[attr-defined]
    m.NVML_DEVICE_MIG_ENABLE = 1  # type: ignore[attr-defined]
    state: dict[str, Any] = {"init": False}

    def init() -> None:
        if init_error:
            raise NVMLError(init_error)
        state["init"] = True

    def not_supported(_h: Any) -> Any:
        raise NVMLError_NotSupported("Not Supported")

    funcs = {
        "nvmlInit": init,
        "nvmlShutdown": lambda: state.update(init=False),
        "nvmlSystemGetDriverVersion": lambda: b"550.90.07",
        "nvmlSystemGetCudaDriverVersion": lambda: 12040,
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda i: ("h", i),
        "nvmlDeviceGetName": lambda h: "NVIDIA H100 80GB HBM3",
        "nvmlDeviceGetUUID": lambda h: "GPU-real-0",
        "nvmlDeviceGetPciInfo": lambda h: types.SimpleNamespace(busId=b"00000000:1B:00.0"),
        "nvmlDeviceGetMemoryInfo": lambda h: types.SimpleNamespace(
            total=81559 * MIB, free=80000 * MIB
        ),
        "nvmlDeviceGetCudaComputeCapability": lambda h: (9, 0),
        "nvmlDeviceGetUtilizationRates": lambda h: types.SimpleNamespace(gpu=12, memory=3),
        "nvmlDeviceGetMigMode": not_supported,
    }
    for name, fn in funcs.items():
        setattr(m, name, fn)
    m.state = state  # type: ignore[attr-defined]
    return m


def test_real_backend_translates_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    stub = _stub_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    g = probe_gpus(RealNvml())
    (gpu,) = g.gpus
    assert (gpu.name, gpu.uuid, gpu.pci_bus_id) == (
        "NVIDIA H100 80GB HBM3",
        "GPU-real-0",
        "00000000:1B:00.0",
    )
    assert (gpu.memory_total_mib, gpu.memory_free_mib, gpu.compute_capability) == (
        81559,
        80000,
        "9.0",
    )
    assert (gpu.utilisation_gpu_pct, gpu.utilisation_memory_pct, gpu.mig_mode) == (12, 3, None)
    assert (g.driver_version, g.cuda_driver_version) == ("550.90.07", "12.4")
    assert stub.state["init"] is False  # shut down again


def test_real_backend_init_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "pynvml", _stub_pynvml(init_error="NVML Shared Library Not Found")
    )
    g = probe_gpus(RealNvml())
    assert g.gpus == () and g.nvml_error == "init: NVML Shared Library Not Found"


def test_real_backend_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    g = probe_gpus(RealNvml())
    assert g.gpus == () and g.nvml_error is not None and "pynvml not importable" in g.nvml_error


# --------------------------------------------------------------------------- host facts


def _fake_root(
    tmp_path: Path,
    *,
    memory_max: str | None = None,
    cpu_max: str | None = None,
    v1_limit: str | None = None,
) -> Path:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/cpuinfo").write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n\n"
        "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    )
    (root / "proc/meminfo").write_text("MemTotal:       16384000 kB\nMemFree:  100 kB\n")
    cg = root / "sys/fs/cgroup"
    cg.mkdir(parents=True)
    if memory_max is not None:
        (cg / "memory.max").write_text(memory_max + "\n")
    if cpu_max is not None:
        (cg / "cpu.max").write_text(cpu_max + "\n")
    if v1_limit is not None:
        (cg / "memory").mkdir()
        (cg / "memory/memory.limit_in_bytes").write_text(v1_limit + "\n")
    return root


def test_memory_meminfo_and_cgroup_limits(tmp_path: Path) -> None:
    assert probe_memory_mib(_fake_root(tmp_path / "a")) == (16000, "meminfo")
    assert probe_memory_mib(_fake_root(tmp_path / "b", memory_max="max")) == (16000, "meminfo")
    assert probe_memory_mib(_fake_root(tmp_path / "c", memory_max=str(4096 * MIB))) == (
        4096,
        "cgroup",
    )
    # v1 "unlimited" is a huge number: MemTotal stays
    assert probe_memory_mib(_fake_root(tmp_path / "d", v1_limit="9223372036854771712")) == (
        16000,
        "meminfo",
    )
    assert probe_memory_mib(_fake_root(tmp_path / "e", v1_limit=str(2048 * MIB))) == (
        2048,
        "cgroup",
    )


def test_cpu_cores_affinity_and_quota(tmp_path: Path) -> None:
    assert probe_cpu_cores(_fake_root(tmp_path / "a"), affinity=8) == 8
    assert probe_cpu_cores(_fake_root(tmp_path / "b", cpu_max="max 100000"), affinity=8) == 8
    assert probe_cpu_cores(_fake_root(tmp_path / "c", cpu_max="250000 100000"), affinity=8) == 2
    assert probe_cpu_cores(_fake_root(tmp_path / "d", cpu_max="50000 100000"), affinity=8) == 1


def test_probe_sync_full_report(tmp_path: Path) -> None:
    root = _fake_root(tmp_path, memory_max=str(8192 * MIB))
    data = tmp_path / "data" / "not-yet-created"
    cap = ContainerCapability(runtime="podman/runc", limits=("memory", "cpu"), gpu_cdi=False)
    rep = probe_sync(data, backend=load_fake_nvml("l4:2"), root=root, affinity=4, container=cap)
    assert rep.cpu_model == "Intel(R) Xeon(R) Platinum 8480+" and rep.cpu_cores == 4
    assert (rep.memory_mib, rep.memory_source) == (8192, "cgroup")
    assert 0 < rep.disk_free_mib <= rep.disk_total_mib
    assert rep.container == cap
    rs = rep.resource_set()
    assert rs.cpu_cores == 4 and rs.disk_mib == rep.disk_free_mib and len(rs.gpus) == 2
    metrics = {m.type: m for m in rep.metrics()}
    assert metrics["gpu-count"].value == 2 and metrics["gpu-memory"].value == 2 * 23034
    assert metrics["storage-free"].source == "measured"
    assert json.loads(json.dumps(rep.to_json()))["gpus"][0]["name"] == "NVIDIA L4 (fake)"
    text = "\n".join(describe(rep, container_checked=True))
    assert "NVIDIA L4 (fake)" in text and "Container runtime: podman/runc" in text


def test_container_defaults_to_none(tmp_path: Path) -> None:
    rep = probe_sync(tmp_path, backend=load_fake_nvml(""))
    assert rep.container.runtime == "none" and rep.container.limits == ()


async def test_async_probe_builds_a_valid_signed_advert(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    rep = await probe(tmp_path, backend=load_fake_nvml("h100:2,t4:1", seed="x"))
    assert len(rep.gpus) == 3
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    peer = peer_id_from_proto_key(public_key_proto_of(key))
    adv = make_advert(
        peer_id=peer,
        addrs=["/ip4/127.0.0.1/tcp/4001"],
        resources=rep.resource_set(),
        metrics=rep.metrics(),
        price=Price(gpu_hour=1, cpu_core_hour=1, memory_gib_hour=1),
        seq=1,
        now=1_800_000_000,
        container=rep.container,
    )
    assert "cpn:gpu/nvidia/h100/x2" in adv.compute_ids
    assert open_record(seal(adv, key).raw, 1_800_000_001).message == adv


def test_limits_follow_own_cgroup_path(tmp_path: Path) -> None:
    # cgroup v2: the limit sits on an ancestor of this process's cgroup
    root = _fake_root(tmp_path / "v2", cpu_max="max 100000")
    (root / "proc/self").mkdir()
    (root / "proc/self/cgroup").write_text("0::/system.slice/cpn.service\n")
    svc = root / "sys/fs/cgroup/system.slice/cpn.service"
    svc.mkdir(parents=True)
    (svc / "memory.max").write_text("max\n")
    (svc.parent / "memory.max").write_text(f"{3072 * MIB}\n")
    (svc / "cpu.max").write_text("300000 100000\n")
    assert probe_memory_mib(root) == (3072, "cgroup")
    assert probe_cpu_cores(root, affinity=16) == 3
    # cgroup v1 (hybrid hosts like this one): per-controller hierarchies
    root = _fake_root(tmp_path / "v1")
    (root / "proc/self").mkdir()
    (root / "proc/self/cgroup").write_text("4:memory:/jobs/a\n2:cpu,cpuacct:/jobs/a\n0::/\n")
    mem = root / "sys/fs/cgroup/memory/jobs/a"
    mem.mkdir(parents=True)
    (mem / "memory.limit_in_bytes").write_text(f"{1024 * MIB}\n")
    cpu = root / "sys/fs/cgroup/cpu,cpuacct/jobs/a"
    cpu.mkdir(parents=True)
    (cpu / "cpu.cfs_quota_us").write_text("150000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    assert probe_memory_mib(root) == (1024, "cgroup")
    assert probe_cpu_cores(root, affinity=16) == 1


def test_standalone_probe_does_not_claim_no_container_runtime(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m node.find.probe` runs no containers: it used to say "Container runtime: none"
    on hosts whose daemon self-test passes."""
    from node.find.probe import main

    assert main(["--fake", "h100:1", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Container runtime: none" not in out
    assert "Container runtime: not checked here; the daemon runs a podman self-test" in out
    assert "cpn status" in out
    assert "NVIDIA H100 80GB HBM3 (fake)" in out and "(fake): a fake NVML inventory" in out
    rep = probe_sync(tmp_path, backend=load_fake_nvml("none"))
    assert "Container runtime: none (the self-test did not pass" in "\n".join(describe(rep, container_checked=True))


def test_fake_names_keep_their_model() -> None:
    """The mark is in the advertised name only: the model token, and so matching, is unchanged."""
    (gpu,) = probe_gpus(load_fake_nvml("a100-40g:1")).gpus
    info = gpu.gpu_info()
    assert gpu.fake and info.name == "NVIDIA A100-SXM4-40GB (fake)" and (info.vendor, info.model) == ("nvidia", "a100")
    spec = {"gpus": [{"name": "Custom Board (fake)", "memory_mib": 1024, "cc": "8.0"}]}
    (named,) = probe_gpus(FakeNvml(spec)).gpus
    assert named.name == "Custom Board (fake)"  # marked once, not twice
