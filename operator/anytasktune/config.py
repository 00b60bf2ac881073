"""Operator-wide settings, read once from the environment (the Helm chart sets them).
Every ANYTASKTUNE_* variable the operator reads is read here."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from anytasktune_contract.backoff import Backoff

DEFAULT_TRAINING_IMAGE = "ghcr.io/anytasktune/trainjob:0.1.0"


def parse_namespaces(value: str) -> tuple[str, ...]:
    """`a,b , c` -> ("a", "b", "c"); empty = every namespace."""
    return tuple(n.strip() for n in value.split(",") if n.strip())


def _endpoint(url: str) -> str:
    return url.strip().rstrip("/").lower()


@dataclass(frozen=True)
class ReadRule:
    """Namespaces whose TaskFineTunes may have results read from these endpoints and prefixes."""

    namespaces: tuple[str, ...]  # "*" = every namespace
    endpoints: tuple[str, ...] = ("",)  # "" = the operator's default endpoint (no spec.storage.endpoint); "*" = any
    outputs: tuple[str, ...] = ()  # s3://bucket/prefix/ ; "{namespace}" is replaced by the TaskFineTune's namespace

    def allows(self, namespace: str, endpoint: str, uri: str) -> bool:
        return (
            ("*" in self.namespaces or namespace in self.namespaces)
            and ("*" in self.endpoints or _endpoint(endpoint) in {_endpoint(e) for e in self.endpoints})
            and any(uri.startswith(prefix.replace("{namespace}", namespace)) for prefix in self.outputs)
        )


@dataclass(frozen=True)
class StorageReadPolicy:
    """Which run manifests the operator may read, with its own credentials, into a
    TaskFineTune's status. The TaskFineTune's author chooses spec.storage; without this
    policy one namespace could make the operator read another team's bucket into its
    status, or send signed requests to a host of its choosing. Empty = read nothing."""

    rules: tuple[ReadRule, ...] = field(default_factory=tuple)

    def allows(self, namespace: str, endpoint: str | None, uri: str) -> bool:
        return any(rule.allows(namespace, endpoint or "", uri) for rule in self.rules)

    @classmethod
    def parse(cls, text: str) -> StorageReadPolicy:
        """JSON: [{"namespaces": [...], "endpoints": [...], "outputs": [...]}, ...]."""
        if not text.strip():
            return cls()
        try:
            items = json.loads(text)
            return cls(tuple(
                ReadRule(tuple(i["namespaces"]), tuple(i.get("endpoints", [""])), tuple(i["outputs"])) for i in items
            ))
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"ANYTASKTUNE_STORAGE_READ_POLICY is not a list of "
                             f'{{"namespaces": [...], "endpoints": [...], "outputs": [...]}}: {err}') from None


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
    trainjob_module: str = "anytasktune_trainjob"
    # Namespaces to watch; empty = all (cluster-wide RBAC needed).
    watch_namespaces: tuple[str, ...] = ()
    metrics_port: int = 8080
    # Reconcile passes run at once (each in a thread, mostly waiting on the API server).
    workers: int = 8
    storage_read_policy: StorageReadPolicy = field(default_factory=StorageReadPolicy)

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
            workers=int(e.get("ANYTASKTUNE_WORKERS", "8")),
            storage_read_policy=StorageReadPolicy.parse(e.get("ANYTASKTUNE_STORAGE_READ_POLICY", "")),
        )
