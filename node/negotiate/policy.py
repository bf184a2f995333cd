"""Admission policy of a provider: who may get quotes, for what, at what price."""

from __future__ import annotations

from dataclasses import dataclass, field

from node.config import Config
from protocol.advert import Price
from protocol.jobspec import JobSpec
from protocol.matching import estimate_cost
from protocol.negotiation import RefusalReason

__all__ = ["Policy"]


@dataclass(frozen=True)
class Policy:
    """What this provider quotes: ``[negotiation]`` plus the prices it advertises."""

    allowed_peers: tuple[str, ...] = ()  #: empty: open to everyone
    max_job_s: int = 24 * 3600  #: longest run time accepted
    max_transfer_s: int = 3600  #: longest transfer phase accepted
    max_queue_s: int = 3600  #: longest queue phase accepted
    max_image_mib: int = 64 * 1024  #: image plus inputs
    min_price: int = 0  #: micro-units: the least any job pays here
    reservation_s: int = 30  #: how long a quote holds capacity
    price: Price = field(
        default_factory=lambda: Price(gpu_hour=1_000_000, cpu_core_hour=10_000, memory_gib_hour=1_000)
    )

    @classmethod
    def from_config(cls, config: Config) -> Policy:
        """``[negotiation]`` and the prices of ``[discovery]`` (both validated at load)."""
        n, d = config.negotiation, config.discovery
        return cls(
            allowed_peers=tuple(n.allowed_peers),
            max_job_s=n.max_job_s,
            max_transfer_s=n.max_transfer_s,
            max_queue_s=n.max_queue_s,
            max_image_mib=n.max_image_mib,
            min_price=n.min_price,
            reservation_s=n.reservation_s,
            price=Price(
                gpu_hour=d.price_gpu_hour,
                cpu_core_hour=d.price_cpu_core_hour,
                memory_gib_hour=d.price_memory_gib_hour,
            ),
        )

    def admit(self, peer: str, job: JobSpec) -> tuple[RefusalReason, str] | None:
        """None if the job may be quoted, else (reason, detail)."""
        if self.allowed_peers and peer not in self.allowed_peers:
            return RefusalReason.POLICY_DENIED, "peer not in allowed_peers"
        # Every phase timeout is capped by this node's policy: a submitter that
        # agrees and vanishes must not hold the capacity for as long as it chose.
        t = job.timeouts
        for name, asked, cap in (("run_s", t.run_s, ("max_job_s", self.max_job_s)),
                                 ("transfer_s", t.transfer_s, ("max_transfer_s", self.max_transfer_s)),
                                 ("queue_s", t.queue_s, ("max_queue_s", self.max_queue_s))):
            if asked > cap[1]:
                return RefusalReason.POLICY_DENIED, f"{name} {asked} above {cap[0]} {cap[1]}"
        size_mib = -(-sum(b.size for b in job.blobs()) // (1 << 20))
        if size_mib > self.max_image_mib:
            return RefusalReason.IMAGE_TOO_LARGE, f"{size_mib} MiB above {self.max_image_mib} MiB"
        return None

    def price_of(self, job: JobSpec) -> int:
        return max(self.min_price, estimate_cost(self.price, job.resources, job.timeouts.run_s))
