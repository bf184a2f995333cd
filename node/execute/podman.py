"""Running job containers with podman, driven from trio.

Why the CLI and not a library: podman's CLI is the stable interface on Debian
12 (podman 4.3.1), and one ``podman run`` costs ~250 ms here, almost all of it
in the OCI runtime.  Every call goes through :meth:`Podman.cmd` so global
options (storage root, runtime, cgroup manager) are set in one place; tests
point podman at their own storage so they never touch the host's.

Facts this module is built around (docs/FIELD-NOTES "Containers"):

* crun refuses hybrid cgroup hosts; runc works.  :func:`choose_runtime`
  picks crun on unified cgroup v2 and runc otherwise, and the self-test
  proves the choice before any job is accepted.
* default ulimits fail here (``nofile`` is capped at 20000): every container
  gets explicit ``--ulimit`` values.
* killing the ``podman run`` client leaves the container running, so timeout,
  cancel and crash recovery always end with ``podman rm -f -t 0 NAME``.
* ``State.OOMKilled`` stays false on this kernel: exit status 137 with a
  memory limit set (and not killed by us) is reported as OOM.

Metering: each container runs under a per-run parent cgroup
(``--cgroup-parent /cpn/<node>/<name>``).  The parent outlives the container and
cgroup accounting is hierarchical, so after exit the parent's CPU time minus
that of conmon's sibling cgroup is the container's CPU time, exactly.  Peak
memory is the container cgroup's own watermark, sampled while it runs, and
the parent's watermark (reset once the container is up, so runc's start-up
memory charged to conmon's cgroup is not counted) for the tail after the last
sample (:class:`CgroupMeter`).
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

__all__ = [
    "PodmanSettings",
    "Podman",
    "Mount",
    "ContainerSpec",
    "RunOutcome",
    "LogStream",
    "Capability",
    "ContainerRun",
    "choose_runtime",
    "cgroup_version",
    "fake_cdi_spec",
    "LABEL_JOB",
    "LABEL_NODE",
]

log = logging.getLogger("cpn.runtime")

LABEL_JOB = "cpn.job"
LABEL_NODE = "cpn.node"
CGROUP_PARENT = "cpn"
DEFAULT_ULIMITS = ("nofile=1024:1024", "nproc=4096:4096")
#: How long cleanup calls (rm -f, inspect) may take; they run shielded.
CLEANUP_TIMEOUT_S = 30
#: podman's own failure (as opposed to the container's exit status).
PODMAN_ERROR = 125
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")


def cgroup_version(root: Path = Path("/sys/fs/cgroup")) -> int:
    """2 on a unified cgroup v2 host, 1 on v1 or hybrid hosts (like these)."""
    return 2 if (root / "cgroup.controllers").exists() else 1


def choose_runtime(version: int | None = None) -> list[str]:
    """Runtimes to try in order: crun first on cgroup v2, runc first otherwise."""
    v = cgroup_version() if version is None else version
    return ["crun", "runc"] if v == 2 else ["runc", "crun"]


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
        "--cgroup-parent", f"/{CGROUP_PARENT}/{_label_dir(s.node_label)}/{name}",
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


# --------------------------------------------------------------------------- metering


class CgroupMeter:
    """Reads the per-run parent cgroup after exit, then removes it."""

    def __init__(self, cgroup_root: Path, node_label: str, name: str) -> None:
        self.root = cgroup_root
        self.rel = Path(CGROUP_PARENT) / _label_dir(node_label) / name
        self.v2 = cgroup_version(cgroup_root) == 2
        self.container_peak = 0
        self.reset_done = False

    def _read(self, *parts: str) -> str | None:
        try:
            return self.root.joinpath(*parts).read_text()
        except OSError:
            return None

    def _int(self, *parts: str) -> int:
        text = self._read(*parts)
        return int(text) if text and text.strip().isdigit() else 0

    def _usage_usec(self, rel: Path) -> int:
        for line in (self._read(str(rel), "cpu.stat") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value)
        return 0

    def _container_dir(self) -> Path | None:
        base = self.root / self.rel if self.v2 else self.root / "memory" / self.rel
        try:
            for d in base.iterdir():
                if d.is_dir() and d.name != "conmon":
                    return d
        except OSError:
            pass
        return None

    def sample(self) -> bool:
        """One look at the running container's own cgroup.  The first time it
        is seen, runc has moved the job into it: reset the parent's watermark
        (v1) so runc's start-up memory, charged to the parent, is forgotten.
        Returns whether the container's cgroup was found."""
        d = self._container_dir()
        if d is None:
            return False
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            self.container_peak = max(self.container_peak, int((d / name).read_text()))
        except (OSError, ValueError):
            return False
        if not self.v2 and not self.reset_done:
            try:
                (self.root / "memory" / self.rel / "memory.max_usage_in_bytes").write_text("0")
                self.reset_done = True
            except OSError:
                pass
        return True

    async def watch(self) -> None:
        """Sample until cancelled: every 20 ms for the first second (short jobs),
        then every 250 ms.  The watermark is monotonic, so sampling late loses
        nothing but the last interval, which the reset parent watermark covers."""
        loop_start = trio.current_time()
        while True:
            self.sample()
            fast = trio.current_time() - loop_start < 1
            await trio.sleep(0.02 if fast else 0.25)

    def peak_memory_bytes(self) -> int:
        """The container's own peak: the largest sample of its cgroup, or the
        parent's watermark since the reset minus conmon's current usage (which
        covers the tail after the last sample), whichever is larger."""
        peaks = [self.container_peak]
        if self.v2:
            peaks.append(self._int(str(self.rel), "memory.peak") - self._int(str(self.rel / "conmon"), "memory.current"))
        elif self.reset_done:
            total = self._int("memory", str(self.rel), "memory.max_usage_in_bytes")
            conmon = self._int("memory", str(self.rel / "conmon"), "memory.usage_in_bytes")
            peaks.append(total - conmon)
        return max(0, *peaks)

    def cpu_ms(self) -> int:
        if self.v2:
            usec = self._usage_usec(self.rel) - self._usage_usec(self.rel / "conmon")
            return max(0, usec) // 1000
        ns = self._int("cpuacct", str(self.rel), "cpuacct.usage")
        ns -= self._int("cpuacct", str(self.rel / "conmon"), "cpuacct.usage")
        return max(0, ns) // 1_000_000

    def dirs(self) -> list[Path]:
        if self.v2:
            return [self.root / self.rel]
        return [d / self.rel for d in self.root.iterdir() if (d / self.rel).is_dir()]

    def remove(self) -> bool:
        """rmdir the run's cgroups (children first).  False if some are still busy."""
        ok = True
        for top in self.dirs():
            for sub in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                ok &= _rmdir(sub)
            ok &= _rmdir(top)
            _rmdir(top.parent)  # the node's directory, once its last run is gone
        return ok


def _label_dir(node_label: str) -> str:
    """A cgroup directory name for the node: runs of different nodes (or test
    processes) on one host never share, or reap, each other's cgroups."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", node_label)[:64] or "node"


def _rmdir(path: Path) -> bool:
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


# --------------------------------------------------------------------------- logs


class LogStream:
    """The combined stdout/stderr of a run: written to a file, followable live.

    ``follow()`` yields every line from the start and then new lines as they
    arrive, ending when the run's output ends, so a late subscriber (``cpn job
    logs --follow``) sees the same log as an early one.  Memory holds at most
    ``max_bytes`` of lines; beyond that lines go only to the file and the
    file itself stops at ``max_bytes`` with a truncation marker.
    """

    def __init__(self, path: Path, max_bytes: int = 16 << 20) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file = path.open("wb")
        self._lines: list[bytes] = []
        self._partial = b""
        self._size = 0
        self.truncated = False
        self.closed = False
        self._changed = trio.Event()

    def feed(self, data: bytes) -> None:
        if self.closed or not data:
            return
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            self._add(line + b"\n")

    def _add(self, line: bytes) -> None:
        if self.truncated:
            return  # a log with holes would mislead: everything after the cut is dropped
        if self._size + len(line) > self.max_bytes:
            if not self.truncated:
                self.truncated = True
                marker = b"[cpn: log truncated]\n"
                self._file.write(marker)
                self._lines.append(marker)
            return
        self._size += len(line)
        self._file.write(line)
        self._lines.append(line)
        self._changed.set()
        self._changed = trio.Event()

    def close(self) -> None:
        if self.closed:
            return
        if self._partial:
            self._add(self._partial)
            self._partial = b""
        self.closed = True
        self._file.close()
        self._changed.set()

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.closed else self._size

    def lines(self) -> list[bytes]:
        return list(self._lines)

    async def follow(self) -> AsyncIterator[bytes]:
        i = 0
        while True:
            while i < len(self._lines):
                yield self._lines[i]
                i += 1
            if self.closed:
                return
            await self._changed.wait()


# --------------------------------------------------------------------------- runs


@dataclass
class RunOutcome:
    """How a container run ended, with its metering."""

    status: str  #: "exited" | "oom" | "timeout" | "cancelled" | "failed"
    exit_code: int | None
    started_at: int  #: unix seconds
    finished_at: int
    wall_ms: int
    cpu_ms: int
    peak_memory_bytes: int
    detail: str = ""


class ContainerRun:
    """One container run: ``await run.run(timeout_s=...)``; ``run.cancel()``
    from elsewhere ends it with status "cancelled"; ``run.logs.follow()``
    streams its output; ``run.running`` is set when the container's first
    output arrives or it exits (what the dispatch benchmark measures)."""

    def __init__(
        self,
        podman: Podman,
        spec: ContainerSpec,
        log_path: Path,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.podman = podman
        self.spec = spec
        self.logs = LogStream(log_path)
        # podman's working directory: conmon drops an "oom" file into it when
        # the kernel OOM-kills the container (a second OOM signal, and litter
        # that must not land in the daemon's cwd).
        self._cwd = Path(tempfile.mkdtemp(prefix=".podman-", dir=log_path.parent))
        self.running = trio.Event()
        self._clock = clock
        self._scope: trio.CancelScope | None = None
        self._cancelled = False
        self.outcome: RunOutcome | None = None

    def cancel(self) -> None:
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self, *, timeout_s: float) -> RunOutcome:
        name = self.spec.name()
        argv = self.podman.cmd(*run_args(self.podman, self.spec))
        meter = CgroupMeter(self.podman.settings.cgroup_root, self.podman.settings.node_label, name)
        started_wall = self._clock()
        started = trio.current_time()
        code: int | None = None
        timed_out = False
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                if self._cancelled:
                    scope.cancel()
                scope.deadline = started + timeout_s
                code = await self._attach(argv, meter)
            timed_out = scope.cancelled_caught and not self._cancelled
        finally:
            # Whatever ended the wait (exit, timeout, cancel, an outer
            # cancellation, a crash of our side), the container must be gone.
            if code is None:
                await self.podman.remove(name)
            self.logs.close()
            self.running.set()
        wall_ms = int((trio.current_time() - started) * 1000)
        peak, cpu = meter.peak_memory_bytes(), meter.cpu_ms()
        conmon_saw_oom = (self._cwd / "oom").exists()
        shutil.rmtree(self._cwd, ignore_errors=True)
        if not meter.remove():
            log.debug("cgroup of %s still busy; reaped at next start", name)
        status, detail = self._classify(code, timed_out, peak, conmon_saw_oom)
        self.outcome = RunOutcome(
            status=status,
            exit_code=code if status in ("exited", "oom") else None,
            started_at=int(started_wall),
            finished_at=int(max(started_wall, self._clock())),
            wall_ms=wall_ms,
            cpu_ms=cpu,
            peak_memory_bytes=peak,
            detail=detail,
        )
        return self.outcome

    def _classify(self, code: int | None, timed_out: bool, peak: int, oom_file: bool) -> tuple[str, str]:
        if self._cancelled:
            return "cancelled", "cancelled"
        if timed_out:
            return "timeout", "run timeout reached"
        if code == PODMAN_ERROR:
            tail = b"".join(self.logs.lines()[-5:]).decode(errors="replace").strip()
            return "failed", f"podman could not run the container: {tail[-400:]}"
        limit = self.spec.memory_mib << 20
        if code == 137 and limit:
            # runc/kernel here never set OOMKilled; 137 = SIGKILL, and nobody
            # but the OOM killer sends SIGKILL to a job we did not stop --
            # unless the job killed itself: then the metered peak stays far
            # below the limit (the peak is never under-estimated, see CgroupMeter).
            if peak and peak < limit // 2 and not oom_file:
                return "exited", "killed by SIGKILL well below the memory limit (not an OOM kill)"
            return "oom", f"killed by the OOM killer (memory limit {self.spec.memory_mib} MiB)"
        assert code is not None
        return "exited", ""

    async def _attach(self, argv: list[str], meter: CgroupMeter) -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(meter.watch)
            proc: trio.Process = await nursery.start(
                _run_process_started, argv, self._stop, self._cwd,
            )
            assert proc.stdout is not None
            async with proc.stdout:
                while True:
                    data = await proc.stdout.receive_some(65536)
                    if not data:
                        break
                    self.running.set()
                    self.logs.feed(data)
            code = await proc.wait()
            nursery.cancel_scope.cancel()
        return code


    async def _stop(self, proc: trio.Process) -> None:
        """How a cancelled ``podman run`` is stopped: the client ignores SIGTERM
        and killing it leaves the container running, so remove the container
        first (the client then exits by itself) and kill the client after."""
        await self.podman.remove(self.spec.name())
        with trio.move_on_after(5):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()


async def _run_process_started(
    argv: list[str], stop: Callable[[trio.Process], Any], cwd: Path,
    *, task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    await trio.run_process(
        argv, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, deliver_cancel=stop, cwd=cwd, task_status=task_status,
    )


# --------------------------------------------------------------------------- self-test


_PROBE = r"""
m=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max 2>/dev/null)
p=$(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max 2>/dev/null)
c=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max 2>/dev/null)
echo "memory=$m"; echo "pids=$p"; echo "cpu=$c"
echo "net=$(ls /sys/class/net | tr '\n' ' ')"
if touch /.cpn-probe 2>/dev/null; then echo root=rw; else echo root=ro; fi
if touch /tmp/.cpn-probe 2>/dev/null; then echo tmp=rw; else echo tmp=ro; fi
echo "caps=$(grep CapEff /proc/self/status | cut -f2)"
echo "nnp=$(grep NoNewPrivs /proc/self/status | cut -f2)"
echo "nofile=$(ulimit -n)"
"""


@dataclass
class Capability:
    """What the start-up self-test proved about this host's container runtime."""

    ok: bool
    runtime: str | None
    reason: str = ""  #: why not ok ("no container runtime: ...")
    enforced: dict[str, bool] = field(default_factory=dict)
    cgroup_version: int = 1
    cdi_gpus: list[str] = field(default_factory=list)  #: CDI device names of cdi_kind

    @property
    def gpus_via_cdi(self) -> bool:
        return bool(self.cdi_gpus)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "runtime": self.runtime, "reason": self.reason,
            "enforced": dict(self.enforced), "cgroup_version": self.cgroup_version,
            "gpus_via_cdi": self.gpus_via_cdi, "cdi_gpus": list(self.cdi_gpus),
        }


def _parse_probe(lines: Sequence[bytes], spec: ContainerSpec) -> dict[str, bool]:
    kv: dict[str, str] = {}
    for line in lines:
        key, _, value = line.decode(errors="replace").strip().partition("=")
        kv[key] = value.strip()
    mem = spec.memory_mib * 1024 * 1024
    quota = round(spec.cpu_millis / 1000 * 100_000)
    return {
        "memory": kv.get("memory") == str(mem),
        "pids": kv.get("pids") == str(spec.pids_limit),
        "cpu": kv.get("cpu") == str(quota),
        "network_none": kv.get("net") == "lo",
        "read_only_root": kv.get("root") == "ro",
        "writable_tmp": kv.get("tmp") == "rw",
        "caps_dropped": kv.get("caps", "").strip("0") == "" and "caps" in kv,
        "no_new_privileges": kv.get("nnp") == "1",
        "ulimits": kv.get("nofile") == "1024",
    }


def cdi_devices(dirs: Sequence[Path], kind: str) -> list[str]:
    """Device names of ``kind`` in the CDI spec dirs (YAML or JSON, parsed
    just enough: we only need to know which names podman can resolve)."""
    names: list[str] = []
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            if f.suffix not in (".yaml", ".yml", ".json"):
                continue
            try:
                text = f.read_text()
            except OSError:
                continue
            if f.suffix == ".json":
                try:
                    doc = json.loads(text)
                except ValueError:
                    continue
                if doc.get("kind") == kind:
                    names += [str(dev.get("name")) for dev in doc.get("devices", [])]
                continue
            if not re.search(rf"^kind:\s*[\"']?{re.escape(kind)}[\"']?\s*$", text, re.M):
                continue
            names += re.findall(r"^\s*-\s*name:\s*[\"']?([^\"'\s]+)", text, re.M)
    return sorted(set(names))


def fake_cdi_spec(path: Path, kind: str, uuids: Sequence[str]) -> None:
    """A CDI spec (JSON, which CDI accepts) for tests on GPU-less machines:
    each fake device only sets ``CPN_FAKE_GPU=<uuid>`` in the container."""
    doc = {
        "cdiVersion": "0.5.0",
        "kind": kind,
        "devices": [
            {"name": u, "containerEdits": {"env": [f"CPN_FAKE_GPU={u}"]}} for u in uuids
        ],
        "containerEdits": {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))


async def self_test(
    settings: PodmanSettings, image_id: str, work_dir: Path, *, timeout_s: float = 60
) -> Capability:
    """Run the test image with limits under each candidate runtime; keep the
    first that enforces everything.  Sets ``settings.runtime`` on success."""
    version = cgroup_version(settings.cgroup_root)
    candidates = [settings.runtime] if settings.runtime else choose_runtime(version)
    reasons = []
    for runtime in candidates:
        trial = PodmanSettings(**{**settings.__dict__, "runtime": runtime})
        podman = Podman(trial)
        spec = ContainerSpec(
            job_id=f"selftest-{secrets.token_hex(4)}", image_id=image_id,
            command=("/bin/sh", "-c", _PROBE), memory_mib=64, cpu_millis=500, pids_limit=64,
            tmp_mib=8,
        )
        run = ContainerRun(podman, spec, work_dir / f"{spec.job_id}.log")
        try:
            outcome = await run.run(timeout_s=timeout_s)
        except OSError as exc:  # podman itself missing
            reasons.append(f"{runtime}: {exc}")
            continue
        if outcome.status != "exited" or outcome.exit_code != 0:
            reasons.append(f"{runtime}: {outcome.status} {outcome.detail}".strip())
            continue
        enforced = _parse_probe(run.logs.lines(), spec)
        run.logs.path.unlink(missing_ok=True)
        missing = [k for k, v in enforced.items() if not v]
        if missing:
            reasons.append(f"{runtime}: limits not enforced: {', '.join(missing)}")
            continue
        settings.runtime = runtime
        return Capability(
            ok=True, runtime=runtime, enforced=enforced, cgroup_version=version,
            cdi_gpus=cdi_devices(settings.cdi_dirs, settings.cdi_kind),
        )
    return Capability(
        ok=False, runtime=None, cgroup_version=version,
        reason="no container runtime: " + "; ".join(reasons or ["no candidate"]),
    )


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
    _reap_cgroups(podman.settings.cgroup_root, podman.settings.node_label)
    return sorted(jobs)


def _reap_cgroups(root: Path, node_label: str) -> None:
    """rmdir this node's leftover per-run cgroups (only empty ones can go)."""
    sub = Path(CGROUP_PARENT) / _label_dir(node_label)
    tops = [root / sub] if cgroup_version(root) == 2 else [
        d / sub for d in root.iterdir() if (d / sub).is_dir()
    ]
    for top in tops:
        if not top.is_dir():
            continue
        for run_dir in top.iterdir():
            if run_dir.is_dir():
                CgroupMeter(root, node_label, run_dir.name).remove()
