"""What a reconcile pass decides: the planner's inputs from S3 and the cluster that are
not RayJobs, and its outputs, the actions an executor carries out (plan.py decides,
executor.py applies)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from anytasktune.spec import TaskFineTuneStatus
from anytasktune.summary import Event

# --- what the executor tells the planner about S3 -----------------------------


@dataclass(frozen=True)
class ManifestRead:
    """The latest read of one run's manifest.json (kept by the executor between passes)."""

    manifest: Mapping[str, Any] | None = None
    error: str = ""
    failures: int = 0  # consecutive failed reads
    next_try: datetime | None = None  # no new read before this (backoff)
    in_flight: bool = False


# --- what to do --------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    subtask: str
    name: str
    rayjob: dict[str, Any]  # its TrainJobSpec rides in its runtime env: render.spec_json_of
    retry_of: str | None = None  # failure class of the attempt this one retries


@dataclass(frozen=True)
class DeleteJob:
    name: str
    reason: str  # Superseded | SubtaskRemoved | Suspended


@dataclass(frozen=True)
class SetSuspend:
    name: str
    suspend: bool


@dataclass(frozen=True)
class ReleaseCluster:
    """Delete the Ray cluster of a finished attempt (the RayJob, its record, stays)."""

    job: str
    reason: str  # BeforeRetry | CapacityNeeded


@dataclass(frozen=True)
class ReadManifest:
    subtask: str
    uri: str


@dataclass(frozen=True)
class CreateCluster:
    """Create the shared RayCluster of a Shared-mode TaskFineTune."""

    name: str
    raycluster: dict[str, Any]


@dataclass(frozen=True)
class DeleteCluster:
    """Delete the shared RayCluster: the pool needs it no more."""

    name: str
    reason: str  # PoolFinished | Suspended | NotShared


Action = Launch | DeleteJob | SetSuspend | ReleaseCluster | ReadManifest | CreateCluster | DeleteCluster


@dataclass(frozen=True)
class ObservedCluster:
    """The shared RayCluster (`<taskfinetune>-ray`) as observed, if it exists."""

    name: str
    deleting: bool = False


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    status: TaskFineTuneStatus = field(default_factory=TaskFineTuneStatus)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None

    def requeue(self, seconds: float) -> None:
        self.requeue_after = seconds if self.requeue_after is None else min(self.requeue_after, seconds)
