"""The execution service: the container runtime's start-up self-test, then runs.

Off unless ``[execution] enabled = true``: the self-test starts real
containers, which a node that only routes or a multi-node test must not pay
for.  When on, readiness waits for the self-test (about a second), so the
services started after this one (discovery, negotiation) see the capability
it proved (:attr:`ExecutionService.capability`); if it fails, the capability
stays "none" and the node refuses container jobs rather than claim them.
Results of runs interrupted by a crash are signed at start-up and kept in
``runs/<job>/result.cbor`` for settlement.
"""

from __future__ import annotations

import dataclasses
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
from protocol.advert import NO_CONTAINER, ContainerCapability
from protocol.envelope import Signed
from protocol.result import Result

__all__ = ["ExecutionService", "advertised_capability", "podman_settings"]

log = logging.getLogger("cpn.execution")

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
    ) -> None:
        self.config = config
        self.executor: Executor | None = None
        if config.enabled:
            self.executor = Executor(
                podman_settings(config, node_label=peer_id), runs_dir, key, peer_id, clock=clock
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
        if capability.ok:
            log.info("container runtime %s ok; limits %s; GPUs via CDI: %s",
                     capability.runtime, sorted(k for k, v in capability.enforced.items() if v),
                     capability.cdi_gpus or "none")
        else:
            log.warning("%s", capability.reason)
