"""The TOML job file (node/jobfile.py) -> JobSpec, with blobs hashed from disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from node.cli import CliError
from node.jobs.hashcache import CACHE_FILE, MAX_ENTRIES, HashCache, hash_file
from node.jobs.jobfile import (
    DEFAULT_OUTPUT_DISK_MIB,
    JobFileError,
    job_blob_paths,
    load_job,
    load_job_file,
)
from protocol.chunks import DEFAULT_CHUNK_SIZE, chunk_hashes, chunk_root
from protocol.jobspec import JobSpec

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def _blob(layout: Path, data: bytes, media_type: str) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(data)}


def make_layout(layout: Path, layers: list[bytes]) -> dict[str, object]:
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = _blob(layout, b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}', CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST, "config": config,
                "layers": [_blob(layout, data, LAYER) for data in layers]}  # fmt: skip
    desc = _blob(layout, json.dumps(manifest).encode(), MANIFEST)
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [desc]}))
    return manifest


JOB = """
name = "hello"
image = "img"
command = ["/bin/sh", "-c"]
args = ["cat /data/in.txt > /out/result"]
env = { GREETING = "hi" }
outputs = ["/out"]
max_price = 5000

[resources]
cpus = 1.5
memory_mib = 256

[resources.gpu]
count = 2
models = ["NVIDIA H100 80GB HBM3", "a100"]
min_compute_capability = "8.0"

[timeouts]
run_s = 60

[[inputs]]
file = "data/in.txt"
path = "/data/in.txt"
"""


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    make_layout(tmp_path / "img", [b"layer zero" * 1000, b"layer one"])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "in.txt").write_bytes(b"x" * (DEFAULT_CHUNK_SIZE + 10))
    (tmp_path / "job.toml").write_text(JOB)
    return tmp_path


def test_load_job_file(job_dir: Path) -> None:
    spec = load_job_file(job_dir / "job.toml", now=1_700_000_000, nonce=bytes(range(16)))
    assert isinstance(spec, JobSpec)
    assert spec.name == "hello" and spec.workdir == "/" and spec.network == "none"
    assert spec.resources.cpu_millis == 1500
    assert spec.resources.gpu is not None
    assert spec.resources.gpu.models == ("a100", "h100")
    assert spec.resources.gpu.count == 2
    assert spec.timeouts.run_s == 60 and spec.timeouts.transfer_s == 600
    assert spec.created_at == 1_700_000_000 and spec.nonce == bytes(range(16))
    assert len(spec.image.layers) == 2
    data = (job_dir / "data" / "in.txt").read_bytes()
    inp = spec.inputs[0].blob
    assert inp.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert inp.size == len(data) and inp.chunk_size == DEFAULT_CHUNK_SIZE
    assert inp.chunk_root == chunk_root(chunk_hashes(data, DEFAULT_CHUNK_SIZE))
    assert JobSpec.decode(spec.encode()) == spec


def test_blob_paths_cover_every_blob(job_dir: Path) -> None:
    loaded = load_job(job_dir / "job.toml")
    digests = [b.digest for b in loaded.spec.blobs()]
    assert set(loaded.blob_paths) == set(digests)
    for digest, path in loaded.blob_paths.items():
        assert "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert job_blob_paths(job_dir / "job.toml") == loaded.blob_paths


def test_fresh_nonce_each_time(job_dir: Path) -> None:
    a, b = load_job_file(job_dir / "job.toml"), load_job_file(job_dir / "job.toml")
    assert a.nonce != b.nonce and len(a.nonce) == 16
    assert a.created_at > 1_600_000_000


def test_hash_file_empty(tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(b"")
    empty = "sha256:" + hashlib.sha256(b"").hexdigest()
    assert hash_file(tmp_path / "e") == (empty, 0, empty)


def _error(job_dir: Path, text: str) -> str:
    (job_dir / "job.toml").write_text(text)
    with pytest.raises(JobFileError) as err:
        load_job_file(job_dir / "job.toml")
    assert isinstance(err.value, CliError)  # the CLI prints it without a traceback
    return str(err.value)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("max_price = 5000", ""), "max_price: is required"),
        (("max_price = 5000", 'max_price = "lots"'), "max_price: must be an integer, got a string"),
        (('name = "hello"', 'name = "hello"\ncomand = ["x"]'), "comand: unknown key"),
        (("count = 2", "count = 0"), "resources.gpu.count: must be between 1 and 64"),
        (("count = 2", "count = true"), "resources.gpu.count: must be an integer"),
        (('path = "/data/in.txt"', 'path = "data/in.txt"'), "inputs[0].path: must be an absolute path"),
        (('path = "/data/in.txt"', 'path = "/data/../etc/passwd"'), "inputs[0].path: must not contain '..'"),
        (('file = "data/in.txt"', 'file = "data/missing.txt"'), "inputs[0].file:"),
        (('outputs = ["/out"]', 'outputs = ["out"]'), "outputs[0]: must be an absolute path"),
        (('env = { GREETING = "hi" }', 'env = { "BAD-KEY" = "hi" }'), "env.BAD-KEY: key must match"),
        (('env = { GREETING = "hi" }', "env = { N = 1 }"), "env.N: must be a string"),
        (('image = "img"', 'image = "nowhere"'), "image: "),
        (("run_s = 60", "run_s = 0"), "timeouts.run_s: must be between 1"),
        (("run_s = 60", "run_x = 60"), "timeouts.run_x: unknown key"),
        (("cpus = 1.5", "cpus = 1.5\ncpu_millis = 3"), "resources.cpus: give either"),
        (('args = ["cat', 'args = "cat'), "not valid TOML"),
    ],
)
def test_errors_name_the_key(job_dir: Path, change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in JOB
    message = _error(job_dir, JOB.replace(old, new))
    assert expected in message
    assert str(job_dir / "job.toml") in message or "job file" in message


def test_missing_job_file(tmp_path: Path) -> None:
    with pytest.raises(JobFileError, match="cannot read job file"):
        load_job_file(tmp_path / "nope.toml")


def test_tampered_layout_blob_is_refused(job_dir: Path) -> None:
    blobs = sorted((job_dir / "img" / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    largest = blobs[-1]  # the big layer
    largest.write_bytes(largest.read_bytes()[:-1] + b"!")
    with pytest.raises(JobFileError, match="does not match its descriptor"):
        load_job_file(job_dir / "job.toml")


def test_layout_with_two_manifests_is_refused(job_dir: Path) -> None:
    index = json.loads((job_dir / "img" / "index.json").read_text())
    index["manifests"].append(index["manifests"][0])
    (job_dir / "img" / "index.json").write_text(json.dumps(index))
    with pytest.raises(JobFileError, match="exactly one manifest"):
        load_job_file(job_dir / "job.toml")


def test_reads_in_chunks_not_whole_files(job_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Streaming: after the job file itself, no read asks for more than one
    chunk (or one bounded JSON document) and none reads to the end."""
    sizes: list[tuple[str, int]] = []
    real_open = Path.open

    class Spy:
        def __init__(self, f: Any, name: str) -> None:
            self.f, self.name = f, name

        def read(self, n: int = -1) -> bytes:
            sizes.append((self.name, n))
            return self.f.read(n)  # type: ignore[no-any-return]

        def __enter__(self) -> Spy:
            return self

        def __exit__(self, *exc: object) -> None:
            self.f.close()

    def spy_open(self: Path, *args: Any, **kwargs: Any) -> Spy:
        return Spy(real_open(self, *args, **kwargs), self.name)

    monkeypatch.setattr(Path, "open", spy_open)
    load_job_file(job_dir / "job.toml")
    data_reads = [n for name, n in sizes if name != "job.toml"]
    assert len(data_reads) > 5
    assert all(0 < n <= max(DEFAULT_CHUNK_SIZE, (4 << 20) + 1) for n in data_reads)


def test_outputs_get_room_by_default(job_dir: Path) -> None:
    """A job with outputs and no disk_mib used to get 0 bytes of outputs back."""
    assert "disk_mib" not in JOB
    assert load_job_file(job_dir / "job.toml").resources.disk_mib == DEFAULT_OUTPUT_DISK_MIB == 64
    (job_dir / "job.toml").write_text(JOB.replace('outputs = ["/out"]\n', ""))
    assert load_job_file(job_dir / "job.toml").resources.disk_mib == 0  # no outputs: no room needed
    (job_dir / "job.toml").write_text(JOB.replace("memory_mib = 256", "memory_mib = 256\ndisk_mib = 5"))
    assert load_job_file(job_dir / "job.toml").resources.disk_mib == 5


def test_outputs_without_room_are_refused(job_dir: Path) -> None:
    message = _error(job_dir, JOB.replace("memory_mib = 256", "memory_mib = 256\ndisk_mib = 0"))
    assert "resources.disk_mib: is 0, but the job declares outputs: none could come back" in message
    assert "disk_mib = 64" in message


def test_hash_cache_skips_unchanged_files(job_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_file = tmp_path / "node" / CACHE_FILE
    cache_file.parent.mkdir()
    first = HashCache(cache_file)
    plain = load_job(job_dir / "job.toml", now=1, nonce=bytes(16))
    cached = load_job(job_dir / "job.toml", now=1, nonce=bytes(16), hashes=first)
    assert cached == plain and first.hits == 0 and first.misses == len(plain.blob_paths)
    first.save()
    assert (cache_file.stat().st_mode & 0o777) == 0o600
    second = HashCache(cache_file)
    import node.jobs.hashcache as hc

    reads: list[Path] = []
    real = hc.hash_file
    monkeypatch.setattr(hc, "hash_file", lambda p, c=DEFAULT_CHUNK_SIZE: reads.append(p) or real(p, c))
    again = load_job(job_dir / "job.toml", now=1, nonce=bytes(16), hashes=second)
    assert again == plain and second.misses == 0 and reads == []  # nothing read again
    # a changed file (new content, same size) is hashed again
    data = job_dir / "data" / "in.txt"
    data.write_bytes(b"y" * data.stat().st_size)
    third = HashCache(cache_file)
    changed = load_job(job_dir / "job.toml", now=1, nonce=bytes(16), hashes=third)
    assert reads == [data] and third.misses == 1
    assert changed.spec.inputs[0].blob.digest != plain.spec.inputs[0].blob.digest


def test_hash_cache_survives_garbage(tmp_path: Path) -> None:
    path = tmp_path / CACHE_FILE
    for text in ("not json", "[]", '{"version": 1, "files": {"x": [1]}}', '{"version": 99, "files": {}}'):
        path.write_text(text)
        cache = HashCache(path)
        (tmp_path / "f").write_bytes(b"abc")
        assert cache.hash_file(tmp_path / "f") == hash_file(tmp_path / "f")
    assert HashCache(None).hash_file(tmp_path / "f") == hash_file(tmp_path / "f")


def test_hash_cache_is_bounded(tmp_path: Path) -> None:
    cache = HashCache(tmp_path / CACHE_FILE)
    for i in range(MAX_ENTRIES + 5):
        (tmp_path / f"f{i}").write_bytes(b"%d" % i)
        cache.hash_file(tmp_path / f"f{i}")
    cache.save()
    files = json.loads((tmp_path / CACHE_FILE).read_text())["files"]
    assert len(files) == MAX_ENTRIES and str((tmp_path / "f0").resolve()) not in files
