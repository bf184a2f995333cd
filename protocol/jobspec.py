"""The job spec: the standard, signed definition of one job (see spec/jobspec.md).

A submitter builds a :class:`JobSpec`, seals it in a signed envelope (message
tag 1, domain ``cpn/jobspec``) and hands it to providers.  Everything a
provider needs to decide, fetch, verify and run the job is in here: the OCI
image as content-addressed blobs with chunk roots (so every chunk fetched from
any peer is verifiable against the submitter's signature), the command, the
resource requirement, inputs and outputs, per-phase timeouts, the network
policy and the most the submitter will pay.

Validation happens on construction and on decoding; a broken spec raises
:class:`~protocol.errors.ValidationError` naming the field and the rule, so a
refusal can tell the submitter exactly what to fix.
"""

from __future__ import annotations

import posixpath
import re

from .chunks import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, digest_of
from .errors import ProtocolError, ValidationError
from .resources import COMPUTE_CAPABILITY_RE, MAX_GPUS, TOKEN_RE, vendor_of_model
from .wire import Message, Struct, message, struct

__all__ = [
    "BlobRef",
    "ImageRef",
    "InputRef",
    "GpuRequirement",
    "Resources",
    "Timeouts",
    "JobSpec",
    "check_container_path",
    "check_created_at",
    "compute_capability_at_least",
    "OCI_MANIFEST",
    "OCI_CONFIG",
    "LAYER_MEDIA_TYPES",
    "NETWORK_POLICIES",
    "LIMITS",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MANIFEST_MEDIA_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_MEDIA_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
LAYER_MEDIA_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
)
INPUT_MEDIA_TYPE = "application/octet-stream"
NETWORK_POLICIES = ("none",)  #: v0.1: jobs never get a network
GPU_VENDORS = ("nvidia", "amd", "intel")

_EMPTY_ROOT = digest_of(b"")
_MEDIA_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}\Z")
#: "sha256:" and 64 lower-case hex digits, nothing after (``$`` would allow a final newline).
DIGEST_TEXT_RE = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}\Z")


class LIMITS:
    """Bounds of v0.1 (spec/jobspec.md, "Limits").  Generous, but finite, so a
    hostile spec cannot make a provider allocate without bound."""

    MAX_BLOB_SIZE = 1 << 40  #: 1 TiB per blob
    MAX_LAYERS = 128
    MAX_INPUTS = 256
    MAX_OUTPUTS = 64
    MAX_ARGV = 256  #: entries of command + args
    MAX_ARG_LEN = 4096
    MAX_ENV = 256
    MAX_ENV_VALUE = 4096
    MAX_PATH = 1024
    MAX_CPU_MILLIS = 1 << 20  #: 1024 cores
    MAX_MEMORY_MIB = 1 << 24  #: 16 TiB
    MAX_DISK_MIB = 1 << 30  #: 1 PiB
    MAX_GPU_MEMORY_MIB = 1 << 22  #: 4 TiB per device
    MAX_MODELS = 16
    MAX_TIMEOUT_S = 7 * 24 * 3600
    MAX_PRICE = (1 << 63) - 1
    MAX_CREATED_AT = 1 << 40
    NONCE_SIZE = 16
    #: container paths under which nothing may be mounted or collected
    RESERVED_PATHS = ("/proc", "/sys", "/dev")


def _bounded(value: int, field: str, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ValidationError(field, f"must be between {lo} and {hi}")


def _plain_text(value: str, field: str, limit: int) -> None:
    if len(value) > limit:
        raise ValidationError(field, f"must be at most {limit} characters")
    if "\x00" in value:
        raise ValidationError(field, "must not contain NUL")


def check_container_path(path: str, field: str, *, root_ok: bool = False) -> str:
    """A container path must be absolute and normalised: no ``..``, no ``.``,
    no empty segments, no trailing slash, and not under /proc, /sys or /dev.

    Normalised paths make two specs that mean the same mount byte-identical and
    make "is this path inside that one" a plain prefix test for providers."""
    _plain_text(path, field, LIMITS.MAX_PATH)
    if not path.startswith("/"):
        raise ValidationError(field, "must be an absolute path")
    if path == "/":
        if root_ok:
            return path
        raise ValidationError(field, "must not be the root directory")
    parts = path[1:].split("/")
    if ".." in parts:
        raise ValidationError(field, "must not contain '..'")
    if "." in parts or "" in parts or posixpath.normpath(path) != path:
        raise ValidationError(field, "must be normalised (no '.', '//' or trailing '/')")
    for reserved in LIMITS.RESERVED_PATHS:
        if path == reserved or path.startswith(reserved + "/"):
            raise ValidationError(field, f"must not be under {reserved}")
    return path


def compute_capability_at_least(have: str, need: str) -> bool:
    """Compare CUDA compute capabilities numerically ("10.0" > "9.0")."""
    if not COMPUTE_CAPABILITY_RE.match(have):
        return False
    h = tuple(int(x) for x in have.split("."))
    n = tuple(int(x) for x in need.split("."))
    return h >= n


@struct
class BlobRef(Struct):
    """A content-addressed blob with what a receiver needs to verify it in chunks."""

    digest: str  #: "sha256:<64 hex>" of the whole blob (the OCI digest)
    size: int  #: bytes
    chunk_size: int  #: bytes per chunk (a power of two, 4 KiB .. 16 MiB)
    chunk_root: str  #: "sha256:<64 hex>" root of the chunk list (protocol/chunks.py)
    media_type: str  #: OCI media type

    def check(self) -> None:
        if not DIGEST_TEXT_RE.match(self.digest):
            raise ValidationError("digest", "must be sha256:<64 lowercase hex>")
        _bounded(self.size, "size", 0, LIMITS.MAX_BLOB_SIZE)
        _bounded(self.chunk_size, "chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)
        if self.chunk_size & (self.chunk_size - 1):
            raise ValidationError("chunk_size", "must be a power of two")
        if not DIGEST_TEXT_RE.match(self.chunk_root):
            raise ValidationError("chunk_root", "must be sha256:<64 lowercase hex>")
        if self.size == 0 and (self.chunk_root != _EMPTY_ROOT or self.digest != _EMPTY_ROOT):
            raise ValidationError("chunk_root", "an empty blob has digest and root sha256('')")
        if not _MEDIA_TYPE_RE.match(self.media_type):
            raise ValidationError("media_type", "must be a media type like type/subtype")


@struct
class ImageRef(Struct):
    """An OCI image as blobs.  The image ID is the config digest."""

    manifest: BlobRef
    config: BlobRef
    layers: tuple[BlobRef, ...]  #: in manifest order, base layer first

    def check(self) -> None:
        if self.manifest.media_type not in MANIFEST_MEDIA_TYPES:
            raise ValidationError("manifest.media_type", f"must be one of {', '.join(MANIFEST_MEDIA_TYPES)}")
        if self.config.media_type not in CONFIG_MEDIA_TYPES:
            raise ValidationError("config.media_type", f"must be one of {', '.join(CONFIG_MEDIA_TYPES)}")
        if len(self.layers) > LIMITS.MAX_LAYERS:
            raise ValidationError("layers", f"at most {LIMITS.MAX_LAYERS} layers")
        for i, layer in enumerate(self.layers):
            if layer.media_type not in LAYER_MEDIA_TYPES:
                raise ValidationError(f"layers[{i}].media_type", "must be an OCI layer media type")

    @property
    def image_id(self) -> str:
        return self.config.digest


@struct
class InputRef(Struct):
    """A blob mounted read-only into the container at ``path``."""

    blob: BlobRef
    path: str  #: absolute, normalised container path

    def check(self) -> None:
        check_container_path(self.path, "path")


@struct
class GpuRequirement(Struct):
    """GPUs a job needs.  All constraints must hold for every one of the GPUs."""

    count: int  #: 1 .. 64 devices
    min_memory_mib: int  #: per device; 0 = any
    vendor: str | None  #: "nvidia" | "amd" | "intel"; None = any
    models: tuple[str, ...]  #: normalised model tokens, sorted, unique; () = any
    min_compute_capability: str | None  #: CUDA "major.minor"; NVIDIA only

    def check(self) -> None:
        _bounded(self.count, "count", 1, MAX_GPUS)
        _bounded(self.min_memory_mib, "min_memory_mib", 0, LIMITS.MAX_GPU_MEMORY_MIB)
        if self.vendor is not None and self.vendor not in GPU_VENDORS:
            raise ValidationError("vendor", f"must be one of {', '.join(GPU_VENDORS)} or null")
        if len(self.models) > LIMITS.MAX_MODELS:
            raise ValidationError("models", f"at most {LIMITS.MAX_MODELS} models")
        for i, model in enumerate(self.models):
            if not TOKEN_RE.match(model):
                raise ValidationError(f"models[{i}]", "must be a normalised model token [a-z0-9]{1,32}")
        if list(self.models) != sorted(set(self.models)):
            raise ValidationError("models", "must be sorted and unique")
        for i, model in enumerate(self.models):
            known = vendor_of_model(model)
            if known is None and self.vendor is None:
                raise ValidationError(f"models[{i}]", f"unknown model {model!r} needs an explicit vendor")
            if known is not None and self.vendor is not None and known != self.vendor:
                raise ValidationError(f"models[{i}]", f"{model!r} is a {known} model, not {self.vendor}")
        if self.min_compute_capability is not None:
            if not COMPUTE_CAPABILITY_RE.match(self.min_compute_capability):
                raise ValidationError("min_compute_capability", 'must be "major.minor" (e.g. "8.0")')
            vendors = {self.vendor} | {vendor_of_model(m) for m in self.models}
            if vendors - {None, "nvidia"}:
                raise ValidationError("min_compute_capability", "only applies to NVIDIA GPUs")


@struct
class Resources(Struct):
    """What a job needs from one provider."""

    gpu: GpuRequirement | None  #: None: a CPU-only job
    cpu_millis: int  #: CPU in thousandths of a core (1000 = one core)
    memory_mib: int
    disk_mib: int  #: scratch space for the container's writable layer and outputs

    def check(self) -> None:
        _bounded(self.cpu_millis, "cpu_millis", 1, LIMITS.MAX_CPU_MILLIS)
        _bounded(self.memory_mib, "memory_mib", 1, LIMITS.MAX_MEMORY_MIB)
        _bounded(self.disk_mib, "disk_mib", 0, LIMITS.MAX_DISK_MIB)


@struct
class Timeouts(Struct):
    """Per-phase limits in seconds; a provider gives up (and says so) when one passes."""

    transfer_s: int  #: fetching image and inputs
    queue_s: int  #: waiting for resources after acceptance
    run_s: int  #: wall-clock run time of the container

    def check(self) -> None:
        for name in ("transfer_s", "queue_s", "run_s"):
            _bounded(getattr(self, name), name, 1, LIMITS.MAX_TIMEOUT_S)


@message(tag=1, domain="cpn/jobspec")
class JobSpec(Message):
    """The standard task definition, signed by the submitter."""

    name: str  #: human label, [A-Za-z0-9][A-Za-z0-9._-]{0,63}
    image: ImageRef
    command: tuple[str, ...]  #: replaces the image entrypoint; () keeps it
    args: tuple[str, ...]  #: replaces the image cmd; () keeps it
    env: dict[str, str]
    workdir: str  #: absolute container path ("/" allowed)
    resources: Resources
    inputs: tuple[InputRef, ...]
    outputs: tuple[str, ...]  #: absolute container paths collected after the run
    timeouts: Timeouts
    network: str  #: "none" (the only policy in v0.1)
    max_price: int  #: most the submitter pays for the whole job, micro-units
    created_at: int  #: unix seconds when the submitter made the spec
    nonce: bytes  #: 16 random bytes: two otherwise equal specs are distinct jobs

    def check(self) -> None:
        if not _NAME_RE.match(self.name):
            raise ValidationError("name", "must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
        if len(self.command) + len(self.args) > LIMITS.MAX_ARGV:
            raise ValidationError("command", f"command and args have at most {LIMITS.MAX_ARGV} entries")
        for field in ("command", "args"):
            for i, arg in enumerate(getattr(self, field)):
                _plain_text(arg, f"{field}[{i}]", LIMITS.MAX_ARG_LEN)
        if self.command and not self.command[0]:
            raise ValidationError("command[0]", "must not be empty")
        if len(self.env) > LIMITS.MAX_ENV:
            raise ValidationError("env", f"at most {LIMITS.MAX_ENV} variables")
        for key, value in self.env.items():
            if not _ENV_KEY_RE.match(key):
                raise ValidationError(f"env.{key}", "key must match [A-Za-z_][A-Za-z0-9_]{0,127}")
            _plain_text(value, f"env.{key}", LIMITS.MAX_ENV_VALUE)
        check_container_path(self.workdir, "workdir", root_ok=True)
        if len(self.inputs) > LIMITS.MAX_INPUTS:
            raise ValidationError("inputs", f"at most {LIMITS.MAX_INPUTS} inputs")
        paths: set[str] = set()
        for i, inp in enumerate(self.inputs):
            if inp.path in paths:
                raise ValidationError(f"inputs[{i}].path", "must be unique")
            paths.add(inp.path)
        if len(self.outputs) > LIMITS.MAX_OUTPUTS:
            raise ValidationError("outputs", f"at most {LIMITS.MAX_OUTPUTS} outputs")
        seen: set[str] = set()
        for i, out in enumerate(self.outputs):
            check_container_path(out, f"outputs[{i}]")
            if out in seen:
                raise ValidationError(f"outputs[{i}]", "must be unique")
            if out in paths:
                raise ValidationError(f"outputs[{i}]", "must not be an input path (inputs are read-only)")
            seen.add(out)
        if self.network not in NETWORK_POLICIES:
            raise ValidationError("network", 'must be "none" in v0.1')
        _bounded(self.max_price, "max_price", 0, LIMITS.MAX_PRICE)
        _bounded(self.created_at, "created_at", 1, LIMITS.MAX_CREATED_AT)
        if len(self.nonce) != LIMITS.NONCE_SIZE:
            raise ValidationError("nonce", f"must be {LIMITS.NONCE_SIZE} bytes")

    def blobs(self) -> tuple[BlobRef, ...]:
        """Every blob the job needs: manifest, config, layers, then inputs."""
        image = self.image
        return (image.manifest, image.config, *image.layers, *(i.blob for i in self.inputs))


def check_created_at(spec: JobSpec, *, now: int, max_age_s: int = 24 * 3600, max_skew_s: int = 300) -> None:
    """Reject a spec made too long ago or in the future (clock skew allowed).

    Not part of :meth:`JobSpec.check` because validity must not depend on the
    clock of whoever decodes it; providers call this with their own ``now``."""
    if spec.created_at > now + max_skew_s:
        raise ProtocolError("from_future", f"created_at {spec.created_at} is after now {now} + {max_skew_s}s")
    if spec.created_at < now - max_age_s:
        raise ProtocolError("expired", f"created_at {spec.created_at} is older than {max_age_s}s")
