"""The example jobs in examples/ load and validate with node.jobfile.

The job files refer to image layouts under examples/.images/, which
examples/build-images creates (they are not committed).  These tests copy the
examples into a temp dir and build the images there with the same code, so
they never write into the checkout and always check the files as committed.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.execute.selftest_image import BUSYBOX, build_busybox_image
from node.jobs.jobfile import load_job
from protocol.envelope import public_key_proto_of
from protocol.identifiers import lookup_ids
from protocol.identity import peer_id_from_proto_key
from protocol.jobspec import JobSpec
from protocol.result import Outcome

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
JOB_FILES = sorted(EXAMPLES.glob("*/job.toml"))

pytestmark = pytest.mark.skipif(
    not BUSYBOX.is_file(), reason=f"{BUSYBOX} missing: apt-get install busybox-static"
)


def _image_names() -> list[str]:
    """The images examples/build-images builds (its ``build NAME TOOL`` lines)."""
    text = (EXAMPLES / "build-images").read_text()
    return re.findall(r"^build (\S+) tools/\S+$", text, flags=re.M)


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of examples/ with every image of build-images built into .images/."""
    dest = tmp_path_factory.mktemp("examples") / "examples"
    shutil.copytree(EXAMPLES, dest, ignore=shutil.ignore_patterns(".images"))
    images = dest / ".images"
    build_busybox_image(images / "busybox")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "build-python-image"), str(images / "python")],
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return dest


def test_there_are_examples() -> None:
    names = {p.parent.name for p in JOB_FILES}
    assert {"hello", "python", "gpu"} <= names


def test_build_images_covers_every_job_image() -> None:
    """Every job file names ../.images/<name> for an image build-images makes."""
    built = set(_image_names())
    assert {"busybox", "python"} <= built
    for job in JOB_FILES:
        m = re.search(r'^image = "\.\./\.images/([a-z0-9-]+)"', job.read_text(), flags=re.M)
        assert m, f"{job}: image must be ../.images/<name>"
        assert m.group(1) in built, f"{job}: image {m.group(1)} is not built by build-images"


@pytest.mark.parametrize("job", JOB_FILES, ids=lambda p: p.parent.name)
def test_example_loads_and_validates(examples: Path, job: Path) -> None:
    loaded = load_job(examples / job.parent.name / "job.toml")
    spec = loaded.spec
    # Validation ran on construction; the encoded spec must decode (validate) again.
    assert JobSpec.decode(spec.encode()) == spec
    assert spec.network == "none" and spec.outputs == ("/out",)
    assert spec.max_price > 0 and spec.timeouts.run_s <= 120
    # Every blob (manifest, config, layers, inputs) is a local file with that digest.
    assert set(loaded.blob_paths) == {b.digest for b in spec.blobs()}
    for inp in spec.inputs:
        assert loaded.blob_paths[inp.blob.digest].is_file()
    assert lookup_ids(spec.resources), "a job must have identifiers to look up"


def test_hello_is_cpu_only_busybox(examples: Path) -> None:
    spec = load_job(examples / "hello" / "job.toml").spec
    assert spec.resources.gpu is None
    assert spec.command == ("/bin/sh", "-c") and "/out/greeting.txt" in spec.args[0]
    busybox = build_busybox_image(examples / ".images" / "busybox")  # reuses the built layout
    assert spec.image.image_id == "sha256:" + busybox.image_id


def test_python_job_mounts_script_and_input(examples: Path) -> None:
    loaded = load_job(examples / "python" / "job.toml")
    paths = {i.path: loaded.blob_paths[i.blob.digest].name for i in loaded.spec.inputs}
    assert paths == {"/job/wordcount.py": "wordcount.py", "/data/input.txt": "input.txt"}
    assert loaded.spec.args[:2] == ("/job/wordcount.py", "/data/input.txt")
    assert len(loaded.spec.image.layers) == 2  # busybox base + python layer


def test_gpu_job_needs_one_big_nvidia_gpu(examples: Path) -> None:
    spec = load_job(examples / "gpu" / "job.toml").spec
    gpu = spec.resources.gpu
    assert gpu is not None
    assert (gpu.count, gpu.vendor, gpu.min_memory_mib) == (1, "nvidia", 16384)
    ids = lookup_ids(spec.resources)
    assert all(i.startswith("cpn:gpu/nvidia") for i in ids), ids


def test_example_scripts_compile() -> None:
    for script in EXAMPLES.glob("*/*.py"):
        compile(script.read_text(), str(script), "exec")


# --------------------------------------------------------------------------- podman


PROVIDER = Ed25519PrivateKey.from_private_bytes(bytes(range(7, 39)))
SUBMITTER_ID = peer_id_from_proto_key(
    public_key_proto_of(Ed25519PrivateKey.from_private_bytes(bytes(range(9, 41))))
)


@pytest.fixture(scope="module")
def podman_capability() -> tuple[Any, Any]:
    """The shared private podman storage of the podman tests and its self-test (once)."""
    from support.podman import shared_env

    from node.execute.selftest import self_test

    env = shared_env()
    capability = trio.run(self_test, env.settings, env.image.image_id, env.base)
    assert capability.ok, capability.reason
    return env, capability


@pytest.mark.podman
@pytest.mark.parametrize("name", ["hello", "python"])
def test_example_runs_in_cpn_container(
    examples: Path, tmp_path: Path, name: str, podman_capability: tuple[Any, Any]
) -> None:
    """The CPU examples run under the provider's real execution path (node.execution:
    image assembled and verified from blobs, every default limit, outputs collected
    and signed), and their outputs pass the submitter's verification."""
    from node.execute.executor import Executor
    from node.jobs.outputs import save_outputs

    env, capability = podman_capability
    loaded = load_job(examples / name / "job.toml")
    ex = Executor(env.settings, tmp_path / "runs", PROVIDER, peer_id_from_proto_key(
        public_key_proto_of(PROVIDER)))
    ex.capability = capability

    async def run() -> object:
        return await ex.execute(loaded.spec, agreement_id=bytes(range(16)), job_digest=bytes(32),
                                submitter=SUBMITTER_ID, blob_path=loaded.blob_paths.__getitem__)

    done = trio.run(run)
    result = done.result.message  # type: ignore[attr-defined]
    log = done.log_path.read_text()  # type: ignore[attr-defined]
    assert (result.outcome, result.exit_code) == (Outcome.EXITED, 0), (result.detail, log)
    # The submitter's side: outputs verified against the signed result, then written.
    produced = {b.digest: path for b, path in done.outputs}  # type: ignore[attr-defined]
    produced[result.log.digest] = done.log_path  # type: ignore[attr-defined]
    dest = tmp_path / "results" / "job"
    assert save_outputs(result, produced.__getitem__, dest) == []
    if name == "hello":
        assert (dest / "out" / "greeting.txt").read_text() == "hello, world\n"
        assert "hello from CPN" in (dest / "log.txt").read_text()
    else:
        import json

        report = json.loads((dest / "out" / "result.json").read_text())
        text = (examples / "python" / "input.txt").read_bytes()
        assert report["input_sha256"] == hashlib.sha256(text).hexdigest()
        assert report["words"] == len(re.findall(r"[a-z']+", text.decode().lower()))
        assert len(report["top_words"]) == 5  # TOP_WORDS from the job's env
