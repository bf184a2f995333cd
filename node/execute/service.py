"""The execution service: the container runtime's start-up self-test, then runs.

Off unless ``[execution] enabled = true``: the self-test starts real
containers, which a node that only routes or a multi-node test must not pay
for.  When on, readiness waits for the self-test (about a second), so the
services started after this one (discovery, negotiation) see the capability
it proved (:attr:`ExecutionService.capability`); if it fails, the capability
stays "none" and the node refuses container jobs rather than claim them.
Results of runs interrupted by a crash are signed at start-up and kept in
``runs/<job>/result.cbor`` for settlement.

What finished jobs leave behind is bounded in time too (:meth:`ExecutionService.sweep`,
every SWEEP_EVERY_S): a result's outputs and log stay pinned in the blob
store until the submitter's receipt unpins them, or ``result_retention_s``
after the result when no receipt comes (the pin expires; the blob store's
own sweep deletes them); leftovers of old run directories are removed; and
images CPN loaded into podman that no job used for ``image_idle_s`` are
removed.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from trio_typing import TaskStatus

from node.clock import UnixClock
from node.config import ExecutionSection
from node.execute.executor import Executor
from node.execute.podman import PodmanSettings
from node.execute.selftest import Capability
from node.transfer.blobstore import BlobStore, BlobStoreError
from protocol.advert import NO_CONTAINER, ContainerCapability
from protocol.envelope import Signed
from protocol.result import Result

__all__ = ["ExecutionService", "advertised_capability", "podman_settings"]

log = logging.getLogger("cpn.execution")

SWEEP_EVERY_S = 600.0  #: seconds between sweeps of results, run directories and images
#: owner prefix of the blob-store pins that keep a result's outputs and log until its receipt
#: (node/jobs/provider.py pins ``result:<agreement>``)
RESULT_PIN_PREFIX = "result:"

#: Self-test limit names as advertised (protocol.advert.ContainerCapability.limits).
_ADVERTISED_LIMITS = {
    "memory": "memory", "cpu": "cpu", "pids": "pids", "network_none": "network-none",
    "read_only_root": "read-only-root", "caps_dropped": "caps-dropped",
    "no_new_privileges": "no-new-privileges", "ulimits": "ulimits",
}


def advertised_capability(cap: Capability | None) -> ContainerCapability:
    """The advert's ContainerCapability: "none" unless the self-test passed."""
    if cap is None or not cap.ok or cap.runtime is None:
        return NO_CONTAINER
    limits = sorted(_ADVERTISED_LIMITS[k] for k, ok in cap.enforced.items() if ok and k in _ADVERTISED_LIMITS)
    return ContainerCapability(runtime=f"podman/{cap.runtime}", limits=tuple(limits), gpu_cdi=cap.gpus_via_cdi)


def podman_settings(config: ExecutionSection, node_label: str) -> PodmanSettings:
    """How to drive podman, from ``[execution]`` (validated when the config was loaded)."""
    root = Path(config.podman_root) if config.podman_root else None
    runroot = Path(config.podman_runroot) if config.podman_runroot else (root / "run" if root else None)
    return PodmanSettings(
        runtime=config.runtime or None, root=root, runroot=runroot, cdi_kind=config.cdi_kind,
        node_label=node_label,
    )


class ExecutionService:
    """Owns the :class:`Executor` (None when execution is disabled)."""

    def __init__(
        self,
        config: ExecutionSection,
        *,
        runs_dir: Path,
        key: Ed25519PrivateKey,
        peer_id: str,
        clock: UnixClock,
        fake_gpus: bool = False,
        blobs: BlobStore | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.blobs = blobs  #: where results' outputs are pinned (the sweep expires those pins)
        self.executor: Executor | None = None
        if config.enabled:
            self.executor = Executor(
                podman_settings(config, node_label=peer_id), runs_dir, key, peer_id, clock=clock,
                max_image_bytes=config.max_image_unpacked_mib << 20,
            )
        #: what the self-test proved (tests may stand in for it before the node starts)
        self.proven: ContainerCapability = NO_CONTAINER
        #: fake GPUs (testnets) have no device nodes: never claim they pass into containers
        self.fake_gpus = fake_gpus
        self.settled: list[Signed[Result]] = []
        self.ready = trio.Event()

    @property
    def capability(self) -> ContainerCapability:
        """The container capability this node may advertise and accept jobs for."""
        if self.fake_gpus and self.proven.gpu_cdi:
            return dataclasses.replace(self.proven, gpu_cdi=False)
        return self.proven

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.executor is None:
            self.ready.set()
            task_status.started()
            return
        try:
            capability, self.settled = await self.executor.start()
        finally:
            self.ready.set()
        self.proven = advertised_capability(capability)
        task_status.started()
        self._log_capability(capability)
        while True:
            await trio.sleep(SWEEP_EVERY_S)
            try:
                await self.sweep()
            except (OSError, RuntimeError, BlobStoreError) as exc:
                log.warning("execution sweep failed: %s", exc)

    async def sweep(self) -> dict[str, int]:
        """Expire result pins without a receipt, clean old run directories and
        remove idle images (see the module docstring).  Returns counts."""
        now = self.clock()
        keep_until = now - self.config.result_retention_s
        done = {"pins": 0, "runs": 0, "images": 0}
        if self.blobs is not None:
            done["pins"] = await trio.to_thread.run_sync(self.blobs.expire_pins, RESULT_PIN_PREFIX, keep_until)
        ex = self.executor
        if ex is not None:
            runs = await trio.to_thread.run_sync(ex.finished_runs, keep_until)
            for job_id in runs:
                await trio.to_thread.run_sync(functools.partial(ex.cleanup, job_id), limiter=ex.limiter)
            done["runs"] = len(runs)
            if ex.capability is not None and ex.capability.ok:
                done["images"] = len(await ex.collect_images(idle_s=self.config.image_idle_s))
        if any(done.values()):
            log.info("execution sweep: %s", done)
        return done

    def _log_capability(self, capability: Capability) -> None:
        if capability.ok:
            log.info("container runtime %s ok; limits %s; GPUs via CDI: %s",
                     capability.runtime, sorted(k for k, v in capability.enforced.items() if v),
                     capability.cdi_gpus or "none")
        else:
            log.warning("%s", capability.reason)
