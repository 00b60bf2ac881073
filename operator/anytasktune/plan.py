"""The planner: (TaskFineTune, observed RayJobs, adapter manifests, now) -> Plan.

Pure and level-based: every pass recomputes the desired children and the status from
the spec and what exists, so nothing depends on having seen a particular event, and
an operator restart recomputes the same plan (deterministic names make creates
idempotent).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import ValidationError

from anytasktune.config import OperatorConfig
from anytasktune.render import (
    LABEL_ATTEMPT,
    LABEL_RUN_ID,
    LABEL_SUBTASK,
    child_name,
    render_configmap,
    render_rayjob,
)
from anytasktune.resolve import ResolveError, resolve_subtask
from anytasktune.spec import (
    Condition,
    EvalScores,
    Phase,
    SubtaskPhase,
    SubtaskStatus,
    TaskFineTune,
    TaskFineTuneStatus,
)
from anytasktune.validation import describe
from anytasktune_contract.failures import FailureClass, classify_text, explanation, marked_class
from anytasktune_contract.trainspec import TrainJobSpec

# --- what was observed -------------------------------------------------------


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
    start_time: str | None = None
    end_time: str | None = None
    created: str | None = None
    deleting: bool = False

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> ObservedJob:
        meta = obj.get("metadata", {})
        labels = meta.get("labels", {}) or {}
        status = obj.get("status", {}) or {}
        try:
            attempt = int(labels.get(LABEL_ATTEMPT, "0"))
        except ValueError:
            attempt = 0
        return cls(
            name=meta.get("name", ""),
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
        )

    @property
    def succeeded(self) -> bool:
        return self.job_status == "SUCCEEDED"

    @property
    def failed(self) -> bool:
        # A suspended job is STOPPED on purpose: it resumes when spec.suspend is lifted.
        if self.succeeded or self.deployment_status in ("Suspending", "Suspended"):
            return False
        return self.deployment_status in ("Failed", "ValidationFailed") or self.job_status in ("FAILED", "STOPPED")

    @property
    def active(self) -> bool:
        return not (self.succeeded or self.failed)

    @property
    def running(self) -> bool:
        return self.job_status == "RUNNING" or self.deployment_status == "Running"


def classify_failure(job: ObservedJob) -> FailureClass:
    """Why an attempt failed: the trainjob's marker line, else KubeRay's reason, else the text."""
    marked = marked_class(job.message)
    if marked is not None:
        return marked
    if job.deployment_status == "ValidationFailed" or job.reason == "ValidationFailed":
        return FailureClass.InvalidSpec
    if job.reason == "DeadlineExceeded":
        return FailureClass.DeadlineExceeded
    return classify_text(job.message)


# --- what to do --------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    subtask: str
    name: str
    configmap: dict[str, Any]
    rayjob: dict[str, Any]
    retry_of: str | None = None  # failure class of the attempt this one retries


@dataclass(frozen=True)
class DeleteJob:
    name: str
    reason: str


@dataclass(frozen=True)
class SetSuspend:
    name: str
    suspend: bool


Action = Launch | DeleteJob | SetSuspend


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    status: TaskFineTuneStatus = field(default_factory=TaskFineTuneStatus)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str | None) -> datetime | None:
    if not s:
        return None
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)


def retry_delay(failures: int, config: OperatorConfig) -> float:
    return min(config.retry_backoff_seconds * 2 ** max(failures - 1, 0), config.retry_backoff_max_seconds)


# --- the planner -------------------------------------------------------------


def plan(
    obj: Mapping[str, Any],
    observed: list[ObservedJob],
    manifests: Mapping[str, Mapping[str, Any]],
    now: datetime,
    config: OperatorConfig,
    manifest_errors: Mapping[str, str] | None = None,
) -> Plan:
    meta = obj.get("metadata", {})
    name, namespace = meta["name"], meta.get("namespace", "default")
    uid, generation = meta.get("uid", ""), int(meta.get("generation", 0) or 0)
    old = TaskFineTuneStatus.model_validate(obj.get("status") or {})
    out = Plan()

    try:
        tft = TaskFineTune.model_validate({"metadata": dict(meta), "spec": obj.get("spec", {})})
    except ValidationError as err:
        return _invalid(old, generation, describe(err), now)
    spec = tft.spec

    by_subtask: dict[str, list[ObservedJob]] = {}
    for job in observed:
        by_subtask.setdefault(job.subtask, []).append(job)

    # Children of sub-tasks removed from the spec: stop what still runs.
    wanted = {s.name for s in spec.subtasks}
    for sub, jobs in by_subtask.items():
        if sub not in wanted:
            out.actions += [DeleteJob(j.name, "SubtaskRemoved") for j in jobs if j.active and not j.deleting]

    occupied = sum(1 for j in observed if j.active)
    slots = max(spec.maxParallelSubtasks - occupied, 0)
    old_subtasks = {s.name: s for s in old.subtasks}
    statuses: list[SubtaskStatus] = []
    retry_waits: list[float] = []

    for subtask in spec.subtasks:
        jobs = sorted(by_subtask.get(subtask.name, []), key=lambda j: j.attempt)
        prev = old_subtasks.get(subtask.name)
        try:
            train = resolve_subtask(name, namespace, spec, subtask)
        except ResolveError as err:
            statuses.append(SubtaskStatus(name=subtask.name, phase=SubtaskPhase.Failed, failureClass=FailureClass.InvalidSpec.value, message=str(err)))
            continue
        run_id = train.run_id()
        current = [j for j in jobs if j.run_id == run_id and not j.deleting]
        for stale in (j for j in jobs if j.run_id != run_id and j.active and not j.deleting):
            out.actions.append(DeleteJob(stale.name, "Superseded"))
            out.events.append(Event("Normal", "Superseded", f"sub-task {subtask.name}: spec changed, stopping RayJob {stale.name}"))

        st = SubtaskStatus(name=subtask.name, runId=run_id, attempts=len(current))
        if prev is not None and prev.runId == run_id:
            st.metrics, st.adapter = prev.metrics, prev.adapter
        if current:
            st.rayJob = current[-1].name
            st.startTime = current[0].start_time or current[0].created
        failures = [j for j in current if j.failed]
        done = next((j for j in current if j.succeeded), None)
        latest = current[-1] if current else None
        needs_launch = False

        if done is not None:
            st.phase, st.completionTime = SubtaskPhase.Succeeded, done.end_time
            st.adapter = train.run_prefix()
            manifest = manifests.get(subtask.name)
            if manifest is not None:
                st.metrics = EvalScores.model_validate(manifest.get("evaluation", {}))
            st.message = _lift_message(st.metrics)
            if st.metrics is None and manifest_errors and subtask.name in manifest_errors:
                st.message = f"adapter published; evaluation not read yet (retrying): {manifest_errors[subtask.name]}"
        elif latest is not None and latest.active:
            st.phase = SubtaskPhase.Running if latest.running else SubtaskPhase.Pending
            st.message = "suspended" if latest.suspend else explanation(latest.message)
            if failures:  # a retry is running: keep saying why the last attempt failed
                st.failureClass = classify_failure(failures[-1]).value
        elif latest is not None:  # the latest attempt failed
            cls = classify_failure(latest)
            st.failureClass, st.message = cls.value, explanation(latest.message) or f"RayJob {latest.name} failed"
            if not cls.retryable:
                st.phase, st.completionTime = SubtaskPhase.Failed, latest.end_time
            elif len(failures) > spec.backoffLimit:
                st.phase, st.completionTime = SubtaskPhase.Failed, latest.end_time
                st.message = f"backoff limit {spec.backoffLimit} exceeded after {len(failures)} failed attempts; last: {st.message}"
            else:
                failed_at = parse_time(latest.end_time or latest.start_time or latest.created) or now  # stable across passes
                retry_at = failed_at + timedelta(seconds=retry_delay(len(failures), config))
                if now >= retry_at:
                    needs_launch = True
                else:
                    st.nextRetryTime = format_time(retry_at)
                    retry_waits.append((retry_at - now).total_seconds())
        else:
            needs_launch = True

        if needs_launch and not spec.suspend and slots > 0:
            n = max((j.attempt for j in jobs), default=0) + 1
            retry = st.attempts > 0
            out.actions.append(_launch(name, namespace, uid, tft, train, n, config, st.failureClass if retry else None))
            slots -= 1
            st.attempts += 1
            st.rayJob, st.phase, st.nextRetryTime = child_name(name, subtask.name, n), SubtaskPhase.Pending, None
            st.startTime = st.startTime or format_time(now)
            reason, what = ("Retrying", f"retrying after {st.failureClass}") if retry else ("Launched", "launched")
            message = f"sub-task {subtask.name}: {what}, RayJob {st.rayJob} (attempt {st.attempts})"
            out.events.append(Event("Warning" if retry else "Normal", reason, message))
        elif needs_launch:
            st.message = "suspended" if spec.suspend else f"waiting: {spec.maxParallelSubtasks} sub-tasks already running"
        statuses.append(st)

    # Suspension is level-based too: every job of ours matches spec.suspend.
    for job in observed:
        if job.active and not job.deleting and job.suspend != spec.suspend and job.subtask in wanted:
            out.actions.append(SetSuspend(job.name, spec.suspend))

    out.status = _summarize(old, statuses, spec.suspend, generation, now)
    out.events += _transition_events(old, out.status)
    if retry_waits:
        out.requeue_after = max(min(retry_waits), 1.0)
    return out


def _launch(
    name: str, namespace: str, uid: str, tft: TaskFineTune, train: TrainJobSpec, n: int, config: OperatorConfig, retry_of: str | None
) -> Launch:
    return Launch(
        retry_of=retry_of,
        subtask=train.subtask,
        name=child_name(name, train.subtask, n),
        configmap=render_configmap(name, namespace, uid, train, n),
        rayjob=render_rayjob(name, namespace, uid, tft.spec, train, n, config),
    )


def _lift_message(metrics: EvalScores | None) -> str:
    if metrics is None or not metrics.lift:
        return "adapter published"
    ordered = sorted(metrics.lift.items(), key=lambda kv: (kv[0] == "eval_loss", kv[0]))  # the task metric first
    parts = [f"{k} {metrics.base.get(k, 0):.3f} -> {metrics.adapter.get(k, 0):.3f} ({v:+.3f})" for k, v in ordered]
    return "; ".join(parts)


def _condition(old: TaskFineTuneStatus, type_: str, status: str, reason: str, message: str, generation: int, now: datetime) -> Condition:
    prev = next((c for c in old.conditions if c.type == type_), None)
    since = prev.lastTransitionTime if prev is not None and prev.status == status else format_time(now)
    return Condition(type=type_, status=status, reason=reason, message=message, lastTransitionTime=since, observedGeneration=generation)  # type: ignore[arg-type]


def _invalid(old: TaskFineTuneStatus, generation: int, message: str, now: datetime) -> Plan:
    status = old.model_copy(deep=True)
    status.observedGeneration, status.phase = generation, Phase.Invalid
    status.conditions = [
        _condition(old, "Progressing", "False", "InvalidSpec", message, generation, now),
        _condition(old, "Succeeded", "False", "InvalidSpec", message, generation, now),
        _condition(old, "Degraded", "True", "InvalidSpec", message, generation, now),
        _condition(old, "Suspended", "False", "NotSuspended", "", generation, now),
    ]
    events = [] if old.phase == Phase.Invalid else [Event("Warning", "InvalidSpec", message)]
    return Plan(status=status, events=events)


def _summarize(old: TaskFineTuneStatus, subtasks: list[SubtaskStatus], suspend: bool, generation: int, now: datetime) -> TaskFineTuneStatus:
    count = {p: sum(1 for s in subtasks if s.phase == p) for p in SubtaskPhase}
    total = len(subtasks)
    succeeded, failed = count[SubtaskPhase.Succeeded], count[SubtaskPhase.Failed]
    finished = succeeded + failed == total
    launched = any(s.attempts > 0 for s in subtasks)

    if finished:
        phase = Phase.Succeeded if failed == 0 else Phase.Failed
    elif suspend:
        phase = Phase.Suspended
    else:
        phase = Phase.Running if launched else Phase.Pending

    failed_names = ", ".join(s.name for s in subtasks if s.phase == SubtaskPhase.Failed)
    if finished:
        progressing = ("False", "Completed", f"{succeeded}/{total} sub-tasks succeeded")
        done = ("True", "AllSubtasksSucceeded", progressing[2]) if failed == 0 else ("False", "SubtasksFailed", f"failed: {failed_names}")
    else:
        summary = f"{succeeded}/{total} sub-tasks succeeded, {count[SubtaskPhase.Running]} running"
        progressing = ("False", "Suspended", "spec.suspend is true") if suspend else ("True", "Training", summary)
        done = ("Unknown", "InProgress", progressing[2])
    degraded = ("True", "SubtaskFailed", f"failed: {failed_names}") if failed else ("False", "AsExpected", "")
    suspended = ("True", "Suspended", "spec.suspend is true") if suspend and not finished else ("False", "NotSuspended", "")

    start = old.startTime or (format_time(now) if launched else None)
    return TaskFineTuneStatus(
        observedGeneration=generation,
        phase=phase,
        progress=f"{succeeded}/{total}",
        succeeded=succeeded,
        failed=failed,
        running=count[SubtaskPhase.Running],
        total=total,
        startTime=start,
        completionTime=(old.completionTime or format_time(now)) if finished else None,
        conditions=[
            _condition(old, t, *v, generation, now)
            for t, v in (("Progressing", progressing), ("Succeeded", done), ("Degraded", degraded), ("Suspended", suspended))
        ],
        subtasks=subtasks,
    )


def _transition_events(old: TaskFineTuneStatus, new: TaskFineTuneStatus) -> list[Event]:
    events: list[Event] = []
    before = {s.name: s for s in old.subtasks}
    for s in new.subtasks:
        prev = before.get(s.name)
        if prev is not None and prev.phase == s.phase and prev.runId == s.runId:
            continue
        if s.phase == SubtaskPhase.Succeeded:
            events.append(Event("Normal", "SubtaskSucceeded", f"sub-task {s.name}: {s.message}"))
        elif s.phase == SubtaskPhase.Failed:
            events.append(Event("Warning", "SubtaskFailed", f"sub-task {s.name}: {s.failureClass}: {s.message}"))
    if new.phase != old.phase:
        if new.phase == Phase.Succeeded:
            events.append(Event("Normal", "Completed", f"all {new.total} sub-tasks succeeded"))
        elif new.phase == Phase.Failed:
            events.append(Event("Warning", "CompletedWithFailures", f"{new.succeeded}/{new.total} sub-tasks succeeded, {new.failed} failed"))
        elif new.phase == Phase.Suspended:
            events.append(Event("Normal", "Suspended", "spec.suspend is true: running RayJobs suspended, nothing new launched"))
        elif old.phase == Phase.Suspended:
            events.append(Event("Normal", "Resumed", "spec.suspend is false: resuming"))
    return events


def subtasks_needing_manifest(status: TaskFineTuneStatus) -> dict[str, str]:
    """Succeeded sub-tasks whose evaluation has not been read yet: name -> adapter prefix."""
    return {s.name: s.adapter for s in status.subtasks if s.phase == SubtaskPhase.Succeeded and s.metrics is None and s.adapter}
