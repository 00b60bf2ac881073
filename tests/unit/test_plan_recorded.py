"""The planner fed the RayJob status sequences recorded from the real KubeRay v1.4.2
(tests/fixtures/kuberay/*.json, recorded on `make cluster`), observation by observation,
as the operator sees them: the planner speaks the real controller's language."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from anytasktune.actions import DeleteJob, Launch, SetSuspend
from anytasktune.attempt import ObservedJob, parse_time
from anytasktune.plan import plan
from anytasktune.render import child_labels
from tests.fixtures.kuberay import HERE, Recording, all_recordings, load
from tests.unit.test_plan import CONFIG, run_id, tft

RECORDINGS = all_recordings()


def replay(rec: Recording) -> list[tuple[Any, Any, Any]]:
    """(observation, plan, observed job) for each recorded status, the status carried over
    as the API server would hold it; the TaskFineTune's suspend follows the RayJob's."""
    status: dict[str, Any] = {}
    out = []
    for i, obs in enumerate(rec.observations):
        obj = tft(subtasks=1, suspend=obs.suspend)
        labels = child_labels("legal", "task0", run_id(obj, "task0"), 1)
        job = ObservedJob.from_object(rec.rayjob(i, name="legal-task0-1", namespace="ns", labels=labels))
        now = (parse_time(obs.observed.split(".")[0] + "Z") or datetime.now()) + timedelta(seconds=1)
        p = plan({**obj, "status": status}, [job], {}, now, CONFIG)
        status = p.status.model_dump(mode="json", exclude_none=True)
        out.append((obs, p, job))
    return out


@pytest.mark.parametrize("scenario", sorted(RECORDINGS))
def test_no_new_attempt_while_kuberay_has_not_ended_this_one(scenario: str) -> None:
    for obs, p, job in replay(RECORDINGS[scenario]):
        if not job.state.is_terminal:
            assert not [a for a in p.actions if isinstance(a, Launch)], (scenario, obs.status)
        assert not [a for a in p.actions if isinstance(a, SetSuspend)], "the TaskFineTune's suspend always matches"


@pytest.mark.parametrize("scenario", sorted(RECORDINGS))
def test_a_subtask_is_finished_only_when_kuberay_says_so(scenario: str) -> None:
    for obs, p, _ in replay(RECORDINGS[scenario]):
        phase = p.status.subtasks[0].phase.value
        terminal = obs.deployment in ("Complete", "Failed", "ValidationFailed")
        if not terminal:
            assert phase in ("Pending", "Running"), (scenario, obs.status, phase)
        if phase == "Succeeded":
            assert p.status.subtasks[0].completionTime == obs.status["endTime"]


@pytest.mark.parametrize("scenario", sorted(RECORDINGS))
def test_the_same_observation_twice_changes_nothing(scenario: str) -> None:
    rec = RECORDINGS[scenario]
    obs, first, job = replay(rec)[-1]
    obj = {**tft(subtasks=1, suspend=obs.suspend), "status": first.status.model_dump(mode="json", exclude_none=True)}
    now = (parse_time(obs.observed.split(".")[0] + "Z") or datetime.now()) + timedelta(seconds=2)
    again = plan(obj, [job], {}, now, CONFIG)
    assert again.status == first.status and again.events == []


def test_success_ends_succeeded_after_a_finishing_window() -> None:
    if "success" not in RECORDINGS:
        pytest.skip("not recorded")
    steps = replay(RECORDINGS["success"])
    phases = [p.status.subtasks[0].phase.value for _, p, _ in steps]
    assert phases[-1] == "Succeeded" and phases.count("Succeeded") == 1
    finishing = [p.status.subtasks[0].reason for obs, p, _ in steps if obs.job == "SUCCEEDED" and obs.deployment == "Running"]
    assert finishing == ["Finishing"]  # recorded: jobStatus SUCCEEDED ~3 s before Complete + endTime
    submitted = [p.status.subtasks[0].reason for obs, p, _ in steps if obs.deployment == "Running" and not obs.job]
    assert submitted and set(submitted) == {"Starting"}  # Running without a Ray job yet is not training


@pytest.mark.parametrize("scenario", ["worker_deleted", "head_deleted"])
def test_a_deleted_pod_is_recovered_inside_the_attempt(scenario: str) -> None:
    """Recorded: a deleted worker pod is replaced and Ray Train restarts the worker group
    from its checkpoint; a deleted head pod is replaced and the job is submitted again
    (jobStatus RUNNING -> PENDING -> RUNNING). Both attempts SUCCEED: no retry, no failure,
    the sub-task only goes back to Starting while the new head comes up."""
    steps = replay(RECORDINGS[scenario])
    reasons = [p.status.subtasks[0].reason for _, p, _ in steps]
    assert steps[-1][1].status.subtasks[0].phase.value == "Succeeded"
    assert all(p.status.subtasks[0].phase.value != "Failed" and not p.status.subtasks[0].failureClass for _, p, _ in steps)
    assert all(not [a for a in p.actions if isinstance(a, Launch)] for _, p, _ in steps)
    if scenario == "head_deleted":
        assert "Starting" in reasons[reasons.index("Training") + 1:], reasons  # back to Starting, then Training again


@pytest.mark.parametrize("scenario", ["app_failure", "deadline_exceeded"])
def test_a_failure_waits_for_the_terminal_state_then_plans_its_retry_or_fails(scenario: str) -> None:
    if scenario not in RECORDINGS:
        pytest.skip("not recorded")
    steps = replay(RECORDINGS[scenario])
    obs, p, job = steps[-1]
    st = p.status.subtasks[0]
    assert job.state.value == "Failed", obs.status
    if st.phase.value == "Failed":
        assert st.failureClass in ("DataContract", "InvalidSpec")
    else:
        assert st.reason in ("RetryBackoff", "Launched") and st.failureClass
        if st.nextRetryTime:
            assert st.nextRetryTime == (parse_time(obs.status["endTime"]) + timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")  # type: ignore[operator]
    # Never a retry decided before KubeRay's terminal state.
    for earlier, q, j in steps[:-1]:
        assert q.status.subtasks[0].nextRetryTime is None or j.state.is_terminal, earlier.status


# Recorded on make cluster with the real Kueue v0.17.0 (tests/cluster/test_kueue.py): the RayJob
# created suspended with the queue label, held by a ClusterQueue without quota, then admitted.
KUEUE_RECORDING = "kueue_admission"


def test_a_queued_rayjob_is_never_answered_with_set_suspend() -> None:
    """Kueue owns spec.suspend of a queued RayJob: through the whole recorded sequence
    (suspended while queued, lifted by Kueue on admission, trained to the end) the planner
    never writes it, never deletes or relaunches the attempt, and says why it waits."""
    if not (HERE / f"{KUEUE_RECORDING}.json").exists():
        pytest.skip("not recorded")
    rec = load(KUEUE_RECORDING)
    queue = str(json.loads((HERE / f"{KUEUE_RECORDING}.json").read_text())["queueName"])
    status: dict[str, Any] = {}
    reasons = []
    for i, obs in enumerate(rec.observations):
        obj = tft(subtasks=1, queueName=queue)  # the pool itself is never suspended
        labels = {**child_labels("legal", "task0", run_id(obj, "task0"), 1), "kueue.x-k8s.io/queue-name": queue}
        job = ObservedJob.from_object(rec.rayjob(i, name="legal-task0-1", namespace="ns", labels=labels))
        now = (parse_time(obs.observed.split(".")[0] + "Z") or datetime.now()) + timedelta(seconds=1)
        p = plan({**obj, "status": status}, [job], {}, now, CONFIG)
        status = p.status.model_dump(mode="json", exclude_none=True)
        assert not [a for a in p.actions if isinstance(a, (SetSuspend, DeleteJob, Launch))], (obs.suspend, obs.status, p.actions)
        sub = p.status.subtasks[0]
        reasons.append(sub.reason)
        if obs.suspend:
            assert (sub.phase.value, sub.reason) == ("Pending", "Queued"), (obs.status, sub)
            assert p.status.phase.value == "Pending", p.status  # nothing runs while queued
            assert f"waiting for admission by Kueue queue {queue}" in (sub.message or "")
    assert [o.suspend for o in rec.observations][0] is True
    assert p.status.subtasks[0].phase.value == "Succeeded", reasons
