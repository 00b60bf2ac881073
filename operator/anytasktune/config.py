"""Operator-wide settings, read once from the environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_TRAINING_IMAGE = "ghcr.io/anytasktune/trainjob:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    training_image: str = DEFAULT_TRAINING_IMAGE
    # Retry backoff for a failed attempt: base * 2^(failures-1), capped.
    retry_backoff_seconds: float = 10.0
    retry_backoff_max_seconds: float = 300.0
    # Safety-net resync of every TaskFineTune (events do the real work).
    resync_seconds: float = 30.0
    # Pods the operator renders satisfy Pod Security "restricted".
    restricted_pods: bool = True
    spec_mount_path: str = "/etc/anytasktune"
    trainjob_module: str = "anytasktune_trainjob"
    # Namespaces to watch; empty = all (cluster-wide RBAC needed).
    watch_namespaces: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        e = os.environ if env is None else env
        return cls(
            training_image=e.get("ANYTASKTUNE_TRAINING_IMAGE", DEFAULT_TRAINING_IMAGE),
            retry_backoff_seconds=float(e.get("ANYTASKTUNE_RETRY_BACKOFF_SECONDS", "10")),
            retry_backoff_max_seconds=float(e.get("ANYTASKTUNE_RETRY_BACKOFF_MAX_SECONDS", "300")),
            resync_seconds=float(e.get("ANYTASKTUNE_RESYNC_SECONDS", "30")),
            restricted_pods=e.get("ANYTASKTUNE_RESTRICTED_PODS", "true").lower() != "false",
            watch_namespaces=tuple(n.strip() for n in e.get("ANYTASKTUNE_NAMESPACES", "").split(",") if n.strip()),
        )
