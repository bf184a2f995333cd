"""The human job file (TOML) -> an unsigned :class:`~protocol.jobspec.JobSpec`.

A job file names an OCI image layout directory and local input files; this
module hashes them (streaming, never holding a whole file in memory) into
:class:`BlobRef` values with chunk roots, and fills in ``created_at`` and a
random ``nonce``.  The result still has to be sealed with the submitter's key.
With a :class:`~node.jobs.hashcache.HashCache` (``cpn submit`` passes one), a
file hashed before and unchanged since is not read again.

Outputs need room: a job that declares ``outputs`` and no ``disk_mib`` gets
:data:`DEFAULT_OUTPUT_DISK_MIB`; one that declares outputs with ``disk_mib =
0`` is refused here, because none of its outputs could ever come back.

Every mistake is reported as :class:`JobFileError` naming the file and the key
(``resources.gpu.count: must be between 1 and 64``), because the person reading
it wrote the TOML, not the CBOR.  The format is described in spec/jobspec.md §4.
"""

from __future__ import annotations

import json
import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from node.errors import ExitCode, UserError
from node.gpu_names import GpuNameError, parse_models
from node.jobs.hashcache import HashCache, hash_file
from protocol.chunks import DEFAULT_CHUNK_SIZE, DIGEST_RE
from protocol.errors import ValidationError
from protocol.jobspec import (
    INPUT_MEDIA_TYPE,
    BlobRef,
    GpuRequirement,
    ImageRef,
    InputRef,
    JobSpec,
    Resources,
    Timeouts,
)

__all__ = ["JobFileError", "LoadedJob", "load_job", "load_job_file", "job_blob_paths", "DEFAULT_OUTPUT_DISK_MIB"]

_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_MAX_JSON = 4 << 20  # manifests and configs are small; refuse to parse huge "JSON"

_TOP_KEYS = {
    "name", "image", "command", "args", "env", "workdir", "resources", "inputs",
    "outputs", "timeouts", "network", "max_price",
}  # fmt: skip
_RESOURCE_KEYS = {"cpu_millis", "cpus", "memory_mib", "disk_mib", "gpu"}
_GPU_KEYS = {"count", "min_memory_mib", "vendor", "models", "min_compute_capability"}
_TIMEOUT_KEYS = {"transfer_s", "queue_s", "run_s"}
_INPUT_KEYS = {"file", "path"}
DEFAULT_TIMEOUTS = {"transfer_s": 600, "queue_s": 600, "run_s": 3600}
#: ``resources.disk_mib`` of a job that declares outputs and no disk_mib: room for them
DEFAULT_OUTPUT_DISK_MIB = 64


class JobFileError(UserError):
    """The job file (or a file it names) is wrong; the message says where and why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.BAD_INPUT)


@dataclass(frozen=True)
class LoadedJob:
    """A job spec and where each of its blobs lives on this machine."""

    spec: JobSpec
    blob_paths: dict[str, Path]  #: digest -> local file


class _Loader:
    def __init__(self, path: Path, hashes: HashCache | None = None) -> None:
        self.path = path
        self.base = path.parent
        self.blob_paths: dict[str, Path] = {}
        self.hash = hashes.hash_file if hashes is not None else hash_file

    def fail(self, key: str, problem: str) -> JobFileError:
        return JobFileError(f"{self.path}: {key}: {problem}")

    # ---------------------------------------------------------------- TOML values

    def get(self, table: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str, default: Any = ...) -> Any:
        full = f"{where}.{key}" if where else key
        if key not in table:
            if default is ...:
                raise self.fail(full, "is required")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(_toml_type(k.__name__) for k in kinds)
            raise self.fail(full, f"must be {names}, got {_toml_type(type(value).__name__)}")
        return value

    def strings(self, table: dict[str, Any], key: str, where: str = "") -> tuple[str, ...]:
        values = self.get(table, key, list, where, [])
        full = f"{where}.{key}" if where else key
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise self.fail(f"{full}[{i}]", "must be a string")
        return tuple(values)

    def known(self, table: dict[str, Any], allowed: set[str], where: str) -> None:
        unknown = sorted(set(table) - allowed)
        if unknown:
            prefix = f"{where}." if where else ""
            raise self.fail(prefix + unknown[0], f"unknown key (allowed: {', '.join(sorted(allowed))})")

    # ----------------------------------------------------------------- the file

    def load(self, *, now: int, nonce: bytes) -> JobSpec:
        try:
            with self.path.open("rb") as f:
                doc = tomllib.load(f)
        except OSError as exc:
            raise JobFileError(f"cannot read job file {self.path}: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise JobFileError(f"{self.path}: not valid TOML: {exc}") from None
        self.known(doc, _TOP_KEYS, "")
        env = self.get(doc, "env", dict, "", {})
        for k, v in env.items():
            if not isinstance(v, str):
                raise self.fail(f"env.{k}", "must be a string")
        outputs = self.strings(doc, "outputs")
        fields: dict[str, Any] = {
            "name": self.get(doc, "name", str, ""),
            "image": self.image(self.get(doc, "image", str, "")),
            "command": self.strings(doc, "command"),
            "args": self.strings(doc, "args"),
            "env": dict(env),
            "workdir": self.get(doc, "workdir", str, "", "/"),
            "resources": self.resources(self.get(doc, "resources", dict, ""), outputs=bool(outputs)),
            "inputs": self.inputs(self.get(doc, "inputs", list, "", [])),
            "outputs": outputs,
            "timeouts": self.timeouts(self.get(doc, "timeouts", dict, "", {})),
            "network": self.get(doc, "network", str, "", "none"),
            "max_price": self.get(doc, "max_price", int, ""),
            "created_at": now,
            "nonce": nonce,
        }
        return self.build(JobSpec, fields, "")  # type: ignore[no-any-return]

    def build(self, cls: Any, fields: dict[str, Any], where: str) -> Any:
        try:
            return cls(**fields)
        except ValidationError as exc:
            field = f"{where}.{exc.field}" if where else exc.field
            raise self.fail(field, exc.rule) from None

    def resources(self, table: dict[str, Any], *, outputs: bool) -> Resources:
        self.known(table, _RESOURCE_KEYS, "resources")
        if "cpus" in table and "cpu_millis" in table:
            raise self.fail("resources.cpus", "give either cpus or cpu_millis, not both")
        if "cpus" in table:
            cpus = self.get(table, "cpus", (int, float), "resources")
            cpu_millis = round(cpus * 1000)
        else:
            cpu_millis = self.get(table, "cpu_millis", int, "resources", 1000)
        gpu_table = self.get(table, "gpu", dict, "resources", None)
        # Outputs are written to the job's scratch disk: without room none come back.
        disk_mib = self.get(table, "disk_mib", int, "resources", DEFAULT_OUTPUT_DISK_MIB if outputs else 0)
        if outputs and disk_mib == 0:
            raise self.fail("resources.disk_mib", "is 0, but the job declares outputs: none could come back; "
                            f"give them room (e.g. disk_mib = {DEFAULT_OUTPUT_DISK_MIB}) or drop outputs")
        fields = {
            "gpu": None if gpu_table is None else self.gpu(gpu_table),
            "cpu_millis": cpu_millis,
            "memory_mib": self.get(table, "memory_mib", int, "resources"),
            "disk_mib": disk_mib,
        }
        return self.build(Resources, fields, "resources")  # type: ignore[no-any-return]

    def gpu(self, table: dict[str, Any]) -> GpuRequirement:
        where = "resources.gpu"
        self.known(table, _GPU_KEYS, where)
        vendor = self.get(table, "vendor", str, where, None)
        # People write models as they see them ("H100", "RTX 4090", "a100-40g"):
        # the same normalisation as `cpn find --gpu-model` (node/gpu_names.py).
        try:
            choice = parse_models(self.strings(table, "models", where))
        except GpuNameError as exc:
            raise self.fail(f"{where}.models", str(exc)) from None
        fields = {
            "count": self.get(table, "count", int, where, 1),
            "min_memory_mib": self.get(table, "min_memory_mib", int, where, choice.min_memory_mib),
            "vendor": None if vendor is None else vendor.lower(),
            "models": choice.models,
            "min_compute_capability": self.get(table, "min_compute_capability", str, where, None),
        }
        return self.build(GpuRequirement, fields, where)  # type: ignore[no-any-return]

    def timeouts(self, table: dict[str, Any]) -> Timeouts:
        self.known(table, _TIMEOUT_KEYS, "timeouts")
        fields = {k: self.get(table, k, int, "timeouts", d) for k, d in DEFAULT_TIMEOUTS.items()}
        return self.build(Timeouts, fields, "timeouts")  # type: ignore[no-any-return]

    def inputs(self, entries: list[Any]) -> tuple[InputRef, ...]:
        out = []
        for i, entry in enumerate(entries):
            where = f"inputs[{i}]"
            if not isinstance(entry, dict):
                raise self.fail(where, "must be a table with file and path")
            self.known(entry, _INPUT_KEYS, where)
            local = self.local_file(self.get(entry, "file", str, where), f"{where}.file")
            blob = self.blob_of(local, INPUT_MEDIA_TYPE, f"{where}.file")
            out.append(self.build(InputRef, {"blob": blob, "path": self.get(entry, "path", str, where)}, where))
        return tuple(out)

    # ----------------------------------------------------------------- files

    def local_file(self, name: str, key: str) -> Path:
        path = (self.base / name) if not os.path.isabs(name) else Path(name)
        if not path.is_file():
            raise self.fail(key, f"{path} is not a readable file")
        return path

    def blob_of(self, path: Path, media_type: str, key: str, expect: tuple[str, int] | None = None) -> BlobRef:
        try:
            digest, size, root = self.hash(path)
        except OSError as exc:
            raise self.fail(key, f"cannot read {path}: {exc.strerror or exc}") from None
        if expect is not None and (digest, size) != expect:
            raise self.fail(key, f"{path} does not match its descriptor ({expect[0]}, {expect[1]} bytes)")
        self.blob_paths[digest] = path
        try:
            return BlobRef(digest=digest, size=size, chunk_size=DEFAULT_CHUNK_SIZE, chunk_root=root, media_type=media_type)
        except ValidationError as exc:
            raise self.fail(key, f"{exc.field}: {exc.rule}") from None

    def image(self, name: str) -> ImageRef:
        layout = (self.base / name) if not os.path.isabs(name) else Path(name)
        if not (layout / "oci-layout").is_file() or not (layout / "index.json").is_file():
            raise self.fail("image", f"{layout} is not an OCI image layout (needs oci-layout and index.json)")
        index = self.json_file(layout / "index.json", "image")
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list) or len(manifests) != 1:
            raise self.fail("image", f"{layout}/index.json must list exactly one manifest")
        desc = self.descriptor(manifests[0], "image: index.json manifests[0]")
        if desc[0] == _OCI_INDEX:
            raise self.fail("image", "nested image indexes (multi-platform images) are not supported")
        manifest_path = self.blob_file(layout, desc, "image: manifest")
        manifest_ref = self.blob_of(manifest_path, desc[0], "image: manifest", (desc[1], desc[2]))
        manifest = self.json_file(manifest_path, "image: manifest")
        if not isinstance(manifest, dict) or not isinstance(manifest.get("layers"), list):
            raise self.fail("image", "manifest has no layers list")
        cdesc = self.descriptor(manifest.get("config"), "image: manifest config")
        config_ref = self.blob_of(self.blob_file(layout, cdesc, "image: config"), cdesc[0], "image: config", (cdesc[1], cdesc[2]))
        layers = []
        for i, raw in enumerate(manifest["layers"]):
            key = f"image: layers[{i}]"
            ldesc = self.descriptor(raw, key)
            layers.append(self.blob_of(self.blob_file(layout, ldesc, key), ldesc[0], key, (ldesc[1], ldesc[2])))
        return self.build(ImageRef, {"manifest": manifest_ref, "config": config_ref, "layers": tuple(layers)}, "image")  # type: ignore[no-any-return]

    def descriptor(self, desc: Any, key: str) -> tuple[str, str, int]:
        if not isinstance(desc, dict):
            raise self.fail(key, "is not an OCI descriptor")
        media, digest, size = desc.get("mediaType"), desc.get("digest"), desc.get("size")
        if not isinstance(media, str) or not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise self.fail(key, "descriptor needs mediaType and a sha256 digest")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise self.fail(key, "descriptor needs a non-negative size")
        return media, digest, size

    def blob_file(self, layout: Path, desc: tuple[str, str, int], key: str) -> Path:
        path = layout / "blobs" / "sha256" / desc[1].removeprefix("sha256:")
        if not path.is_file():
            raise self.fail(key, f"blob {desc[1]} is missing from {layout}")
        return path

    def json_file(self, path: Path, key: str) -> Any:
        try:
            with path.open("rb") as f:
                data = f.read(_MAX_JSON + 1)
        except OSError as exc:
            raise self.fail(key, f"cannot read {path}: {exc.strerror or exc}") from None
        if len(data) > _MAX_JSON:
            raise self.fail(key, f"{path} is larger than {_MAX_JSON} bytes")
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise self.fail(key, f"{path} is not valid JSON: {exc}") from None


def _toml_type(python_name: str) -> str:
    return {"str": "a string", "int": "an integer", "float": "a number", "list": "an array",
            "dict": "a table", "bool": "a boolean"}.get(python_name, python_name)  # fmt: skip


def load_job(
    path: str | os.PathLike[str], *, now: int | None = None, nonce: bytes | None = None,
    hashes: HashCache | None = None,
) -> LoadedJob:
    """Read a job file: the unsigned spec plus the local path of every blob
    (hashed through ``hashes`` when given, so unchanged files are not read again)."""
    loader = _Loader(Path(path), hashes)
    spec = loader.load(
        now=int(time.time()) if now is None else now,
        nonce=os.urandom(16) if nonce is None else nonce,
    )
    return LoadedJob(spec=spec, blob_paths=dict(loader.blob_paths))


def load_job_file(path: str | os.PathLike[str], *, now: int | None = None, nonce: bytes | None = None) -> JobSpec:
    """The unsigned :class:`JobSpec` of a TOML job file (see spec/jobspec.md §4)."""
    return load_job(path, now=now, nonce=nonce).spec


def job_blob_paths(path: str | os.PathLike[str]) -> dict[str, Path]:
    """``digest -> local file`` for every blob of the job file (image and inputs),
    so a submitter can serve them to providers.  Hashes the files again; use
    :func:`load_job` to get the spec and the paths in one pass."""
    return load_job(path, now=1, nonce=bytes(16)).blob_paths

