"""Cluster options of ``tokentree serve``, importable without Ray (the CLI's flags come from
them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import TokentreeError


@dataclass
class ClusterConfig:
    """Options of ``tokentree serve`` over Ray Serve replicas (one field per flag)."""

    replicas: int = 1  # model replicas (more than 1: served by Ray Serve)
    min_replicas: int = 0  # with max_replicas: autoscale on ongoing requests between them
    max_replicas: int = 0
    ray_address: str = "auto"  # auto: start a local Ray cluster; else join this one (ray://...)
    replica_cpus: float = 1.0  # CPU cores each replica reserves (its threads default to these)
    replica_gpus: float = 0.0  # GPUs each replica reserves
    target_ongoing_requests: float = 2.0  # autoscaling: ongoing requests per replica to aim at
    affinity: bool = True  # keep a conversation on the replica that served it
    share_every: float = 10.0  # seconds between drafter-knowledge exchanges (0: none)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise TokentreeError(f"--replicas must be >= 1, got {self.replicas}")
        if (self.min_replicas or self.max_replicas) and not (
            0 <= self.min_replicas <= self.max_replicas and self.max_replicas >= 1
        ):
            raise TokentreeError(
                "--min-replicas and --max-replicas must satisfy 0 <= min <= max, max >= 1 "
                f"(got {self.min_replicas} and {self.max_replicas})"
            )
        if self.replica_cpus <= 0 or self.replica_gpus < 0 or self.share_every < 0:
            raise TokentreeError(
                "--replica-cpus must be > 0, --replica-gpus and --share-every >= 0"
            )
        if self.target_ongoing_requests <= 0:
            raise TokentreeError("--target-ongoing-requests must be > 0")

    @property
    def clustered(self) -> bool:
        """Whether this server runs on Ray Serve (several or autoscaled replicas, or a cluster
        named to join)."""
        return self.replicas > 1 or self.max_replicas > 0 or self.ray_address != "auto"

    @property
    def autoscaling(self) -> dict | None:
        """Ray Serve's autoscaling_config (None: a fixed number of replicas)."""
        if not self.max_replicas:
            return None
        return {
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
        }
