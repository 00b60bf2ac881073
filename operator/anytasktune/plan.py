"""The planner: (TaskFineTune, observed RayJobs, manifest reads, now) -> Plan.

Pure and level-based: every pass recomputes the desired children and the status from
the spec and what exists, so nothing depends on having seen a particular event, and
an operator restart recomputes the same plan (deterministic names make creates
idempotent). One plan per pass: what the plan needs from S3 (a run's manifest) is an
input, read by the executor between passes (`ReadManifest`), never during planning.

Each sub-task is decided alone (`decide`), from the state of its attempts
(`attempt.AttemptState`); then the pool's capacity is shared out in spec order
(`allocate`): a launch needs a free slot, and a finished attempt whose Ray cluster
is still up holds its slot until the cluster is released.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from anytasktune.actions import (
    Action,
    DeleteJob,
    Launch,
    ManifestRead,
    ObservedCluster,
    Plan,
    ReadManifest,
    ReleaseCluster,
    SetSuspend,
)
from anytasktune.attempt import AttemptState, ObservedJob, failure_class, format_time, parse_time
from anytasktune.config import OperatorConfig
from anytasktune.records import apply_record
from anytasktune.render import child_name, render_rayjob
from anytasktune.resolve import Resolutions, Resolved, resolve_subtask
from anytasktune.sharedcluster import shared_cluster, shared_compare_secret
from anytasktune.spec import ClusterMode, SubtaskPhase, SubtaskStatus, TaskFineTuneSpec, TaskFineTuneStatus
from anytasktune.summary import Event, invalid_status, outcome_message, summarize, transition_events
from anytasktune_contract.failures import FailureClass, explanation, same_error
from anytasktune_contract.trainspec import TrainJobSpec

MANIFEST_NAME = "manifest.json"
RESOLUTIONS = Resolutions()  # the operator's passes, one process: specs rarely change between them

# --- one pass ------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """What every sub-task's decision needs to know about the whole resource."""

    name: str
    namespace: str
    uid: str
    spec: TaskFineTuneSpec  # validated; shared with other passes (`resolve.Resolutions`): read only
    config: OperatorConfig
    now: datetime
    cluster: ObservedCluster | None = None  # the shared RayCluster
    resolved: Mapping[str, Resolved] = field(default_factory=dict)  # by sub-task name

    def train(self, subtask: str) -> TrainJobSpec:
        """The sub-task's TrainJobSpec, built when a pass needs all of it (to launch, or to
        take in a run's record); `resolved` says it resolves."""
        return resolve_subtask(self.name, self.namespace, self.spec, next(s for s in self.spec.subtasks if s.name == subtask))

    @property
    def shared(self) -> bool:
        """cluster.mode Shared: every sub-task runs on the pool's one RayCluster."""
        return self.spec.cluster.mode == ClusterMode.Shared

    @property
    def kueue(self) -> bool:
        """Kueue admits our RayJobs: it owns their spec.suspend (see `suspension`)."""
        return bool(self.spec.queueName)


@dataclass
class Decision:
    """One sub-task's status this pass and what it asks of the pool."""

    status: SubtaskStatus
    resolved: Resolved | None = None  # None: the sub-task does not resolve
    wants_launch: bool = False
    retry_of: str | None = None
    predecessor: ObservedJob | None = None  # the failed attempt whose cluster must go before a retry
    next_attempt: int = 1  # never reuse a name: 1 + the highest attempt number of this sub-task
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def plan(
    obj: Mapping[str, Any],
    observed: list[ObservedJob],
    manifests: Mapping[str, ManifestRead],
    now: datetime,
    config: OperatorConfig,
    cluster: ObservedCluster | None = None,
) -> Plan:
    meta = obj.get("metadata", {})
    generation = int(meta.get("generation", 0) or 0)
    old = TaskFineTuneStatus.model_validate(obj.get("status") or {})
    name, namespace = meta["name"], meta.get("namespace", "default")
    resolved = RESOLUTIONS.get(name, namespace, obj.get("spec", {}))
    if resolved.spec is None:
        status, events = invalid_status(old, generation, resolved.invalid, now)
        return Plan(status=status, events=events)
    pool = Pool(name, namespace, meta.get("uid", ""), resolved.spec, config, now, cluster, resolved.subtasks)
    out = Plan()

    by_subtask: dict[str, list[ObservedJob]] = {}
    for job in observed:
        by_subtask.setdefault(job.subtask, []).append(job)
    wanted = {s.name for s in pool.spec.subtasks}
    for sub, jobs in by_subtask.items():  # sub-tasks removed from the spec: stop what still runs
        if sub not in wanted:
            out.actions += [DeleteJob(j.name, "SubtaskRemoved") for j in jobs if not j.state.is_terminal and not j.deleting]

    previous = {s.name: s for s in old.subtasks}
    decisions = [
        decide(pool, subtask.name, sorted(by_subtask.get(subtask.name, []), key=lambda j: j.attempt), previous.get(subtask.name), manifests)
        for subtask in pool.spec.subtasks
    ]
    secret = shared_compare_secret(pool, decisions)
    allocate(pool, decisions, observed, out)
    out.actions += suspension(pool, [j for j in observed if j.subtask in wanted])
    shared_cluster(pool, decisions, observed, secret, out)
    for d in decisions:
        out.actions += d.actions
        out.events += d.events
        if d.requeue_after is not None:
            out.requeue(d.requeue_after)
    out.status = summarize(old, [d.status for d in decisions], pool.spec.suspend, generation, now)
    out.events += transition_events(old, out.status)
    return out


def decide(pool: Pool, subtask: str, jobs: list[ObservedJob], prev: SubtaskStatus | None, manifests: Mapping[str, ManifestRead]) -> Decision:
    resolved = pool.resolved[subtask]
    if resolved.error:
        return Decision(SubtaskStatus(name=subtask, phase=SubtaskPhase.Failed, reason="InvalidSpec",
                                      failureClass=FailureClass.InvalidSpec.value, message=resolved.error))
    spec_id = resolved.spec_id  # RayJobs carry it as the run-id label; the run id is settled by the trainjob
    d = Decision(SubtaskStatus(name=subtask, specId=spec_id), resolved, next_attempt=max((j.attempt for j in jobs), default=0) + 1)
    for stale in (j for j in jobs if j.run_id != spec_id and not j.state.is_terminal and not j.deleting):
        d.actions.append(DeleteJob(stale.name, "Superseded"))
        d.events.append(Event("Normal", "Superseded", f"sub-task {subtask}: spec changed, stopping RayJob {stale.name}"))

    current = [j for j in jobs if j.run_id == spec_id]
    st = d.status
    same_run = prev is not None and prev.specId == spec_id
    if same_run:
        assert prev is not None
        st.metrics, st.adapter, st.startTime = prev.metrics, prev.adapter, prev.startTime
        st.runId, st.outcome, st.outcomeReason = prev.runId, prev.outcome, prev.outcomeReason
        st.promoted, st.activeRunId, st.promotion = prev.promoted, prev.activeRunId, prev.promotion
    st.attempts = len(current)
    if current:
        st.rayJob = current[-1].name
        st.startTime = st.startTime or current[0].start_time or current[0].created
    failures = [j for j in current if j.state == AttemptState.Failed]
    done = next((j for j in current if j.state == AttemptState.Succeeded), None)
    latest = next((j for j in reversed(current) if not j.deleting), None)

    if done is not None:
        _succeeded(pool, d, done, resolved, manifests, prev if same_run else None)
    elif latest is not None and not latest.state.is_terminal:
        _in_progress(pool, d, latest, failures)
    elif latest is not None:
        _failed(pool, d, latest, failures, prev if same_run else None)
    elif current:  # only attempts that are going away: wait for them
        st.reason, st.message = "Stopping", f"waiting for RayJob {current[-1].name} to be deleted"
    else:
        d.wants_launch = True
    return d


def _succeeded(pool: Pool, d: Decision, done: ObservedJob, resolved: Resolved, manifests: Mapping[str, ManifestRead],
               prev: SubtaskStatus | None) -> None:
    st = d.status
    st.phase, st.reason, st.completionTime = SubtaskPhase.Succeeded, "Succeeded", done.end_time
    st.failureClass = None
    if st.metrics is None:
        uri = resolved.spec_prefix + MANIFEST_NAME
        if not pool.config.storage_read_policy.allows(pool.namespace, pool.spec.storage.endpoint, uri):
            st.reason = "EvaluationNotAllowed"
            st.message = (f"adapter published under {resolved.output_prefix}/runs/; its record and evaluation not read: "
                          f"the operator's storage read policy does not allow "
                          f"namespace {pool.namespace} to read {uri} from {pool.spec.storage.endpoint or 'the default endpoint'}")
            return
        read = manifests.get(uri, ManifestRead())
        if read.manifest is not None:
            apply_record(st, read.manifest, pool.train(st.name))
        elif not read.in_flight and (read.next_try is None or pool.now >= read.next_try):
            d.actions.append(ReadManifest(st.name, uri))
        elif read.next_try is not None and not read.in_flight:  # one in flight queues a pass when it ends
            d.requeue_after = max((read.next_try - pool.now).total_seconds(), 1.0)
        unreadable = prev is not None and prev.reason == "EvaluationUnreadable"
        if read.error and st.metrics is None:
            st.reason = "EvaluationUnreadable"
            st.message = f"adapter published; evaluation not read yet (retrying): cannot read {uri}: {read.error}"
            if unreadable and prev is not None and same_error(prev.message, st.message):
                st.message = prev.message  # the same failure: no status churn
            return
        if unreadable and prev is not None and read.manifest is None:
            # No read has finished in this process yet (a restarted operator): what the
            # status said stands until one does, so nothing flips or is announced twice.
            st.reason, st.message = prev.reason, prev.message
            return
    st.message = outcome_message(st)
    if st.promoted is False:  # kept in the registry, not the active adapter
        st.reason = "NotPromoted"


def _in_progress(pool: Pool, d: Decision, latest: ObservedJob, failures: list[ObservedJob]) -> None:
    st, state = d.status, latest.state
    st.phase = SubtaskPhase.Running if state in (AttemptState.Running, AttemptState.Finishing) else SubtaskPhase.Pending
    retry = f"retry {len(failures)} after {failure_class(failures[-1]).value}: {explanation(failures[-1].message, 240)}; " if failures else ""
    if failures:  # a retry is under way: keep saying why the last attempt failed
        st.failureClass = failure_class(failures[-1]).value
    if state == AttemptState.Paused:
        waiting = f"waiting for admission by Kueue queue {pool.spec.queueName}" if pool.kueue and not pool.spec.suspend else "suspended"
        st.reason, st.message = ("Suspended" if pool.spec.suspend else "Queued"), retry + waiting
    elif state == AttemptState.Starting:
        started = latest.started_at() or pool.now
        waited = (pool.now - started).total_seconds()
        limit = pool.config.startup_timeout_seconds
        where = f"RayJob {latest.name} is {latest.deployment_status or 'New'}" + (f", Ray job {latest.job_status}" if latest.job_status else "")
        if waited >= limit:
            st.reason = "Stalled"
            st.message = retry + f"no progress for {int(waited // 60)} min: {where}" + (f": {explanation(latest.message, 200)}" if latest.message else "") \
                + " (check the RayJob's events and pods: image, Pod Security admission, capacity)"
        else:
            st.reason, st.message = "Starting", retry + f"starting: {where}"
            d.requeue_after = max(limit - waited, 1.0)
    else:
        st.reason = "Training" if state == AttemptState.Running else "Finishing"
        st.message = retry + (explanation(latest.message) if latest.message else ("training" if state == AttemptState.Running else "finishing"))


def _failed(pool: Pool, d: Decision, latest: ObservedJob, failures: list[ObservedJob], prev: SubtaskStatus | None) -> None:
    st = d.status
    cls = failure_class(latest)
    st.failureClass, st.message = cls.value, explanation(latest.message) or f"RayJob {latest.name} failed"
    if not cls.retryable:
        st.phase, st.reason, st.completionTime = SubtaskPhase.Failed, cls.value, latest.end_time
    elif len(failures) > pool.spec.backoffLimit:
        st.phase, st.reason, st.completionTime = SubtaskPhase.Failed, "BackoffLimitExceeded", latest.end_time
        st.message = f"backoff limit {pool.spec.backoffLimit} exceeded after {len(failures)} failed attempts; last: {st.message}"
    else:
        retry_at = _retry_time(pool, latest, len(failures), prev)
        d.retry_of, d.predecessor = cls.value, latest
        if latest.cluster_alive:  # its nodes are not needed during the backoff: free them now
            d.actions.append(ReleaseCluster(latest.name, "BeforeRetry"))
        if pool.now >= retry_at:
            d.wants_launch = True
        else:
            st.reason, st.nextRetryTime = "RetryBackoff", format_time(retry_at)
            d.requeue_after = max((retry_at - pool.now).total_seconds(), 1.0)


def _retry_time(pool: Pool, latest: ObservedJob, failures: int, prev: SubtaskStatus | None) -> datetime:
    """When the retry may start: KubeRay's endTime (the attempt's terminal time) plus the
    backoff. Kept stable across passes: a missing endTime falls back to the time already
    announced in the status, so the status does not churn."""
    announced = parse_time(prev.nextRetryTime) if prev is not None and prev.rayJob == latest.name else None
    ended = parse_time(latest.end_time)
    if ended is None and announced is not None:
        return announced
    base = ended or pool.now
    return base + timedelta(seconds=pool.config.retry_backoff.delay(failures))


# --- sharing the pool's capacity ------------------------------------------------


def allocate(pool: Pool, decisions: list[Decision], observed: list[ObservedJob], out: Plan) -> None:
    """Launch what wants to launch, in spec order, within maxParallelSubtasks.

    Every attempt whose Ray cluster lives occupies a slot (running, finishing, being
    deleted, or finished within its ttlSecondsAfterFinished). A retry first releases
    its predecessor's cluster (its nodes are needed) and launches once it is gone; a
    launch that finds no free slot releases a finished attempt's cluster to make one."""
    occupied = sum(1 for j in observed if j.holds_cluster)
    free = max(pool.spec.maxParallelSubtasks - occupied, 0)
    releasable = [j for j in observed if j.state.is_terminal and j.cluster_alive]
    released = {a.job for d in decisions for a in d.actions if isinstance(a, ReleaseCluster)}
    for d in decisions:
        if not d.wants_launch or d.resolved is None:
            continue
        st = d.status
        if pool.spec.suspend:
            st.reason, st.message = "Suspended", "suspended"
            continue
        if pool.shared and pool.cluster is not None and pool.cluster.deleting:
            st.reason, st.message = "WaitingForCluster", f"waiting for Ray cluster {pool.cluster.name} to be deleted before a new one starts"
            out.requeue(pool.config.release_poll_seconds)
            continue
        if d.predecessor is not None and d.predecessor.cluster_alive:  # released by `decide`
            st.reason, st.message = "ReleasingCluster", f"retry after {d.retry_of}: waiting for RayJob {d.predecessor.name}'s Ray cluster to be deleted"
            out.requeue(pool.config.release_poll_seconds)
            continue
        if free <= 0:
            spare = next((j for j in releasable if j.name not in released), None)
            if spare is not None:
                _release(out, spare.name, "CapacityNeeded", released)
            st.reason = "WaitingForCapacity"
            out.requeue(pool.config.release_poll_seconds)
            st.message = f"waiting: {pool.spec.maxParallelSubtasks} sub-task(s) already hold a Ray cluster"
            continue
        free -= 1
        _launch(pool, d, out)


def _release(out: Plan, job: str, reason: str, released: set[str]) -> None:
    if job not in released:
        released.add(job)
        out.actions.append(ReleaseCluster(job, reason))


def _launch(pool: Pool, d: Decision, out: Plan) -> None:
    st, train = d.status, pool.train(d.status.name)
    n = d.next_attempt
    name = child_name(pool.name, st.name, n)
    rayjob = render_rayjob(pool.name, pool.namespace, pool.uid, pool.spec, train, n, pool.config)
    out.actions.append(Launch(st.name, name, rayjob, d.retry_of))
    st.attempts += 1
    st.rayJob, st.phase, st.nextRetryTime, st.reason = name, SubtaskPhase.Pending, None, "Launched"
    st.startTime = st.startTime or format_time(pool.now)
    retry = d.retry_of is not None
    what = f"retrying after {d.retry_of}" if retry else "launched"
    st.message = f"{what}: RayJob {name} (attempt {st.attempts})"
    out.events.append(Event("Warning" if retry else "Normal", "Retrying" if retry else "Launched", f"sub-task {st.name}: {st.message}"))


# --- suspension -----------------------------------------------------------------


def suspension(pool: Pool, jobs: list[ObservedJob]) -> list[Action]:
    """Every unfinished attempt matches spec.suspend.

    Without Kueue: spec.suspend on the RayJob (KubeRay deletes the cluster; a resume
    starts a new one and the trainjob continues from its S3 checkpoint). With Kueue,
    spec.suspend is Kueue's (suspended at creation, lifted on admission), so the
    operator never writes it; and KubeRay refuses it on a RayJob that runs on the shared
    cluster. In both cases suspending the pool deletes its unfinished attempts instead
    (not failures; the next attempt resumes from the checkpoint)."""
    actions: list[Action] = []
    for j in (j for j in jobs if not j.state.is_terminal and not j.deleting):
        if pool.kueue or j.shared:
            if pool.spec.suspend:
                actions.append(DeleteJob(j.name, "Suspended"))
        elif j.suspend != pool.spec.suspend:
            actions.append(SetSuspend(j.name, pool.spec.suspend))
    return actions
