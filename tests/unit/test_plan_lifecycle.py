"""The planner against KubeRay's real lifecycle (issue 8's findings on a real cluster):
terminal states and the backoff clock, finished clusters holding capacity, stalled
attempts, Kueue's ownership of spec.suspend, manifest reads as planner input, and
status fields that must survive retries and resumes."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from anytasktune.actions import DeleteJob, Launch, ManifestRead, ReadManifest, ReleaseCluster, SetSuspend
from anytasktune.attempt import AttemptState, ObservedJob, attempt_state, format_time
from anytasktune.plan import plan
from anytasktune_contract.failures import FailureClass, failure_line
from tests.unit.test_plan import CONFIG, NOW, job, launches, phases, run_id, tft


def with_status(obj: dict[str, Any], p: Any) -> dict[str, Any]:
    return {**obj, "status": p.status.model_dump(mode="json", exclude_none=True)}


@pytest.mark.parametrize(
    ("deployment", "job_status", "suspend", "deleting", "expected"),
    [
        ("", "", False, False, AttemptState.Starting),
        ("New", "", True, False, AttemptState.Paused),  # created suspended for Kueue
        ("Initializing", "", False, False, AttemptState.Starting),
        ("Running", "", False, False, AttemptState.Starting),  # submitted, the Ray job not started
        ("Running", "PENDING", False, False, AttemptState.Starting),
        ("Running", "RUNNING", False, False, AttemptState.Running),
        ("Running", "FAILED", False, False, AttemptState.Finishing),  # jobStatus leads deploymentStatus by seconds
        ("Running", "SUCCEEDED", False, False, AttemptState.Finishing),
        ("Complete", "SUCCEEDED", False, False, AttemptState.Succeeded),
        ("Complete", "STOPPED", False, False, AttemptState.Failed),
        ("Failed", "FAILED", False, False, AttemptState.Failed),
        ("Failed", "", False, False, AttemptState.Failed),  # submission failed, deadline exceeded
        ("ValidationFailed", "", False, False, AttemptState.Failed),
        ("Suspending", "RUNNING", True, False, AttemptState.Paused),
        ("Suspended", "", True, False, AttemptState.Paused),
        ("Running", "RUNNING", False, True, AttemptState.Deleting),
    ],
)
def test_attempt_state_mapping(deployment: str, job_status: str, suspend: bool, deleting: bool, expected: AttemptState) -> None:
    j = ObservedJob(name="j", subtask="s", run_id="r", attempt=1, suspend=suspend, deployment_status=deployment,
                    job_status=job_status, deleting=deleting)
    assert attempt_state(j) == expected


def test_failure_is_not_final_until_kuberay_says_so_and_the_backoff_runs_from_its_end_time() -> None:
    """Recorded on a real cluster: jobStatus FAILED 7-9 s before jobDeploymentStatus Failed
    and endTime. Planning a retry from startTime in that window relaunched with 0 s backoff."""
    obj = tft(subtasks=1)
    finishing = job(obj, "task0", 1, "finishing", start_time=format_time(NOW - timedelta(minutes=30)), message="OOMKilled")
    window = plan(obj, [finishing], {}, NOW, CONFIG)
    assert launches(window) == [] and phases(window) == {"task0": "Running"}
    assert window.status.subtasks[0].nextRetryTime is None

    ended = NOW + timedelta(seconds=8)
    failed = job(obj, "task0", 1, "failed", message="OOMKilled", end_time=format_time(ended))
    terminal = plan(obj, [failed], {}, ended + timedelta(seconds=1), CONFIG)
    assert launches(terminal) == []
    assert terminal.status.subtasks[0].nextRetryTime == format_time(ended + timedelta(seconds=10))
    assert terminal.status.subtasks[0].reason == "RetryBackoff"


def test_a_retry_releases_its_predecessors_cluster_first_and_launches_once_it_is_gone() -> None:
    obj = tft(subtasks=1)
    failed = job(obj, "task0", 1, "failed", message="OOMKilled", cluster_alive=True)
    first = plan(obj, [failed], {}, NOW, CONFIG)
    assert ReleaseCluster("legal-task0-1", "BeforeRetry") in first.actions
    assert launches(first) == [] and first.status.subtasks[0].reason == "ReleasingCluster"
    assert first.requeue_after == CONFIG.release_poll_seconds

    gone = job(obj, "task0", 1, "failed", message="OOMKilled", cluster_alive=False)
    assert launches(plan(obj, [gone], {}, NOW, CONFIG)) == ["legal-task0-2"]


def test_finished_clusters_count_against_the_limit_and_are_released_for_a_waiting_subtask() -> None:
    obj = tft(subtasks=3)  # maxParallelSubtasks 2
    observed = [job(obj, "task0", 1, "succeeded", cluster_alive=True), job(obj, "task1", 1, "running")]
    p = plan(obj, observed, {}, NOW, CONFIG)
    assert launches(p) == []
    assert ReleaseCluster("legal-task0-1", "CapacityNeeded") in p.actions
    assert p.status.subtasks[2].reason == "WaitingForCapacity"

    released = [job(obj, "task0", 1, "succeeded", cluster_alive=False), job(obj, "task1", 1, "running")]
    assert launches(plan(obj, released, {}, NOW, CONFIG)) == ["legal-task2-1"]


def test_an_attempt_that_never_starts_is_reported_as_stalled_once() -> None:
    """Recorded on a real cluster: the submitter refused by Pod Security "restricted" left
    the TaskFineTune Running forever, with no condition and no Event."""
    obj = tft(subtasks=1)
    started = NOW - timedelta(seconds=CONFIG.startup_timeout_seconds - 60)
    stuck = job(obj, "task0", 1, "active", deployment_status="Running", start_time=format_time(started))
    early = plan(obj, [stuck], {}, NOW, CONFIG)
    assert early.status.subtasks[0].reason == "Starting"
    assert early.requeue_after == pytest.approx(60.0)
    assert "Stalled" not in [e.reason for e in early.events]

    late = plan(with_status(obj, early), [stuck], {}, NOW + timedelta(seconds=61), CONFIG)
    st = late.status.subtasks[0]
    assert st.reason == "Stalled" and "no progress for 10 min" in st.message and "RayJob legal-task0-1 is Running" in st.message
    degraded = next(c for c in late.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "SubtaskStalled")
    assert [e.reason for e in late.events] == ["Stalled"]
    again = plan(with_status(obj, late), [stuck], {}, NOW + timedelta(seconds=120), CONFIG)
    assert "Stalled" not in [e.reason for e in again.events]


def test_kueue_owns_spec_suspend() -> None:
    """Kueue suspends a labelled RayJob and lifts it on admission: the operator creates
    queued RayJobs suspended and never writes spec.suspend on them."""
    obj = tft(subtasks=1, queueName="gpu-queue")
    first = plan(obj, [], {}, NOW, CONFIG)
    launch = next(a for a in first.actions if isinstance(a, Launch))
    assert launch.rayjob["spec"]["suspend"] is True
    assert launch.rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"

    queued = job(obj, "task0", 1, "active", suspend=True, deployment_status="Suspended")
    waiting = plan(obj, [queued], {}, NOW, CONFIG)
    assert not [a for a in waiting.actions if isinstance(a, SetSuspend)]
    assert waiting.status.subtasks[0].message == "waiting for admission by Kueue queue gpu-queue"

    admitted = job(obj, "task0", 1, "running", suspend=False)
    assert not [a for a in plan(obj, [admitted], {}, NOW, CONFIG).actions if isinstance(a, SetSuspend)]

    paused = tft(subtasks=1, queueName="gpu-queue", suspend=True)
    p = plan(paused, [admitted], {}, NOW, CONFIG)
    assert p.actions == [DeleteJob("legal-task0-1", "Suspended")]
    assert p.status.phase.value == "Suspended"


def test_a_pool_suspended_under_kueue_resumes_with_a_new_attempt_that_is_not_a_failure() -> None:
    obj = tft(subtasks=1, queueName="q", backoffLimit=0)
    deleted_during_suspend: list[ObservedJob] = []  # the attempt was deleted; nothing failed
    p = plan(obj, deleted_during_suspend, {}, NOW, CONFIG)
    assert launches(p) == ["legal-task0-1"]
    going = job(obj, "task0", 1, "running", deleting=True)
    waiting = plan(obj, [going], {}, NOW, CONFIG)
    assert launches(waiting) == [] and waiting.status.subtasks[0].reason == "Stopping"


def test_a_running_retry_still_says_why_the_previous_attempt_failed() -> None:
    obj = tft(subtasks=1)
    failed = job(obj, "task0", 1, "failed", message="x\n" + failure_line(FailureClass.StorageUnavailable, "s3 down"))
    retry = job(obj, "task0", 2, "running", message="Job is currently running")
    st = plan(obj, [failed, retry], {}, NOW, CONFIG).status.subtasks[0]
    assert st.failureClass == "StorageUnavailable"
    assert st.message.startswith("retry 1 after StorageUnavailable: ANYTASKTUNE_FAILURE class=StorageUnavailable: s3 down; ")


def test_resume_keeps_the_subtasks_start_time() -> None:
    """KubeRay resets status.startTime when a suspended RayJob starts again."""
    obj = tft(subtasks=1)
    first_start = format_time(NOW - timedelta(hours=1))
    before = plan(obj, [job(obj, "task0", 1, "running", start_time=first_start)], {}, NOW, CONFIG)
    assert before.status.subtasks[0].startTime == first_start
    resumed = job(obj, "task0", 1, "running", start_time=format_time(NOW))
    after = plan(with_status(obj, before), [resumed], {}, NOW + timedelta(minutes=1), CONFIG)
    assert after.status.subtasks[0].startTime == first_start


def test_completion_time_never_precedes_a_subtasks() -> None:
    obj = tft(subtasks=1)
    ahead = format_time(NOW + timedelta(seconds=5))  # KubeRay's clock a little ahead of ours
    p = plan(obj, [job(obj, "task0", 1, "succeeded", end_time=ahead)], {}, NOW, CONFIG)
    assert p.status.subtasks[0].completionTime == ahead
    assert p.status.completionTime == ahead


def test_the_evaluation_is_read_between_passes_with_backoff_and_reported() -> None:
    obj = tft(subtasks=1)
    done = [job(obj, "task0", 1, "succeeded")]
    first = plan(obj, done, {}, NOW, CONFIG)
    read = next(a for a in first.actions if isinstance(a, ReadManifest))
    assert read.uri.startswith(f"s3://adapters/out/legal/task0/{run_id(obj, 'task0')}/") and read.uri.endswith("/manifest.json")
    assert first.status.subtasks[0].metrics is None

    in_flight = {read.uri: ManifestRead(in_flight=True)}
    assert not [a for a in plan(obj, done, in_flight, NOW, CONFIG).actions if isinstance(a, ReadManifest)]

    failing = {read.uri: ManifestRead(error="EndpointConnectionError: down", failures=1, next_try=NOW + timedelta(seconds=5))}
    outage = plan(with_status(obj, first), done, failing, NOW, CONFIG)
    st = outage.status.subtasks[0]
    assert st.reason == "EvaluationUnreadable" and "EndpointConnectionError" in st.message and st.phase.value == "Succeeded"
    assert [e.reason for e in outage.events] == ["StorageUnavailable"]
    assert outage.requeue_after == pytest.approx(5.0)
    assert not [a for a in outage.actions if isinstance(a, ReadManifest)]  # backoff: no read before next_try
    still = plan(with_status(obj, outage), done, {read.uri: ManifestRead(error="down", failures=2, next_try=NOW)}, NOW, CONFIG)
    assert ReadManifest("task0", read.uri) in still.actions and "StorageUnavailable" not in [e.reason for e in still.events]
    # The retry in flight: no timer of the pass's own (the read queues a pass when it ends).
    retrying = {read.uri: ManifestRead(error="down", failures=2, next_try=NOW - timedelta(seconds=1), in_flight=True)}
    assert plan(with_status(obj, outage), done, retrying, NOW, CONFIG).requeue_after is None

    scores = {"base": {"f1": 0.1}, "adapter": {"f1": 0.7}, "lift": {"f1": 0.6}}
    ok = plan(with_status(obj, still), done, {read.uri: ManifestRead(manifest={"evaluation": scores})}, NOW, CONFIG)
    assert ok.status.subtasks[0].metrics is not None and ok.status.subtasks[0].message == "f1 0.100 -> 0.700 (+0.600)"
    assert [e.reason for e in ok.events] == ["Evaluated"] and not [a for a in ok.actions if isinstance(a, ReadManifest)]
    # Once in the status, the evaluation is never read again.
    assert not plan(with_status(obj, ok), done, {}, NOW, CONFIG).actions


def test_a_restarted_operator_keeps_an_unreadable_evaluation_as_it_was() -> None:
    """Reads live in the operator's memory: after a restart nothing has been read yet.
    The status must not flip back to Succeeded nor announce the outage twice (found by
    the SIGKILL trials, seed 424286)."""
    obj = tft(subtasks=1)
    done = [job(obj, "task0", 1, "succeeded")]
    uri = next(a for a in plan(obj, done, {}, NOW, CONFIG).actions if isinstance(a, ReadManifest)).uri
    failing = {uri: ManifestRead(error="EndpointConnectionError: down (gave up after 0.5s)", failures=1, next_try=NOW + timedelta(seconds=5))}
    before = plan(with_status(obj, plan(obj, done, {}, NOW, CONFIG)), done, failing, NOW, CONFIG)
    assert before.status.subtasks[0].reason == "EvaluationUnreadable"

    restarted = plan(with_status(obj, before), done, {}, NOW + timedelta(seconds=30), CONFIG)  # no reads in memory
    assert restarted.status.subtasks == before.status.subtasks
    assert ReadManifest("task0", uri) in restarted.actions and restarted.events == []
    again = {uri: ManifestRead(error="EndpointConnectionError: down (gave up after 0.0s)", failures=1, next_try=NOW + timedelta(seconds=40))}
    failed_again = plan(with_status(obj, restarted), done, again, NOW + timedelta(seconds=31), CONFIG)
    assert failed_again.status.subtasks == before.status.subtasks and failed_again.events == []
