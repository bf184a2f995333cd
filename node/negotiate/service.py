"""The negotiation service: serves ``/cpn/negotiate/0.1.0`` and job status events.

The protocol logic is the sans-IO machine of :mod:`protocol.negotiation_state`;
:class:`~node.negotiate.provider.Provider` moves its frames, applies the
admission policy (:mod:`node.negotiate.policy`) and the node's capacity
(:mod:`node.negotiate.scheduler`), and persists every step
(:mod:`node.negotiate.agreements`) before acting on it, so a restart neither
loses an agreement nor runs one twice.  The submitter side is
:mod:`node.negotiate.client`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from trio_typing import TaskStatus

from node.clock import UnixClock
from node.negotiate.agreements import AgreementStore
from node.negotiate.guard import PeerLog, guarded
from node.negotiate.limits import PeerGate, PeerLimits
from node.negotiate.policy import Policy
from node.negotiate.provider import Provider
from node.negotiate.scheduler import Scheduler
from node.negotiate.status import status_handler
from node.p2p import P2PHost
from protocol.advert import ContainerCapability
from protocol.jobspec import JobSpec
from protocol.resources import ResourceSet
from protocol.streams import NEGOTIATE_PROTOCOL, STATUS_PROTOCOL

__all__ = ["NegotiationService", "runtime_check"]

log = logging.getLogger("cpn.negotiation")


def runtime_check(
    capability: ContainerCapability, job: JobSpec, resources: ResourceSet | None
) -> str | None:
    """Why the verified container runtime cannot run ``job`` here (None: it can)."""
    if capability.runtime == "none":
        return "no verified container runtime on this node (execution disabled or self-test failed)"
    if job.resources.gpu is not None and not capability.gpu_cdi:
        if resources is not None and not resources.gpus:
            return None  # no GPU at all: the scheduler's no_matching_gpu is the clearer reason
        return "GPUs cannot be passed into containers here (no CDI device for them: fake or unconfigured GPUs)"
    return None


class NegotiationService:
    """Provider side of negotiation, and the submitter's status-event receiver."""

    def __init__(
        self,
        *,
        p2p: P2PHost,
        key: Ed25519PrivateKey,
        agreements: AgreementStore,
        scheduler: Scheduler,
        policy: Policy,
        clock: UnixClock,
        capability: Callable[[], ContainerCapability],
        limits: PeerLimits | None = None,
        peer_log: PeerLog | None = None,
    ) -> None:
        self.p2p = p2p
        self.agreements = agreements
        self.key = key
        self.clock = clock
        self.peer_log = peer_log if peer_log is not None else PeerLog(log)
        self.gate = PeerGate(scheduler, limits or PeerLimits())
        self.provider = Provider(
            key=key, peer_id=p2p.peer_id, store=agreements, scheduler=scheduler, policy=policy,
            clock=clock,
            runtime_check=lambda job: runtime_check(capability(), job, scheduler.resources),
            gate=self.gate, peer_log=self.peer_log,
        )

    def resume(self) -> None:
        """After a restart: re-commit the capacity of stored agreements (before the
        provider side resumes their jobs) and expire stale reservations."""
        resumed = self.provider.resume()
        if resumed:
            log.info("resumed %d agreement(s) after restart", len(resumed))

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve offers and status events (call :meth:`resume` first)."""
        # Guarded: nothing a request raises leaves the handler (it would end the daemon).
        self.p2p.set_stream_handler(NEGOTIATE_PROTOCOL, guarded(NEGOTIATE_PROTOCOL, self.provider.handle,
                                                                self.peer_log))
        status = status_handler(self.key, self.agreements, self.clock)
        self.p2p.set_stream_handler(STATUS_PROTOCOL, guarded(STATUS_PROTOCOL, status, self.peer_log))
        task_status.started()
