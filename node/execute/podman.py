"""The podman driver: global options, the ``podman run`` command line, orphan reaping.

Why the CLI and not a library: podman's CLI is the stable interface on Debian
12 (podman 4.3.1), and one ``podman run`` costs ~250 ms here, almost all of it
in the OCI runtime.  Every call goes through :meth:`Podman.cmd` so global
options (storage root, runtime, cgroup manager) are set in one place; tests
point podman at their own storage so they never touch the host's.

The rest of the container runtime, by concern:

* :mod:`node.execute.container` -- one run (:class:`~node.execute.container.ContainerRun`),
  its log and how it ended;
* :mod:`node.execute.cgroups` -- metering a run through its cgroups;
* :mod:`node.execute.selftest` -- the start-up self-test that picks the OCI
  runtime and proves every limit is enforced.

Facts this module is built around (docs/FIELD-NOTES "Containers"): default
ulimits fail here (``nofile`` is capped at 20000), so every container gets
explicit ``--ulimit`` values; killing the ``podman run`` client leaves the
container running, so timeout, cancel and crash recovery always end with
``podman rm -f -t 0 NAME`` (:meth:`Podman.remove`).
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import trio

from node.execute.cgroups import CGROUP_PARENT, label_dir, reap_cgroups

__all__ = [
    "PodmanSettings",
    "Podman",
    "Mount",
    "ContainerSpec",
    "run_args",
    "reap_orphans",
    "LABEL_JOB",
    "LABEL_NODE",
    "PODMAN_ERROR",
]

LABEL_JOB = "cpn.job"
LABEL_NODE = "cpn.node"
DEFAULT_ULIMITS = ("nofile=1024:1024", "nproc=4096:4096")
#: How long cleanup calls (rm -f, inspect) may take; they run shielded.
CLEANUP_TIMEOUT_S = 30
#: podman's own failure (as opposed to the container's exit status).
PODMAN_ERROR = 125
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


@dataclass
class PodmanSettings:
    """Global podman options.  ``root``/``runroot`` set: private storage (tests)."""

    podman: str = "podman"
    runtime: str | None = None  #: None: chosen by the self-test
    root: Path | None = None
    runroot: Path | None = None
    storage_driver: str = "overlay"
    cgroup_manager: str = "cgroupfs"
    cdi_kind: str = "nvidia.com/gpu"
    cdi_dirs: tuple[Path, ...] = (Path("/etc/cdi"), Path("/var/run/cdi"))
    ulimits: tuple[str, ...] = DEFAULT_ULIMITS
    node_label: str = "cpn"  #: value of the cpn.node label; orphan reaping filters on it
    cgroup_root: Path = Path("/sys/fs/cgroup")


class Podman:
    """Thin async wrapper of the podman CLI with the node's global options."""

    def __init__(self, settings: PodmanSettings) -> None:
        self.settings = settings

    def global_args(self) -> list[str]:
        s = self.settings
        args = [s.podman]
        if s.root is not None:
            args += ["--root", str(s.root), "--runroot", str(s.runroot or s.root / "run")]
        args += ["--storage-driver", s.storage_driver, "--cgroup-manager", s.cgroup_manager]
        if s.runtime:
            args += ["--runtime", s.runtime]
        return args

    def cmd(self, *args: str) -> list[str]:
        return [*self.global_args(), *args]

    async def call(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        proc = await trio.run_process(
            self.cmd(*args), check=False, capture_stdout=True, capture_stderr=True,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"podman {' '.join(args[:2])} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace').strip()[-1000:]}"
            )
        return proc

    async def remove(self, name: str) -> None:
        """Force-remove a container, at once (shielded: runs during cancellation)."""
        with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_TIMEOUT_S):
            await self.call("rm", "--force", "--time", "0", "--ignore", name, check=False)

    async def container_names(self, label: str) -> list[str]:
        proc = await self.call("ps", "--all", "--filter", f"label={label}", "--format", "{{.Names}}")
        return [n for n in proc.stdout.decode().split() if n]


@dataclass(frozen=True, slots=True)
class Mount:
    source: Path
    target: str
    readonly: bool = True

    def arg(self) -> str:
        if "," in str(self.source) or "," in self.target:
            raise ValueError("mount paths must not contain commas")
        mode = "ro" if self.readonly else "rw"
        return f"type=bind,source={self.source},target={self.target},{mode}=true"


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything podman needs for one run; limits come from the agreement."""

    job_id: str
    image_id: str
    command: tuple[str, ...] = ()  #: replaces the image entrypoint when non-empty
    args: tuple[str, ...] = ()  #: replaces the image CMD when non-empty
    env: dict[str, str] = field(default_factory=dict)
    workdir: str = ""
    memory_mib: int = 256
    cpu_millis: int = 1000
    pids_limit: int = 256
    tmp_mib: int = 64
    mounts: tuple[Mount, ...] = ()
    gpus: tuple[str, ...] = ()  #: reserved GPU UUIDs (CDI device names)

    def name(self) -> str:
        return f"cpn-{self.job_id}"

    def check(self) -> None:
        if not _NAME_RE.match(self.job_id):
            raise ValueError(f"job id {self.job_id!r} is not usable as a container name")
        if self.memory_mib < 6 or self.cpu_millis < 1 or self.pids_limit < 1 or self.tmp_mib < 1:
            raise ValueError("limits must be positive (memory at least 6 MiB)")
        if not re.fullmatch(r"[0-9a-f]{64}", self.image_id):
            raise ValueError("image_id must be the 64-hex config digest")


def run_args(podman: Podman, spec: ContainerSpec) -> list[str]:
    """The full ``podman run`` command line for ``spec`` (all defaults applied)."""
    spec.check()
    s = podman.settings
    name = spec.name()
    args = [
        "run", "--rm", "--name", name,
        "--label", f"{LABEL_JOB}={spec.job_id}", "--label", f"{LABEL_NODE}={s.node_label}",
        "--pull", "never",
        "--network", "none",
        "--read-only", "--read-only-tmpfs=false",
        "--tmpfs", f"/tmp:rw,nosuid,nodev,size={spec.tmp_mib}m,mode=1777",
        "--cap-drop", "all",
        "--security-opt", "no-new-privileges",
        "--memory", f"{spec.memory_mib}m", "--memory-swap", f"{spec.memory_mib}m",
        "--cpus", f"{spec.cpu_millis / 1000:.3f}",
        "--pids-limit", str(spec.pids_limit),
        "--cgroup-parent", f"/{CGROUP_PARENT}/{label_dir(s.node_label)}/{name}",
        "--log-driver", "none",
        "--stop-timeout", "0",
    ]
    for limit in s.ulimits:
        args += ["--ulimit", limit]
    for key in sorted(spec.env):
        args += ["--env", f"{key}={spec.env[key]}"]
    if spec.workdir:
        args += ["--workdir", spec.workdir]
    for m in spec.mounts:
        args += ["--mount", m.arg()]
    for uuid in spec.gpus:
        args += ["--device", f"{s.cdi_kind}={uuid}"]
    if spec.command:
        args += ["--entrypoint", json.dumps(list(spec.command))]
    args.append(spec.image_id)
    args += list(spec.args)
    return args


# --------------------------------------------------------------------------- orphans


async def reap_orphans(podman: Podman) -> list[str]:
    """Remove every container of a previous life of this node and its cgroups.

    Returns the job IDs whose containers were removed, so the execution layer
    can settle their agreements (as failed: the node restarted)."""
    label = f"{LABEL_NODE}={podman.settings.node_label}"
    proc = await podman.call(
        "ps", "--all", "--filter", f"label={label}",
        "--format", "{{.Names}} {{index .Labels \"" + LABEL_JOB + "\"}}",
    )
    jobs = []
    for line in proc.stdout.decode().splitlines():
        parts = line.split()
        if len(parts) < 1:
            continue
        await podman.remove(parts[0])
        jobs.append(parts[1] if len(parts) > 1 else parts[0])
    reap_cgroups(podman.settings.cgroup_root, podman.settings.node_label)
    return sorted(jobs)
