"""The TaskFineTune's status: written only by the operator (`summary.py`), read by
`kubectl`, `anytasktune status` and GitOps health checks. Re-exported by `spec.py`,
which the CRD generator reads."""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, Field


class Loose(BaseModel):
    model_config = {"extra": "ignore"}


class Condition(Loose):
    """metav1.Condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    lastTransitionTime: str
    observedGeneration: int = 0


class SubtaskPhase(str, Enum):
    Pending = "Pending"
    Running = "Running"
    Succeeded = "Succeeded"
    Failed = "Failed"


class Phase(str, Enum):
    Pending = "Pending"  # nothing launched yet
    Running = "Running"  # at least one sub-task still has work to do
    Suspended = "Suspended"
    Succeeded = "Succeeded"  # every sub-task succeeded
    Failed = "Failed"  # all done, at least one sub-task failed (the others' adapters are kept)
    Invalid = "Invalid"  # the spec cannot be resolved; fix it


class EvalScores(Loose):
    """Held-out scores of the base model and the adapter (same records, same metric)."""

    base: dict[str, float] = Field(default_factory=dict)
    adapter: dict[str, float] = Field(default_factory=dict)
    lift: dict[str, float] = Field(default_factory=dict)
    intervals: dict[str, dict[str, list[float]]] = Field(
        default_factory=dict,
        description="95% paired bootstrap intervals, {metric: {base|adapter|lift: [low, high]}}.",
    )
    verdict: str = Field("", description="adapter wins (the lift's lower bound is above threshold) | inconclusive | adapter worse")
    threshold: float | None = Field(None, description="What the task metric's lift lower bound must be above to win.")
    general: dict[str, float] = Field(default_factory=dict, description="The general model's scores (evaluation.compareWith).")
    generalModel: str = Field("", description="The general model compared with.")
    comparison: str = Field("", description="Succeeded, or Failed: <why> (the training stands either way).")
    versusGeneral: str = Field("", description="The adapter against the general model: adapter wins | inconclusive | adapter worse.")


class SubtaskStatus(Loose):
    name: str
    phase: SubtaskPhase = SubtaskPhase.Pending
    reason: str = Field("", description="CamelCase: Launched, Starting, Queued, Training, Stalled, RetryBackoff, Succeeded, …")
    specId: str = Field("", description="Hash of the resolved spec (the RayJobs' anytasktune.io/run-id label).")
    runId: str = Field("", description="The run identity: spec, dataset content, base model, trainjob version (settled by the trainjob).")
    outcome: str = Field("", description="What the last attempt did: Trained | Reused | Pinned.")
    outcomeReason: str = Field("", description="Why it trained or reused, e.g. dataset content changed.")
    promoted: bool | None = Field(None, description="Whether this run is the sub-task's active adapter in the registry.")
    activeRunId: str = Field("", description="The sub-task's active run in the registry (<output>/<name>/index.json).")
    promotion: str = Field("", description="The promotion decision in words, with the lift's interval and minLift.")
    attempts: int = 0
    rayJob: str = ""
    startTime: str | None = None
    completionTime: str | None = None
    nextRetryTime: str | None = None
    failureClass: str | None = None
    message: str = ""
    adapter: str | None = None
    metrics: EvalScores | None = None


class TaskFineTuneStatus(Loose):
    observedGeneration: int = 0
    phase: Phase = Phase.Pending
    progress: str = Field("", description="succeeded/total sub-tasks")
    succeeded: int = 0
    failed: int = 0
    running: int = 0
    total: int = 0
    startTime: str | None = None
    completionTime: str | None = None
    conditions: list[Condition] = Field(default_factory=list)
    subtasks: list[SubtaskStatus] = Field(default_factory=list)
