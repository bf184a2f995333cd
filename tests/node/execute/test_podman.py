"""node/execute/ (podman driver, container runs, self-test) against real podman (private storage).

Few containers, each asserting several things, to keep the suite fast: every
container start costs ~250 ms here.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.podman import PodmanEnv, job_for, shared_env  # noqa: E402

from node.execute.container import ContainerRun, LogStream
from node.execute.executor import Executor
from node.execute.oci_pack import pack_image
from node.execute.podman import ContainerSpec, Podman, PodmanSettings, run_args
from node.execute.selftest import Capability, cdi_devices, fake_cdi_spec, self_test
from node.execute.selftest_image import busybox_rootfs
from protocol.envelope import public_key_proto_of
from protocol.identity import peer_id_from_proto_key
from protocol.result import Outcome, verify_result

PROVIDER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
SUBMITTER = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
PROVIDER_ID = peer_id_from_proto_key(public_key_proto_of(PROVIDER))
SUBMITTER_ID = peer_id_from_proto_key(public_key_proto_of(SUBMITTER))
FAKE_GPU = f"GPU-cpn-fake-{os.getpid()}"


@pytest.fixture(scope="session")
def podman_env() -> PodmanEnv:
    return shared_env()


@pytest.fixture(scope="session")
def capability(podman_env: PodmanEnv) -> Capability:
    fake_cdi_spec(podman_env.base / "cdi" / "fake.json", "nvidia.com/gpu", [FAKE_GPU])
    return trio.run(self_test, podman_env.settings, podman_env.image.image_id, podman_env.base)


@pytest.fixture
def executor(podman_env: PodmanEnv, capability: Capability, tmp_path: Path) -> Executor:
    ex = Executor(podman_env.settings, tmp_path / "runs", PROVIDER, PROVIDER_ID)
    ex.capability = capability
    return ex


def _store(image_dir: Path, *extra: Path) -> dict[str, Path]:
    """A stand-in blob store: digest -> file (blobs of the layout plus extras)."""
    paths = {f"sha256:{p.name}": p for p in (image_dir / "blobs" / "sha256").iterdir()}
    for p in extra:
        paths["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()] = p
    return paths


# --------------------------------------------------------------------------- no podman


async def test_log_stream_follow_sees_everything(tmp_path: Path) -> None:
    logs = LogStream(tmp_path / "log", max_bytes=64)
    logs.feed(b"one\ntw")
    got: list[bytes] = []

    async def follower() -> None:
        async for line in logs.follow():
            got.append(line)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follower)
        await trio.testing.wait_all_tasks_blocked()
        logs.feed(b"o\n" + b"x" * 100 + b"\nlast")
        logs.close()
    late = [line async for line in logs.follow()]
    assert got == late == [b"one\n", b"two\n", b"[cpn: log truncated]\n"]
    assert (tmp_path / "log").read_bytes() == b"one\ntwo\n[cpn: log truncated]\n"


def test_run_args_apply_every_default() -> None:
    podman = Podman(PodmanSettings())
    spec = ContainerSpec(job_id="abc", image_id="0" * 64, command=("/bin/sh",), memory_mib=100,
                         cpu_millis=1500, pids_limit=50, gpus=("GPU-1",))
    args = run_args(podman, spec)
    joined = " ".join(args)
    for expected in ("--network none", "--read-only", "--cap-drop all",
                     "--security-opt no-new-privileges", "--memory 100m", "--memory-swap 100m",
                     "--cpus 1.500", "--pids-limit 50", "--pull never", "--ulimit nofile=1024:1024",
                     "--label cpn.job=abc", "--device nvidia.com/gpu=GPU-1"):
        assert expected in joined
    with pytest.raises(ValueError):
        run_args(podman, ContainerSpec(job_id="../x", image_id="0" * 64))


# --------------------------------------------------------------------------- podman


@pytest.mark.podman
def test_self_test_reports_enforced_limits(capability: Capability) -> None:
    assert capability.ok, capability.reason
    assert capability.runtime in ("runc", "crun")
    assert capability.enforced and all(capability.enforced.values())
    assert FAKE_GPU in capability.cdi_gpus and capability.gpus_via_cdi


@pytest.mark.podman
async def test_job_runs_and_outputs_are_collected(
    podman_env: PodmanEnv, executor: Executor, tmp_path: Path
) -> None:
    # A new two-layer image (busybox + one file): assembled from the "store",
    # verified and loaded; the busybox layer is shared with the loaded image.
    root = tmp_path / "rootfs"
    busybox_rootfs(root)
    extra = tmp_path / "extra"
    (extra / "etc").mkdir(parents=True)
    (extra / "etc" / "marker").write_text("layer-two\n")
    image = pack_image([root, extra], tmp_path / "img", cmd=["/bin/sh"], env=["PATH=/bin"])
    data = tmp_path / "input.txt"
    data.write_text("forty-one\n")
    script = (
        "cat /in/data /etc/marker; echo $CPN_TEST; echo 42 > /out/result.txt; mkdir /out/sub; "
        "echo s > /out/sub/f; ln -s /etc/passwd /out/link; touch /in/data 2>/dev/null || echo in-ro"
    )
    job = job_for(image, ("/bin/sh", "-c", script), inputs=((data, "/in/data"),), outputs=("/out",))
    store = _store(image.layout, data)
    stored: dict[str, bytes] = {}  # a stand-in blob store: what it was handed, by file name
    ex = await executor.execute(
        job, agreement_id=bytes(range(16)), job_digest=bytes(32), submitter=SUBMITTER_ID,
        blob_path=store.__getitem__, store_output=lambda p: stored.__setitem__(p.name, p.read_bytes()),
    )
    r = ex.result.message
    log = stored["log"].decode()
    assert (r.outcome, r.exit_code, r.oom, r.timed_out) == (Outcome.EXITED, 0, False, False), log
    assert log.splitlines() == ["forty-one", "layer-two", "1", "in-ro"]
    assert [o.path for o in r.outputs] == ["out/result.txt", "out/sub/f"]  # the symlink is skipped
    assert r.outputs[0].digest == "sha256:" + hashlib.sha256(b"42\n").hexdigest()
    assert r.log.digest == "sha256:" + hashlib.sha256(log.encode()).hexdigest()
    assert r.metering.bytes_in == sum(b.size for b in job.blobs())
    assert r.metering.bytes_out == 3 + 2 + len(log)
    assert r.metering.wall_ms > 0 and r.metering.peak_memory_bytes > 0
    assert stored == {"result.txt": b"42\n", "f": b"s\n", "log": log.encode()}  # outputs and log went to the store
    assert verify_result(ex.result.raw, provider=PROVIDER_ID, submitter=SUBMITTER_ID)
    assert json.loads((ex.run_dir / "state.json").read_text())["phase"] == "done"
    assert podman_env.containers() == []
    # the busybox layer, shared with the test image, is stored once
    layers = json.loads((podman_env.settings.root / "overlay-layers" / "layers.json").read_text())
    assert image.diff_ids[0] == podman_env.image.diff_ids[0] or not podman_env.image.diff_ids
    assert sum(1 for layer in layers if layer.get("diff-digest") == image.diff_ids[0]) == 1
    # once stored, the run's output volume and log are gone: only its record stays
    assert sorted(p.name for p in ex.run_dir.iterdir()) == ["result.cbor", "state.json"]


@pytest.mark.podman
async def test_corrupt_image_refused_before_podman(executor: Executor, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    busybox_rootfs(root)
    (root / "etc" / "corrupt").write_text("x")
    image = pack_image(root, tmp_path / "img", cmd=["/bin/sh"])
    layer = image.blob_path(image.layers[0].digest)
    job = job_for(image, ("/bin/true",))
    raw = bytearray(layer.read_bytes())
    raw[100] ^= 1
    layer.write_bytes(bytes(raw))
    ex = await executor.execute(job, agreement_id=bytes(16), job_digest=bytes(32),
                                submitter=SUBMITTER_ID, blob_path=_store(image.layout).__getitem__)
    assert ex.result.message.outcome is Outcome.FAILED
    assert "bad_digest" in ex.result.message.detail
    assert not (await executor.podman.call("image", "exists", image.image_id, check=False)).returncode == 0


@pytest.mark.podman
async def test_memory_limit_reports_oom(podman_env: PodmanEnv, executor: Executor) -> None:
    job = job_for(podman_env.image, ("/bin/sh", "-c", "echo filling; tail /dev/zero"), memory_mib=16)
    ex = await executor.execute(job, agreement_id=bytes(16), job_digest=bytes(32),
                                submitter=SUBMITTER_ID, blob_path=_store(podman_env.image.layout).__getitem__)
    r = ex.result.message
    assert (r.outcome, r.exit_code, r.oom) == (Outcome.OOM, 137, True)
    assert r.metering.peak_memory_bytes >= 8 << 20
    assert podman_env.containers() == []
    # exit status 137 from a job that SIGKILLed itself, far below the limit, is no OOM
    job = job_for(podman_env.image, ("/bin/sh", "-c", "sh -c 'kill -9 $$'; exit $?"), memory_mib=64)
    ex = await executor.execute(job, agreement_id=bytes(16), job_digest=bytes(32),
                                submitter=SUBMITTER_ID, blob_path=_store(podman_env.image.layout).__getitem__)
    r = ex.result.message
    assert (r.outcome, r.exit_code, r.oom) == (Outcome.EXITED, 137, False), r.detail


@pytest.mark.podman
async def test_pids_network_and_root_confined(podman_env: PodmanEnv, tmp_path: Path) -> None:
    script = (
        "echo net=$(ls /sys/class/net); "
        "nc -w 1 192.0.2.1 80 </dev/null 2>/dev/null && echo net-open || echo net-closed; "
        "touch /rootfile 2>/dev/null && echo root-rw || echo root-ro; "
        "touch /tmp/ok && echo tmp-rw; "
        "for i in $(seq 1 20); do sleep 30 & done; echo all-20-started"
    )
    spec = ContainerSpec(job_id=f"confine-{os.getpid()}", image_id=podman_env.image.image_id,
                         command=("/bin/sh", "-c", script), pids_limit=8, memory_mib=32)
    run = ContainerRun(podman_env.podman(), spec, tmp_path / "log")
    outcome = await run.run(timeout_s=30)
    lines = [line.decode().strip() for line in run.logs.lines()]
    assert lines[:4] == ["net=lo", "net-closed", "root-ro", "tmp-rw"], lines
    # the pids limit held: the shell could not fork its 20 sleeps
    assert "all-20-started" not in lines and any("can't fork" in line for line in lines)
    assert outcome.status == "exited" and outcome.exit_code != 0


@pytest.mark.podman
async def test_timeout_leaves_no_container(podman_env: PodmanEnv, tmp_path: Path) -> None:
    spec = ContainerSpec(job_id=f"timeout-{os.getpid()}", image_id=podman_env.image.image_id,
                         command=("/bin/sh", "-c", "echo up; sleep 60"))
    run = ContainerRun(podman_env.podman(), spec, tmp_path / "log")
    outcome = await run.run(timeout_s=1)
    assert (outcome.status, outcome.exit_code) == ("timeout", None)
    assert podman_env.containers() == []


@pytest.mark.podman
async def test_cancel_leaves_no_container(podman_env: PodmanEnv, tmp_path: Path) -> None:
    spec = ContainerSpec(job_id=f"cancel-{os.getpid()}", image_id=podman_env.image.image_id,
                         command=("/bin/sh", "-c", "echo up; sleep 60"))
    run = ContainerRun(podman_env.podman(), spec, tmp_path / "log")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(run.run, timeout_s=60))
        await run.running.wait()  # first output: the container is up
        assert spec.name() in podman_env.containers()
        run.cancel()
    assert run.outcome is not None and run.outcome.status == "cancelled"
    assert podman_env.containers() == []


@pytest.mark.podman
async def test_orphans_reaped_after_crash(podman_env: PodmanEnv, executor: Executor) -> None:
    # A "previous life": a run record in phase running and its container,
    # whose podman client is killed like a crashed daemon's would be.
    job_id = "ab" * 16
    run_dir = executor.runs_dir / job_id
    run_dir.mkdir(parents=True)
    (run_dir / "state.json").write_text(json.dumps({
        "job_id": job_id, "agreement_id_hex": job_id, "job_digest_hex": "00" * 32,
        "submitter": SUBMITTER_ID, "gpus": [], "started_at": 1, "phase": "running",
    }))
    spec = ContainerSpec(job_id=job_id, image_id=podman_env.image.image_id,
                         command=("/bin/sh", "-c", "echo up; sleep 60"))
    proc = await trio.lowlevel.open_process(executor.podman.cmd(*run_args(executor.podman, spec)),
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    assert await proc.stdout.receive_some(3) == b"up\n"
    proc.kill()
    await proc.wait()
    assert spec.name() in podman_env.containers()  # killing the client left it running

    capability, settled = await executor.start(test_image_dir=podman_env.image.layout)
    assert capability.ok
    assert podman_env.containers() == []
    assert [s.message.outcome for s in settled] == [Outcome.FAILED]
    assert settled[0].message.agreement_id.hex() == job_id
    assert "restarted" in settled[0].message.detail
    # settled once: a second start finds nothing to do
    assert (await executor.start(test_image_dir=podman_env.image.layout))[1] == []


@pytest.mark.podman
async def test_fake_cdi_gpu_passed_by_uuid(
    podman_env: PodmanEnv, executor: Executor, capability: Capability
) -> None:
    # podman 4.3 reads CDI specs only from /etc/cdi and /var/run/cdi.
    spec_file = Path("/var/run/cdi") / f"cpn-test-{os.getpid()}.json"
    fake_cdi_spec(spec_file, "nvidia.com/gpu", [FAKE_GPU])
    try:
        job = job_for(podman_env.image, ("/bin/sh", "-c", "echo gpu=$CPN_FAKE_GPU"))
        ex = await executor.execute(job, agreement_id=bytes(16), job_digest=bytes(32),
                                    submitter=SUBMITTER_ID, gpus=(FAKE_GPU,),
                                    blob_path=_store(podman_env.image.layout).__getitem__)
    finally:
        spec_file.unlink()
    r = ex.result.message
    assert ex.log_path.read_text() == f"gpu={FAKE_GPU}\n"
    assert [g.uuid for g in r.metering.gpus] == [FAKE_GPU]
    assert r.metering.gpus[0].gpu_ms == r.metering.wall_ms
    # a GPU that was not reserved through CDI is refused before podman runs
    ex = await executor.execute(job, agreement_id=bytes(16), job_digest=bytes(32),
                                submitter=SUBMITTER_ID, gpus=("GPU-not-there",),
                                blob_path=_store(podman_env.image.layout).__getitem__)
    assert ex.result.message.outcome is Outcome.FAILED


@pytest.mark.gpu
@pytest.mark.podman
async def test_real_gpu_container(podman_env: PodmanEnv, executor: Executor, tmp_path: Path) -> None:
    """A real GPU through CDI (nvidia-container-toolkit's spec, by UUID)."""
    devices = [d for d in cdi_devices((Path("/etc/cdi"), Path("/var/run/cdi")), "nvidia.com/gpu")
               if d.startswith("GPU-")]
    if not devices:
        ctk = shutil.which("nvidia-ctk")
        if ctk is None:
            pytest.skip("no CDI spec for nvidia.com/gpu and no nvidia-ctk to generate one")
        out = tmp_path / "nvidia.yaml"
        await trio.run_process([ctk, "cdi", "generate", "--device-name-strategy=uuid", f"--output={out}"],
                               capture_stdout=True, capture_stderr=True)
        target = Path("/var/run/cdi") / f"cpn-gpu-test-{os.getpid()}.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out, target)
        devices = [d for d in cdi_devices((target.parent,), "nvidia.com/gpu") if d.startswith("GPU-")]
    else:
        target = None
    try:
        uuid = devices[0]
        executor.capability = Capability(**{**executor.capability.__dict__, "cdi_gpus": devices})
        job = job_for(podman_env.image, ("/bin/sh", "-c", "nvidia-smi -L"))
        ex = await executor.execute(job, agreement_id=bytes(16), job_digest=bytes(32),
                                    submitter=SUBMITTER_ID, gpus=(uuid,),
                                    blob_path=_store(podman_env.image.layout).__getitem__)
    finally:
        if target is not None:
            target.unlink()
    log = ex.log_path.read_text()
    assert ex.result.message.exit_code == 0, log
    assert uuid in log and log.count("GPU ") == 1  # only the reserved GPU is visible


@pytest.mark.podman
async def test_execution_service_self_tests_and_advertises(podman_env: PodmanEnv, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from node.api.routes import execution as routes_module
    from node.api.server import Api
    from node.config import ExecutionSection
    from node.execute.service import ExecutionService

    s = podman_env.settings
    section = ExecutionSection(enabled=True, podman_root=str(s.root), podman_runroot=str(s.runroot))
    service = ExecutionService(section, runs_dir=tmp_path / "runs", key=PROVIDER, peer_id=PROVIDER_ID,
                               clock=lambda: 1_767_225_600)
    api = Api()
    routes_module.register(api, service)
    routes = {r.template: r.handler for r in api.routes}
    async with trio.open_nursery() as nursery:
        await nursery.start(service.run)  # ready once the self-test is done; then it sweeps every 10 min
        nursery.cancel_scope.cancel()
    cap = service.capability
    assert cap.runtime.startswith("podman/") and {"memory", "pids", "network-none"} <= set(cap.limits)
    status = await routes["/v1/execution"](None)  # type: ignore[arg-type]
    assert status["enabled"] and status["capability"]["ok"]
    # the log of a finished run is served from its file
    (tmp_path / "runs" / ("cd" * 16)).mkdir(parents=True)
    (tmp_path / "runs" / ("cd" * 16) / "log").write_bytes(b"a\nb\n")
    response = await routes["/v1/execution/{job}/logs"](SimpleNamespace(params={"job": "cd" * 16}))  # type: ignore[arg-type]
    assert [item async for item in response.items] == [{"line": "a"}, {"line": "b"}]
    # disabled (the default): nothing runs, and the node claims no runtime
    off = ExecutionService(ExecutionSection(), runs_dir=tmp_path / "off", key=PROVIDER, peer_id=PROVIDER_ID,
                           clock=lambda: 1_767_225_600)
    async with trio.open_nursery() as nursery:
        await nursery.start(off.run)
    assert off.capability.runtime == "none" and off.executor is None


@pytest.mark.podman
async def test_job_file_to_result(podman_env: PodmanEnv, executor: Executor, tmp_path: Path) -> None:
    """The submitter's TOML job file (node/jobfile.py) runs as written."""
    from node.jobs.jobfile import job_blob_paths, load_job_file

    (tmp_path / "data.txt").write_text("7\n")
    (tmp_path / "job.toml").write_text(f'''
name = "jobfile-e2e"
image = "{podman_env.image.layout}"
command = ["/bin/sh", "-c", "read x < /in/data; echo $((x * 6)) > /out/answer"]
outputs = ["/out"]
max_price = 1000000
inputs = [{{ file = "data.txt", path = "/in/data" }}]
[resources]
cpu_millis = 500
memory_mib = 32
disk_mib = 8
''')
    from node.transfer.blobstore import BlobStore

    job = load_job_file(tmp_path / "job.toml")
    paths = job_blob_paths(tmp_path / "job.toml")
    store = BlobStore(tmp_path / "node")  # the provider's store: job blobs in, outputs out
    for path in paths.values():
        store.import_file(path)
    ex = await executor.execute(job, agreement_id=b"\x01" * 16, job_digest=bytes(32),
                                submitter=SUBMITTER_ID, blob_path=store.path_of,
                                store_output=store.import_file)
    r = ex.result.message
    assert (r.outcome, r.exit_code) == (Outcome.EXITED, 0), ex.log_path.read_text()
    assert [o.path for o in r.outputs] == ["out/answer"]
    assert r.outputs[0].digest == "sha256:" + hashlib.sha256(b"42\n").hexdigest()
    # the Result's blob references are exactly what the store (and transfer) serve
    for blob in (*r.outputs, r.log):
        meta = store.meta(blob.digest)
        assert meta is not None
        assert (meta.size, meta.chunk_size, meta.chunk_root) == (blob.size, blob.chunk_size, blob.chunk_root)
    store.close()
