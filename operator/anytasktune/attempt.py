"""One attempt of a sub-task (one RayJob): what KubeRay says about it, read as an
explicit state, and why it failed.

KubeRay's own lifecycle (v1.4, `JobDeploymentStatus`) is
New -> Initializing -> Running -> Complete | Failed, with Suspending -> Suspended
(-> New on resume) beside it; `jobStatus` is the Ray job's state inside the cluster.
Two facts recorded on a real cluster shape this mapping (tests/fixtures/kuberay):

- `jobStatus` turns SUCCEEDED/FAILED several seconds before `jobDeploymentStatus`
  turns Complete/Failed and `endTime` is set. Only the latter is terminal: the
  cluster still runs in between, and `endTime` is when the attempt ended.
- Suspending resets `jobStatus` to "" (never STOPPED) and deletes the cluster; a
  resume starts a new cluster with a new Ray job id and a new `startTime`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from anytasktune.render import LABEL_ATTEMPT, LABEL_RUN_ID, LABEL_SUBTASK
from anytasktune_contract.failures import FailureClass, classify_text, marked_class

# What KubeRay puts in status.reason (rayv1.JobFailedReason) that tells us the class.
_REASON_CLASS = {
    "ValidationFailed": FailureClass.InvalidSpec,
    "DeadlineExceeded": FailureClass.DeadlineExceeded,
}


class AttemptState(str, Enum):
    Paused = "Paused"  # spec.suspend: suspended by us, or queued by Kueue until admitted
    Starting = "Starting"  # New / Initializing / Waiting, or submitted but the Ray job not yet RUNNING
    Running = "Running"  # the Ray job runs
    Finishing = "Finishing"  # the Ray job ended; KubeRay has not declared the attempt over yet
    Succeeded = "Succeeded"
    Failed = "Failed"
    Deleting = "Deleting"  # deletionTimestamp set: going away (superseded, removed, suspended under Kueue)

    @property
    def is_terminal(self) -> bool:
        return self in (AttemptState.Succeeded, AttemptState.Failed)


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ObservedJob:
    """The parts of a RayJob the planner reads."""

    name: str
    subtask: str
    run_id: str
    attempt: int
    suspend: bool = False
    deployment_status: str = ""
    job_status: str = ""
    reason: str = ""
    message: str = ""
    start_time: str | None = None  # when KubeRay (re)started the attempt (reset by a resume)
    end_time: str | None = None  # set when KubeRay declares the attempt over
    created: str | None = None
    deleting: bool = False
    cluster_alive: bool = False  # its RayCluster still exists (holds nodes until deleted)
    shared: bool = False  # runs on the TaskFineTune's shared RayCluster (spec.clusterSelector)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], live_clusters: frozenset[str] = frozenset()) -> ObservedJob:
        meta = obj.get("metadata", {})
        labels = meta.get("labels", {}) or {}
        status = obj.get("status", {}) or {}
        try:
            attempt = int(labels.get(LABEL_ATTEMPT, "0"))
        except ValueError:
            attempt = 0
        name = meta.get("name", "")
        return cls(
            name=name,
            subtask=labels.get(LABEL_SUBTASK, ""),
            run_id=labels.get(LABEL_RUN_ID, ""),
            attempt=attempt,
            suspend=bool((obj.get("spec") or {}).get("suspend", False)),
            deployment_status=status.get("jobDeploymentStatus", "") or "",
            job_status=status.get("jobStatus", "") or "",
            reason=status.get("reason", "") or "",
            message=status.get("message", "") or "",
            start_time=status.get("startTime"),
            end_time=status.get("endTime"),
            created=meta.get("creationTimestamp"),
            deleting=bool(meta.get("deletionTimestamp")),
            cluster_alive=name in live_clusters,
            shared=bool((obj.get("spec") or {}).get("clusterSelector")),
        )

    @property
    def state(self) -> AttemptState:
        return attempt_state(self)

    @property
    def holds_cluster(self) -> bool:
        """Counts against maxParallelSubtasks: unfinished, or finished with its cluster still up."""
        return not self.state.is_terminal or self.cluster_alive

    def started_at(self) -> datetime | None:
        return parse_time(self.start_time or self.created)


def attempt_state(job: ObservedJob) -> AttemptState:
    """The one mapping from KubeRay's status to an attempt state."""
    if job.deleting:
        return AttemptState.Deleting
    match job.deployment_status:
        case "Complete":
            return AttemptState.Succeeded if job.job_status == "SUCCEEDED" else AttemptState.Failed
        case "Failed" | "ValidationFailed":
            return AttemptState.Failed
        case "Suspending" | "Suspended":
            return AttemptState.Paused
    if job.suspend and job.deployment_status in ("", "New"):
        return AttemptState.Paused  # created suspended (Kueue), not yet admitted
    match job.job_status:
        case "RUNNING":
            return AttemptState.Running
        case "SUCCEEDED" | "FAILED" | "STOPPED":
            return AttemptState.Finishing
    return AttemptState.Starting


def failure_class(job: ObservedJob) -> FailureClass:
    """Why an attempt failed: the trainjob's marker line, else KubeRay's reason, else the text."""
    marked = marked_class(job.message)
    if marked is not None:
        return marked
    if job.deployment_status == "ValidationFailed":
        return FailureClass.InvalidSpec
    if job.reason in _REASON_CLASS:
        return _REASON_CLASS[job.reason]
    return classify_text(job.message)
