"""Run one agreed job: image -> container -> outputs -> signed Result.

:class:`Executor` is what the rest of the node calls once an agreement stands
and the job's blobs are in the blob store:

1. *image*: if podman already holds the image ID (the config digest) nothing
   is read; otherwise the OCI layout is assembled from the blob store and
   every blob, manifest, config and layer entry is verified
   (:func:`node.execute.oci_verify.assemble_layout`) before ``skopeo`` loads it;
2. *inputs*: each input blob is verified and bind-mounted read-only at its
   path; each output path gets a writable directory on the job's own output
   volume, a file system of ``disk_mib`` (:mod:`node.execute.outvol`), so a
   job cannot write more than it agreed to (nothing else is writable except
   a size-limited tmpfs /tmp);
3. *run*: :class:`node.execute.container.ContainerRun` with the agreement's limits,
   only the reserved GPUs (CDI, by UUID), and the run timeout;
4. *collect*: regular files under the output directories (symlinks and
   special files are never followed) become content-addressed output blobs;
   handed to ``store_output`` (the blob store), after which the run's
   volume and log are removed: the store's copies are what the submitter
   fetches (kept until its receipt, or ``result_retention_s``);
5. *sign*: a :class:`protocol.result.Result` sealed with the node key.

Hashing, copying and deleting files, and making volumes, run in worker
threads (the executor's own limiter), never on the event loop.

Every phase records its progress in ``<runs>/<job>/state.json`` so a node
that crashes mid-run finds the run at the next start (:meth:`Executor.start`),
removes its container and settles it with a FAILED result.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from node.execute.container import ContainerRun, RunOutcome
from node.execute.images import ImageCache
from node.execute.oci import ImageError, ImageSpec, image_exists, load_image
from node.execute.oci_verify import DEFAULT_MAX_IMAGE_BYTES, assemble_layout, verify_blob_file
from node.execute.outvol import OutputVolume, VolumeError, release_at, release_leftovers
from node.execute.podman import ContainerSpec, Mount, Podman, PodmanSettings, reap_orphans, run_args
from node.execute.selftest import Capability, self_test
from node.execute.selftest_image import build_busybox_image
from node.transfer.blobstore import hash_file
from protocol.chunks import DEFAULT_CHUNK_SIZE
from protocol.envelope import Signed, seal
from protocol.result import GpuUsage, Metering, Outcome, OutputBlob, Result

__all__ = ["Executor", "Execution", "ExecutionError", "collect_outputs", "file_blob", "NO_RUNTIME"]

log = logging.getLogger("cpn.execution")

NO_RUNTIME = "no container runtime"
DEFAULT_PIDS_LIMIT = 1024
DEFAULT_LOAD_TIMEOUT_S = 600
#: podman refuses memory limits below 6 MiB
MIN_MEMORY_MIB = 6


class ExecutionError(Exception):
    """A job cannot be run here; ``reason`` is machine-readable."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _lookup(blob_path: Callable[[str], Path], digest: str) -> Path:
    """``blob_path(digest)``, with a missing blob as an ImageError whatever the
    store raises for it (KeyError for a dict, BlobNotFound for node.transfer.blobstore)."""
    from node.transfer.blobstore import BlobStoreError

    try:
        return blob_path(digest)
    except (KeyError, OSError, BlobStoreError) as exc:
        raise ImageError("missing_blob", f"{digest} is not in the blob store ({exc})") from None


def file_blob(path: Path, rel: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> OutputBlob:
    """Digest, size and chunk root of a file, streamed once."""
    digest, size, root = hash_file(path, chunk_size)
    return OutputBlob(path=rel, digest=digest, size=size, chunk_size=chunk_size, chunk_root=root)


def collect_outputs(
    dirs: Sequence[tuple[str, Path]], *, max_bytes: int
) -> tuple[list[tuple[OutputBlob, Path]], str]:
    """Regular files under each ``(container_path, host_dir)``, named
    ``<container path without the leading slash>/<relative path>``.

    Symlinks, devices and FIFOs the job left behind are skipped, never
    followed (a symlink to /etc/shadow must not become an output).  Returns the
    files and a note ("" or why some were dropped)."""
    found: list[tuple[OutputBlob, Path]] = []
    skipped = 0
    total = 0
    for cpath, host in dirs:
        base = cpath.lstrip("/")
        for top, subdirs, files in os.walk(host, followlinks=False):
            subdirs.sort()
            for name in sorted(files):
                p = Path(top) / name
                st = p.lstat()
                if not stat.S_ISREG(st.st_mode):
                    skipped += 1
                    continue
                total += st.st_size
                if total > max_bytes:
                    return [], f"outputs exceed the disk limit ({max_bytes} bytes); none returned"
                rel = f"{base}/{p.relative_to(host).as_posix()}"
                found.append((file_blob(p, rel), p))
    found.sort(key=lambda fp: fp[0].path)
    note = f"{skipped} non-regular output entries skipped" if skipped else ""
    return found, note


@dataclass
class Execution:
    """What one run produced: the signed result and where the bytes are."""

    result: Signed[Result]
    outputs: list[tuple[OutputBlob, Path]]
    log_path: Path
    run_dir: Path


@dataclass
class _Active:
    image_id: str = ""  #: the image GC leaves it alone while the run is active
    run: ContainerRun | None = None
    cancelled: bool = False
    done: trio.Event = field(default_factory=trio.Event)


@dataclass
class _Run:
    """One :meth:`Executor.execute` call, handed from phase to phase."""

    job: Any  #: the protocol.jobspec.JobSpec
    job_id: str
    run_dir: Path
    state: dict[str, Any]  #: persisted as state.json at every phase change
    active: _Active
    image: ImageSpec
    bytes_in: int
    gpus: Sequence[str]  #: reserved GPU UUIDs


class _Refused(Exception):
    """A phase ends the run before the container starts; it is settled with a
    signed FAILED (or CANCELLED) result saying why."""

    def __init__(self, detail: str, outcome: Outcome = Outcome.FAILED) -> None:
        super().__init__(detail)
        self.detail = detail
        self.outcome = outcome


class Executor:
    """Runs agreed jobs in podman and signs their results."""

    def __init__(
        self,
        settings: PodmanSettings,
        runs_dir: Path,
        key: Ed25519PrivateKey,
        peer_id: str,
        *,
        clock: Callable[[], float] = time.time,
        pids_limit: int = DEFAULT_PIDS_LIMIT,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
    ) -> None:
        self.settings = settings
        self.podman = Podman(settings)
        self.runs_dir = runs_dir
        self.key = key
        self.peer_id = peer_id
        self.clock = clock
        self.pids_limit = pids_limit
        #: the most one image's layers may expand to ([execution] max_image_unpacked_mib)
        self.max_image_bytes = max_image_bytes
        self.capability: Capability | None = None
        self._active: dict[str, _Active] = {}
        #: image IDs known to be in podman's storage (forgotten when a run
        #: fails with a podman error, in case someone removed the image)
        self._present: set[str] = set()
        #: blocking file work (hashing inputs, storing outputs, volumes): its own threads
        self.limiter = trio.CapacityLimiter(2)
        runs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # job outputs may carry setuid bits
        self.images = ImageCache(runs_dir / "images.json", clock)
        self.selftest_image: str | None = None

    # ------------------------------------------------------------ start-up

    async def start(self, *, test_image_dir: Path | None = None) -> tuple[Capability, list[Signed[Result]]]:
        """Self-test the runtime, reap containers and runs of a previous life.

        Returns the capability (advertise containers only if ``ok``) and the
        FAILED results signed for runs interrupted by a crash, to be settled."""
        leftovers = await trio.to_thread.run_sync(release_leftovers, self.runs_dir)
        if leftovers:
            log.info("released %d output volumes left by a previous life", leftovers)
        try:
            reaped = await reap_orphans(self.podman)
        except (OSError, RuntimeError) as exc:  # podman missing or broken
            settled = await trio.to_thread.run_sync(self._settle_interrupted, set(), limiter=self.limiter)
            self.capability = Capability(ok=False, runtime=None, reason=f"{NO_RUNTIME}: {exc}")
            return self.capability, settled
        settled = await trio.to_thread.run_sync(self._settle_interrupted, set(reaped), limiter=self.limiter)
        image_dir = test_image_dir or self.runs_dir.parent / "selftest-image"
        try:
            image = build_busybox_image(image_dir)
            await load_image(
                image, podman_args=self.podman.global_args(),
                root=self.settings.root, runroot=self.settings.runroot,
                driver=self.settings.storage_driver,
            )
        except (ImageError, OSError) as exc:
            self.capability = Capability(ok=False, runtime=None, reason=f"{NO_RUNTIME}: {exc}")
            return self.capability, settled
        self.selftest_image = image.image_id
        self.capability = await self_test(self.settings, image.image_id, self.runs_dir)
        self.podman = Podman(self.settings)
        return self.capability, settled

    def _settle_interrupted(self, reaped_jobs: set[str]) -> list[Signed[Result]]:
        """Blocking (hashes logs, writes results): sign FAILED for runs a crash interrupted."""
        settled = []
        for state_file in sorted(self.runs_dir.glob("*/state.json")):
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                continue
            if state.get("phase") == "done":
                continue
            now = int(self.clock())
            result = self._sign(
                state, outcome=Outcome.FAILED, exit_code=None,
                detail="provider node restarted during the run",
                outputs=[], log=file_blob_or_empty(state_file.parent / "log"),
                metering=Metering(wall_ms=0, cpu_ms=0, peak_memory_bytes=0, bytes_in=0,
                                  bytes_out=0, gpus=()),
                started_at=int(state.get("started_at", now)), finished_at=now,
            )
            (state_file.parent / "result.cbor").write_bytes(result.raw)
            state["phase"] = "done"
            state_file.write_text(json.dumps(state))
            settled.append(result)
            log.info("settled interrupted run %s (container reaped: %s)",
                     state.get("job_id"), state.get("job_id") in reaped_jobs)
        return settled

    # ------------------------------------------------------------ running

    def logs(self, job_id: str) -> Any:
        """The live :class:`LogStream` of a running job, or None."""
        active = self._active.get(job_id)
        return active.run.logs if active and active.run else None

    def cancel(self, job_id: str) -> bool:
        active = self._active.get(job_id)
        if active is None:
            return False
        active.cancelled = True
        if active.run is not None:
            active.run.cancel()
        return True

    async def execute(
        self,
        job: Any,
        *,
        agreement_id: bytes,
        job_digest: bytes,
        submitter: str,
        gpus: Sequence[str] = (),
        blob_path: Callable[[str], Path],
        run_timeout_s: int | None = None,
        load_timeout_s: float = DEFAULT_LOAD_TIMEOUT_S,
        store_output: Callable[[Path], Any] | None = None,
        on_running: Callable[[ContainerRun], Any] | None = None,
    ) -> Execution:
        """Run ``job`` (a protocol.jobspec.JobSpec) and return its signed result.

        Never raises for the job's own failures: an unusable image, a refused
        blob or a runtime error all end in a signed FAILED result.  The phases
        of the module docstring are one method each."""
        stale = self.runs_dir / agreement_id.hex()
        if stale.exists() and agreement_id.hex() not in self._active:  # a re-run: nothing stale may leak in
            await trio.to_thread.run_sync(_remove_run_dir, stale, limiter=self.limiter)
        r = self._open_run(job, agreement_id, job_digest, submitter, gpus)
        try:
            try:
                self._check_runtime(r)
                mounts = await self._prepare_image(r, blob_path, load_timeout_s)
                run = self._container(r, mounts)
            except _Refused as refused:
                return self._failed(r.state, r.run_dir, refused.detail, r.bytes_in, outcome=refused.outcome)
            outcome = await self._run(r, run, run_timeout_s, on_running)
            outputs, note, log_blob = await self._collect(r, outcome, store_output)
            return self._sign_run(r, outcome, outputs, note, log_blob)
        finally:
            r.active.done.set()
            self._active.pop(r.job_id, None)
            if r.state.get("phase") != "done":
                # Cancelled from outside (daemon shutdown): the container is
                # already removed; the state file stays for the next start to settle.
                log.info("run %s interrupted in phase %s", r.job_id, r.state.get("phase"))

    def _open_run(self, job: Any, agreement_id: bytes, job_digest: bytes, submitter: str,
                  gpus: Sequence[str]) -> _Run:
        """A fresh run directory and state file (phase "image"), registered as active."""
        job_id = agreement_id.hex()
        if job_id in self._active:
            raise ExecutionError("duplicate_run", f"agreement {job_id} is already running here")
        run_dir = self.runs_dir / job_id
        run_dir.mkdir(parents=True)
        state: dict[str, Any] = {
            "job_id": job_id, "agreement_id_hex": agreement_id.hex(),
            "job_digest_hex": job_digest.hex(), "submitter": submitter,
            "gpus": list(gpus), "started_at": int(self.clock()), "phase": "image",
        }
        self._save_state(run_dir, state)
        image, bytes_in = ImageSpec.from_ref(job.image), sum(b.size for b in job.blobs())
        active = self._active[job_id] = _Active(image_id=image.image_id)  # registered last: nothing above may leave it behind
        return _Run(job=job, job_id=job_id, run_dir=run_dir, state=state, active=active,
                    image=image, bytes_in=bytes_in, gpus=gpus)

    def _check_runtime(self, r: _Run) -> None:
        """The self-test passed, and every reserved GPU is reachable through CDI."""
        if self.capability is None or not self.capability.ok:
            raise _Refused(self.capability.reason if self.capability else NO_RUNTIME)
        if r.gpus and not set(r.gpus) <= set(self.capability.cdi_gpus):
            raise _Refused("reserved GPUs are not available through CDI")

    async def _prepare_image(self, r: _Run, blob_path: Callable[[str], Path], load_timeout_s: float) -> list[Mount]:
        """*image* and *inputs*: the verified image in podman, the verified
        inputs and the output directories as mounts."""
        try:
            with trio.fail_after(load_timeout_s):
                await self._ensure_image(r.image, blob_path, r.run_dir)
            return await trio.to_thread.run_sync(self._mounts, r.job, blob_path, r.run_dir, limiter=self.limiter)
        except ImageError as exc:
            raise _Refused(f"image refused: {exc}") from None
        except VolumeError as exc:
            raise _Refused(f"job cannot be run here: {exc}") from None
        except trio.TooSlowError:
            raise _Refused("image load timed out") from None

    def _container(self, r: _Run, mounts: list[Mount]) -> ContainerRun:
        """The container run with the agreement's limits (not started yet)."""
        if r.active.cancelled:
            raise _Refused("cancelled", Outcome.CANCELLED)
        job = r.job
        spec = ContainerSpec(
            job_id=r.job_id, image_id=r.image.image_id,
            command=tuple(job.command), args=tuple(job.args), env=dict(job.env),
            workdir=job.workdir, memory_mib=max(MIN_MEMORY_MIB, job.resources.memory_mib),
            cpu_millis=job.resources.cpu_millis, pids_limit=self.pids_limit,
            tmp_mib=max(1, min(job.resources.disk_mib, job.resources.memory_mib)),
            mounts=tuple(mounts), gpus=tuple(sorted(r.gpus)),
        )
        try:
            run_args(self.podman, spec)  # validates names, limits and mount paths
        except ValueError as exc:
            raise _Refused(f"job cannot be run here: {exc}") from None
        return ContainerRun(self.podman, spec, r.run_dir / "log", clock=self.clock)

    async def _run(self, r: _Run, run: ContainerRun, run_timeout_s: int | None,
                   on_running: Callable[[ContainerRun], Any] | None) -> RunOutcome:
        """*run*: the container, until it exits, times out or is cancelled."""
        r.active.run = run
        r.state["phase"] = "running"
        self._save_state(r.run_dir, r.state)
        if on_running is not None:
            on_running(run)  # e.g. to follow run.logs or await run.running
        timeout = run_timeout_s if run_timeout_s is not None else r.job.timeouts.run_s
        outcome = await run.run(timeout_s=timeout)
        if outcome.status == "failed":
            self._present.discard(r.image.image_id)
        return outcome

    async def _collect(self, r: _Run, outcome: RunOutcome, store_output: Callable[[Path], Any] | None,
                       ) -> tuple[list[tuple[OutputBlob, Path]], str, OutputBlob]:
        """*collect*: the outputs (if the job ran to an end), a note on what was
        dropped, and the log, each handed to ``store_output``."""
        job, run_dir = r.job, r.run_dir
        out_dirs = [(p, run_dir / "out" / str(i)) for i, p in enumerate(job.outputs)]
        outputs: list[tuple[OutputBlob, Path]] = []
        note = ""
        if outcome.status in ("exited", "oom", "timeout"):
            outputs, note = await trio.to_thread.run_sync(
                lambda: collect_outputs(out_dirs, max_bytes=job.resources.disk_mib << 20), limiter=self.limiter
            )
        log_blob = await trio.to_thread.run_sync(file_blob, run_dir / "log", "", limiter=self.limiter)
        if store_output is not None:

            def store_all() -> None:
                for path in [p for _, p in outputs] + [run_dir / "log"]:
                    store_output(path)
                _release_run_files(run_dir)  # the store holds them now: the volume and log go

            await trio.to_thread.run_sync(store_all, limiter=self.limiter)
        return outputs, note, log_blob

    def _sign_run(self, r: _Run, outcome: RunOutcome, outputs: list[tuple[OutputBlob, Path]], note: str,
                  log_blob: OutputBlob) -> Execution:
        """*sign*: the Result with its metering, sealed and recorded as done."""
        bytes_out = sum(o.size for o, _ in outputs) + log_blob.size
        metering = Metering(
            wall_ms=outcome.wall_ms, cpu_ms=outcome.cpu_ms,
            peak_memory_bytes=outcome.peak_memory_bytes, bytes_in=r.bytes_in,
            bytes_out=bytes_out,
            gpus=tuple(GpuUsage(uuid=u, gpu_ms=outcome.wall_ms) for u in sorted(r.gpus)),
        )
        detail = "; ".join(x for x in (outcome.detail, note) if x)[:512]
        result = self._sign(
            r.state, outcome=Outcome(outcome.status), exit_code=outcome.exit_code,
            detail=detail, outputs=[o for o, _ in outputs], log=log_blob, metering=metering,
            started_at=outcome.started_at, finished_at=outcome.finished_at,
        )
        self._finish(r.state, r.run_dir, result)
        return Execution(result, outputs, r.run_dir / "log", r.run_dir)

    def cleanup(self, job_id: str) -> None:
        """Blocking: drop a finished run's outputs, volume and log (once they are
        in the blob store); keep ``state.json`` and ``result.cbor`` as the run's record."""
        run_dir = self.runs_dir / job_id
        if job_id in self._active or not (run_dir / "result.cbor").is_file():
            return
        _release_run_files(run_dir)

    def finished_runs(self, before: float) -> list[str]:
        """Blocking: job IDs of finished runs whose result was signed before
        ``before`` and that still hold more than their record."""
        out = []
        for result in self.runs_dir.glob("*/result.cbor"):
            try:
                old = result.stat().st_mtime < before and result.parent.name not in self._active
                if old and any(c.name not in ("state.json", "result.cbor") for c in result.parent.iterdir()):
                    out.append(result.parent.name)
            except OSError:
                continue
        return sorted(out)

    async def collect_images(self, *, idle_s: float) -> list[str]:
        """Remove images CPN loaded that no run used for ``idle_s`` (never one a
        run uses now, nor the self-test image).  Returns the IDs removed."""
        keep = {a.image_id for a in self._active.values()}
        keep |= {self.selftest_image} if self.selftest_image else set()
        removed = await self.images.collect(self.podman, idle_s=idle_s, keep=keep)
        self._present.difference_update(removed)
        return removed

    async def _ensure_image(self, image: ImageSpec, blob_path: Callable[[str], Path], run_dir: Path) -> None:
        await trio.to_thread.run_sync(self.images.touch, image.image_id, limiter=self.limiter)
        if image.image_id in self._present:
            return  # checked (or loaded) by this process: skip a podman call
        args = self.podman.global_args()
        if await image_exists(args, image.image_id):
            self._present.add(image.image_id)
            return  # verified when it was loaded
        layout_dir = run_dir / "image"
        try:
            layout = await trio.to_thread.run_sync(
                functools.partial(assemble_layout, image, lambda d: _lookup(blob_path, d), layout_dir,
                                  max_image_bytes=self.max_image_bytes),
                limiter=self.limiter,
            )
            await load_image(
                layout, podman_args=args, root=self.settings.root,
                runroot=self.settings.runroot, driver=self.settings.storage_driver,
            )
        finally:
            await trio.to_thread.run_sync(functools.partial(shutil.rmtree, layout_dir, ignore_errors=True),
                                          limiter=self.limiter)
        self._present.add(image.image_id)

    def _mounts(self, job: Any, blob_path: Callable[[str], Path], run_dir: Path) -> list[Mount]:
        """Blocking (hashes every input, makes the output volume): the mounts of the run."""
        mounts = []
        for inp in job.inputs:
            src = _lookup(blob_path, inp.blob.digest)
            verify_blob_file(src, inp.blob.digest, inp.blob.size)
            mounts.append(Mount(src, inp.path, readonly=True))
        if job.outputs:
            volume = OutputVolume(run_dir, job.resources.disk_mib)
            volume.create()
            for i, path in enumerate(job.outputs):
                mounts.append(Mount(volume.dir_for(i), path, readonly=False))
        return mounts

    # ------------------------------------------------------------ results

    def _failed(
        self, state: dict[str, Any], run_dir: Path, detail: str, bytes_in: int,
        outcome: Outcome = Outcome.FAILED,
    ) -> Execution:
        log_path = run_dir / "log"
        if not log_path.exists():
            log_path.write_bytes(b"")
        now = int(self.clock())
        result = self._sign(
            state, outcome=outcome, exit_code=None, detail=detail[:512], outputs=[],
            log=file_blob(log_path, ""),
            metering=Metering(wall_ms=0, cpu_ms=0, peak_memory_bytes=0, bytes_in=bytes_in,
                              bytes_out=0, gpus=()),
            started_at=int(state["started_at"]), finished_at=max(now, int(state["started_at"])),
        )
        self._finish(state, run_dir, result)
        return Execution(result, [], log_path, run_dir)

    def _sign(
        self, state: dict[str, Any], *, outcome: Outcome, exit_code: int | None, detail: str,
        outputs: list[OutputBlob], log: OutputBlob, metering: Metering, started_at: int,
        finished_at: int,
    ) -> Signed[Result]:
        result = Result(
            agreement_id=bytes.fromhex(state["agreement_id_hex"]),
            job_digest=bytes.fromhex(state["job_digest_hex"]),
            submitter=state["submitter"], provider=self.peer_id,
            outcome=outcome, exit_code=exit_code,
            oom=outcome is Outcome.OOM, timed_out=outcome is Outcome.TIMEOUT,
            detail=detail, outputs=tuple(outputs), log=log, metering=metering,
            started_at=started_at, finished_at=max(started_at, finished_at),
        )
        return seal(result, self.key)

    def _finish(self, state: dict[str, Any], run_dir: Path, result: Signed[Result]) -> None:
        (run_dir / "result.cbor").write_bytes(result.raw)
        state["phase"] = "done"
        self._save_state(run_dir, state)

    @staticmethod
    def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
        tmp = run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, run_dir / "state.json")


def _release_run_files(run_dir: Path) -> None:
    """Blocking: a run's output volume and every file but its record
    (``state.json``, ``result.cbor``)."""
    release_at(run_dir)
    for child in run_dir.iterdir():
        if child.name in ("state.json", "result.cbor"):
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _remove_run_dir(run_dir: Path) -> None:
    release_at(run_dir)
    shutil.rmtree(run_dir)


def file_blob_or_empty(path: Path) -> OutputBlob:
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return file_blob(path, "")
