"""How a plan is carried out: one small interface and one `reconcile` both the
operator (Kubernetes, `kube.py`) and local mode (`localrun.py`) use, so the two behave
the same by construction: same planner, same order of effects, same status rule,
same manifest reads with the same backoff.

A pass is: observe -> plan (pure, once) -> apply. Reading a run's manifest.json is an
action like any other: the executor starts it and records the outcome in
`ManifestReads`, which the next pass reads as planner input.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol

from anytasktune.actions import CreateCluster, DeleteCluster, DeleteJob, Launch, ManifestRead, ObservedCluster, Plan, ReadManifest, ReleaseCluster, SetSuspend
from anytasktune.attempt import ObservedJob
from anytasktune.config import OperatorConfig
from anytasktune.plan import plan
from anytasktune.records import record_fields
from anytasktune.spec import TaskFineTuneStatus
from anytasktune.summary import Event
from anytasktune_contract.backoff import Backoff
from anytasktune_contract.failures import same_error


class Executor(Protocol):
    """The effects a plan can ask for. Each call is idempotent: a create that finds
    its object (409) or a delete that finds nothing (404) has succeeded."""

    def create(self, launch: Launch) -> None: ...
    def create_all(self, launches: list[Launch]) -> None: ...  # several at once where the backend can
    def delete_job(self, name: str) -> None: ...
    def release_cluster(self, job: str) -> None: ...
    def create_cluster(self, raycluster: dict[str, Any]) -> None: ...  # the shared RayCluster
    def delete_cluster(self, name: str) -> None: ...
    def set_suspend(self, name: str, suspend: bool) -> None: ...
    def read_manifest(self, uri: str) -> None: ...  # starts a read; the outcome goes to ManifestReads
    def post_events(self, events: list[Event]) -> None: ...  # one pass's, in order
    def write_status(self, status: dict[str, Any]) -> None: ...


def status_body(status: TaskFineTuneStatus) -> dict[str, Any]:
    """A merge-patch body: absent optional fields are sent as null so they are removed."""
    body = status.model_dump(mode="json", exclude_none=True)
    for key in TaskFineTuneStatus.model_fields:
        body.setdefault(key, None)
    return body


def apply(result: Plan, old_status: Mapping[str, Any] | None, executor: Executor) -> bool:
    """Carry out a plan; True when the status changed (and was written)."""
    for action in result.actions:  # the shared cluster first: its RayJobs wait for it
        if isinstance(action, CreateCluster):
            executor.create_cluster(action.raycluster)
    launches = [a for a in result.actions if isinstance(a, Launch)]
    if launches:
        executor.create_all(launches)
    for action in result.actions:
        match action:
            case DeleteJob():
                executor.delete_job(action.name)
            case ReleaseCluster():
                executor.release_cluster(action.job)
            case SetSuspend():
                executor.set_suspend(action.name, action.suspend)
            case ReadManifest():
                executor.read_manifest(action.uri)
            case DeleteCluster():
                executor.delete_cluster(action.name)
    new_status = status_body(result.status)
    changed = new_status != status_body(TaskFineTuneStatus.model_validate(old_status or {}))
    if changed:  # write only on change: no churn, no self-triggered passes
        executor.write_status(new_status)
    if result.events:
        executor.post_events(result.events)
    return changed


def reconcile(obj: Mapping[str, Any], jobs: list[ObservedJob], reads: ManifestReads, now: datetime,
              config: OperatorConfig, executor: Executor, cluster: ObservedCluster | None = None) -> Plan:
    """One pass: plan once from what was observed, then apply."""
    result = plan(obj, jobs, reads.snapshot(), now, config, cluster)
    apply(result, obj.get("status"), executor)
    return result


class ManifestReads:
    """The latest read of each run's manifest.json, for one TaskFineTune.

    Only what the planner reads is kept (`records.record_fields`), so memory stays
    small with many pools. Thread-safe: reads finish on other threads."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self._reads: dict[str, ManifestRead] = {}
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, ManifestRead]:
        with self._lock:
            return dict(self._reads)

    def begin(self, uri: str) -> bool:
        """Mark a read as under way; False when one already is."""
        with self._lock:
            read = self._reads.get(uri, ManifestRead())
            if read.in_flight:
                return False
            self._reads[uri] = replace(read, in_flight=True)
            return True

    def succeeded(self, uri: str, body: bytes) -> None:
        manifest = json.loads(body)
        with self._lock:
            self._reads[uri] = ManifestRead(manifest=record_fields(manifest))

    def failed(self, uri: str, error: str, now: datetime) -> tuple[ManifestRead, bool]:
        """Record a failed read; and whether the status must show it (a first failure, or
        another error than the last): a repeated failure changes nothing a pass shows."""
        with self._lock:
            previous = self._reads.get(uri, ManifestRead())
            failures = previous.failures + 1
            error = error[:300]
            repeated = bool(previous.error) and same_error(previous.error, error)
            if repeated:
                error = previous.error  # the status shows it: only a new error may change it
            read = ManifestRead(error=error, failures=failures, next_try=now + timedelta(seconds=self.backoff.delay(failures)))
            self._reads[uri] = read
            return read, not repeated
