"""From sub-task statuses to the TaskFineTune's status: phase, progress, standard
conditions (with observedGeneration, stable lastTransitionTime) and the Events that
announce transitions. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from anytasktune.attempt import format_time, parse_time
from anytasktune.spec import Condition, EvalScores, Phase, SubtaskPhase, SubtaskStatus, TaskFineTuneStatus


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


EVENT_MESSAGE_LIMIT = 1024  # what kubectl and the events.k8s.io API keep of a note


def coalesce(events: list[Event], limit: int = EVENT_MESSAGE_LIMIT) -> list[Event]:
    """One pass's Events with the same type and reason as one Event, their messages joined
    by "; " (each already names its sub-task), split where the joined message would pass
    `limit`: a pool that launches 10 sub-tasks posts one Launched, not ten. In order of
    each group's first Event."""
    groups: dict[tuple[str, str], list[str]] = {}
    for event in events:
        groups.setdefault((event.type, event.reason), []).append(event.message)
    out: list[Event] = []
    for (type_, reason), messages in groups.items():
        joined = ""
        for message in messages:
            if joined and len(joined) + 2 + len(message) > limit:
                out.append(Event(type_, reason, joined))
                joined = ""
            joined = f"{joined}; {message}" if joined else message
        out.append(Event(type_, reason, joined))
    return out


def eval_scores(evaluation: Mapping[str, Any]) -> EvalScores:
    """The status's view of a manifest's `evaluation` (scores, intervals, verdict)."""
    general = evaluation.get("generalModel") or {}
    scores = EvalScores.model_validate({k: v for k, v in evaluation.items() if k != "generalModel"})
    if general:
        scores.generalModel = str(general.get("model", ""))
        status = str(general.get("status", ""))
        scores.comparison = f"{status}: {general.get('message', '')}" if status == "Failed" else status
    rule = evaluation.get("verdictRule") or {}
    if scores.threshold is None and isinstance(rule.get("threshold"), (int, float)):
        scores.threshold = float(rule["threshold"])
    return scores


def _interval(lo_hi: list[float] | None) -> str:
    return f", 95% CI {lo_hi[0]:+.3f}..{lo_hi[1]:+.3f}" if lo_hi and len(lo_hi) == 2 else ""


def lift_message(metrics: EvalScores | None) -> str:
    if metrics is None or not metrics.lift:
        return "adapter published"
    ordered = sorted(metrics.lift.items(), key=lambda kv: (kv[0] == "eval_loss", kv[0]))  # the task metric first
    parts = [f"{k} {metrics.base.get(k, 0):.3f} -> {metrics.adapter.get(k, 0):.3f} ({v:+.3f}"
             f"{_interval(metrics.intervals.get(k, {}).get('lift'))})" for k, v in ordered]
    verdict = f": {metrics.verdict}" if metrics.verdict else ""
    return "; ".join(parts[:1]) + verdict + _versus_general(metrics, ordered[0][0]) + "".join(f"; {p}" for p in parts[1:])


def _versus_general(metrics: EvalScores, metric: str) -> str:
    if metrics.comparison.startswith("Failed"):
        return f"; general model {metrics.generalModel} not compared ({metrics.comparison})"
    if metric not in metrics.general:
        return ""
    ci = _interval(metrics.intervals.get(metric, {}).get("liftOverGeneral"))
    return (f"; general model {metrics.generalModel} {metrics.general[metric]:.3f} (adapter "
            f"{metrics.adapter.get(metric, 0) - metrics.general[metric]:+.3f}{ci}): {metrics.versusGeneral}")


def outcome_message(st: SubtaskStatus) -> str:
    """E.g. "reused run 3fa2c1d9e0 (already published: …): f1 0.210 -> 0.780 (+0.570): adapter wins"."""
    scores = lift_message(st.metrics)
    if not st.outcome:
        return scores
    why = f" ({st.outcomeReason})" if st.outcomeReason else ""
    promotion = f"; {st.promotion}" if st.promotion else ""
    return f"{st.outcome.lower()} run {st.runId}{why}: {scores}{promotion}"


def _condition(old: TaskFineTuneStatus, type_: str, status: str, reason: str, message: str, generation: int, now: datetime) -> Condition:
    prev = next((c for c in old.conditions if c.type == type_), None)
    since = prev.lastTransitionTime if prev is not None and prev.status == status else format_time(now)
    return Condition(type=type_, status=status, reason=reason, message=message, lastTransitionTime=since, observedGeneration=generation)  # type: ignore[arg-type]


def invalid_status(old: TaskFineTuneStatus, generation: int, message: str, now: datetime) -> tuple[TaskFineTuneStatus, list[Event]]:
    status = old.model_copy(deep=True)
    status.observedGeneration, status.phase = generation, Phase.Invalid
    status.conditions = [
        _condition(old, "Progressing", "False", "InvalidSpec", message, generation, now),
        _condition(old, "Succeeded", "False", "InvalidSpec", message, generation, now),
        _condition(old, "Degraded", "True", "InvalidSpec", message, generation, now),
        _condition(old, "Suspended", "False", "NotSuspended", "", generation, now),
    ]
    events = [] if old.phase == Phase.Invalid else [Event("Warning", "InvalidSpec", message)]
    return status, events


def _completion_time(old: TaskFineTuneStatus, subtasks: list[SubtaskStatus], now: datetime) -> str:
    """Never before a sub-task's own completion (KubeRay's clock may run ahead of ours)."""
    if old.completionTime:
        return old.completionTime
    ends = [t for s in subtasks if (t := parse_time(s.completionTime)) is not None]
    return format_time(max([now, *ends]))


def summarize(old: TaskFineTuneStatus, subtasks: list[SubtaskStatus], suspend: bool, generation: int, now: datetime) -> TaskFineTuneStatus:
    count = {p: sum(1 for s in subtasks if s.phase == p) for p in SubtaskPhase}
    total = len(subtasks)
    succeeded, failed = count[SubtaskPhase.Succeeded], count[SubtaskPhase.Failed]
    finished = succeeded + failed == total
    # Started: some sub-task has run or finished, or has an attempt not held in a Kueue queue.
    launched = any(s.phase != SubtaskPhase.Pending or (s.attempts > 0 and s.reason != "Queued") for s in subtasks)

    if finished:
        phase = Phase.Succeeded if failed == 0 else Phase.Failed
    elif suspend:
        phase = Phase.Suspended
    else:
        phase = Phase.Running if launched else Phase.Pending

    failed_names = ", ".join(s.name for s in subtasks if s.phase == SubtaskPhase.Failed)
    stalled = [s for s in subtasks if s.reason == "Stalled"]
    if finished:
        progressing = ("False", "Completed", f"{succeeded}/{total} sub-tasks succeeded")
        done = ("True", "AllSubtasksSucceeded", progressing[2]) if failed == 0 else ("False", "SubtasksFailed", f"failed: {failed_names}")
    else:
        summary = f"{succeeded}/{total} sub-tasks succeeded, {count[SubtaskPhase.Running]} running"
        progressing = ("False", "Suspended", "spec.suspend is true") if suspend else ("True", "Training", summary)
        done = ("Unknown", "InProgress", progressing[2])
    if failed:
        degraded = ("True", "SubtaskFailed", f"failed: {failed_names}")
    elif stalled:
        degraded = ("True", "SubtaskStalled", "; ".join(f"{s.name}: {s.message}" for s in stalled)[:1000])
    else:
        degraded = ("False", "AsExpected", "")
    suspended = ("True", "Suspended", "spec.suspend is true") if suspend and not finished else ("False", "NotSuspended", "")

    return TaskFineTuneStatus(
        observedGeneration=generation,
        phase=phase,
        progress=f"{succeeded}/{total}",
        succeeded=succeeded,
        failed=failed,
        running=count[SubtaskPhase.Running],
        total=total,
        startTime=old.startTime or (format_time(now) if launched else None),
        completionTime=_completion_time(old, subtasks, now) if finished else None,
        conditions=[
            _condition(old, t, *v, generation, now)
            for t, v in (("Progressing", progressing), ("Succeeded", done), ("Degraded", degraded), ("Suspended", suspended))
        ],
        subtasks=subtasks,
    )


def transition_events(old: TaskFineTuneStatus, new: TaskFineTuneStatus) -> list[Event]:
    events: list[Event] = []
    before = {s.name: s for s in old.subtasks}
    for s in new.subtasks:
        prev = before.get(s.name)
        same_run = prev is not None and prev.specId == s.specId
        for reason, event in (("Stalled", "Stalled"), ("EvaluationUnreadable", "StorageUnavailable"),
                              ("EvaluationNotAllowed", "StorageReadPolicy")):
            if s.reason == reason and not (same_run and prev is not None and prev.reason == reason):
                events.append(Event("Warning", event, f"sub-task {s.name}: {s.message}"))
        if s.metrics is not None and s.metrics.lift and not (same_run and prev is not None and prev.metrics is not None):
            events.append(Event("Normal", "Evaluated", f"sub-task {s.name}: {outcome_message(s)}"))
            if s.outcome == "Reused":
                events.append(Event("Normal", "Reused", f"sub-task {s.name}: nothing trained: {s.outcomeReason}"))
            if s.promoted is not None and s.promotion:
                events.append(Event("Normal", "Promoted", f"sub-task {s.name}: {s.promotion}") if s.promoted
                              else Event("Warning", "NotPromoted", f"sub-task {s.name}: {s.promotion}"))
        if same_run and prev is not None and prev.phase == s.phase:
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
