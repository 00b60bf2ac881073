"""Operator-wide settings, read once from the environment (the Helm chart sets them).
Every ANYTASKTUNE_* variable the operator reads is read here."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from anytasktune_contract.backoff import Backoff

DEFAULT_TRAINING_IMAGE = "ghcr.io/anytasktune/trainjob:0.1.0"


def parse_namespaces(value: str) -> tuple[str, ...]:
    """`a,b , c` -> ("a", "b", "c"); empty = every namespace."""
    return tuple(n.strip() for n in value.split(",") if n.strip())


@dataclass(frozen=True)
class OperatorConfig:
    training_image: str = DEFAULT_TRAINING_IMAGE
    # Retry backoff for a failed attempt: base * 2^(failures-1), capped.
    retry_backoff_seconds: float = 10.0
    retry_backoff_max_seconds: float = 300.0
    # Reading a succeeded run's manifest.json: the same policy, its own numbers.
    manifest_backoff_seconds: float = 5.0
    manifest_backoff_max_seconds: float = 300.0
    # An attempt that has not reached a running Ray job after this long is reported
    # as Stalled (condition, Event, message); it is not stopped.
    startup_timeout_seconds: float = 600.0
    # How soon to look again while a finished attempt's Ray cluster is being deleted.
    release_poll_seconds: float = 5.0
    # Safety-net resync of every TaskFineTune (events do the real work).
    resync_seconds: float = 30.0
    # Pods the operator renders satisfy Pod Security "restricted".
    restricted_pods: bool = True
    spec_mount_path: str = "/etc/anytasktune"
    trainjob_module: str = "anytasktune_trainjob"
    # Namespaces to watch; empty = all (cluster-wide RBAC needed).
    watch_namespaces: tuple[str, ...] = ()
    metrics_port: int = 8080
    # Reconcile passes run at once (each in a thread: blocking API calls).
    workers: int = 4

    @property
    def retry_backoff(self) -> Backoff:
        return Backoff(self.retry_backoff_seconds, self.retry_backoff_max_seconds)

    @property
    def manifest_backoff(self) -> Backoff:
        return Backoff(self.manifest_backoff_seconds, self.manifest_backoff_max_seconds)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        e = os.environ if env is None else env
        return cls(
            training_image=e.get("ANYTASKTUNE_TRAINING_IMAGE", DEFAULT_TRAINING_IMAGE),
            retry_backoff_seconds=float(e.get("ANYTASKTUNE_RETRY_BACKOFF_SECONDS", "10")),
            retry_backoff_max_seconds=float(e.get("ANYTASKTUNE_RETRY_BACKOFF_MAX_SECONDS", "300")),
            startup_timeout_seconds=float(e.get("ANYTASKTUNE_STARTUP_TIMEOUT_SECONDS", "600")),
            resync_seconds=float(e.get("ANYTASKTUNE_RESYNC_SECONDS", "30")),
            restricted_pods=e.get("ANYTASKTUNE_RESTRICTED_PODS", "true").lower() != "false",
            watch_namespaces=parse_namespaces(e.get("ANYTASKTUNE_NAMESPACES", "")),
            metrics_port=int(e.get("ANYTASKTUNE_METRICS_PORT", "8080")),
            workers=int(e.get("ANYTASKTUNE_WORKERS", "4")),
        )
