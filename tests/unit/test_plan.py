"""The planner, table-driven: spec + observed RayJobs + old status -> actions, status, events."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from anytasktune.actions import DeleteJob, Launch, ManifestRead, SetSuspend
from anytasktune.attempt import ObservedJob, failure_class, format_time
from anytasktune.config import OperatorConfig, ReadRule, StorageReadPolicy
from anytasktune.plan import plan
from anytasktune.resolve import resolve_subtask
from anytasktune.spec import TaskFineTune
from anytasktune.summary import Event, coalesce
from anytasktune_contract.failures import FailureClass, failure_line
from tests.fixtures.kuberay import load

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)
# The operator may read every run's manifest here (the storage read policy has its own tests).
READ_ALL = StorageReadPolicy((ReadRule(("*",), ("*",), ("s3://",)),))
CONFIG = OperatorConfig(retry_backoff_seconds=10, retry_backoff_max_seconds=300, storage_read_policy=READ_ALL)


def tft(subtasks: int = 3, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "domain": "legal",
        "baseModel": {"uri": "s3://models/qwen/"},
        "storage": {"output": "s3://adapters/out/"},
        "subtasks": [
            {"name": f"task{i}", "dataset": {"uri": f"s3://datasets/t{i}.jsonl"}, "instruction": f"Do task {i}."}
            for i in range(subtasks)
        ],
        "maxParallelSubtasks": 2,
        "backoffLimit": 1,
    }
    body.update(spec)
    return {"metadata": {"name": "legal", "namespace": "ns", "uid": "u-1", "generation": 1}, "spec": body}


def run_id(obj: dict[str, Any], subtask: str) -> str:
    model = TaskFineTune.model_validate(obj)
    sub = next(s for s in model.spec.subtasks if s.name == subtask)
    return resolve_subtask("legal", "ns", model.spec, sub).spec_id()


# RayJob statuses as the real KubeRay v1.4.2 wrote them (tests/fixtures/kuberay), by state.
_SUCCESS, _FAILURE = load("success"), load("app_failure")
RECORDED: dict[str, dict[str, Any]] = {
    "active": _SUCCESS.observations[0].status,  # a new RayJob: no status yet, or Initializing
    "running": next(o for o in _SUCCESS.observations if o.job == "RUNNING").status,
    "succeeded": _SUCCESS.observations[-1].status,
    "failed": _FAILURE.observations[-1].status,  # a DataContract failure unless a test gives its own message
    "finishing": next(o for o in _FAILURE.observations if o.job == "FAILED" and o.deployment == "Running").status,
}


def job(obj: dict[str, Any], subtask: str, attempt: int, state: str, **kw: Any) -> ObservedJob:
    """An observed RayJob in a recorded KubeRay state (active | running | finishing |
    succeeded | failed); times relative to NOW unless given."""
    status = RECORDED[state]
    fields: dict[str, Any] = dict(
        name=f"legal-{subtask}-{attempt}",
        subtask=subtask,
        run_id=run_id(obj, subtask),
        attempt=attempt,
        deployment_status=status.get("jobDeploymentStatus", ""),
        job_status=status.get("jobStatus", ""),
        reason=status.get("reason", ""),
        message=status.get("message", ""),
        start_time=format_time(NOW - timedelta(minutes=30)),
        end_time=format_time(NOW - timedelta(minutes=1)) if state in ("succeeded", "failed") else None,
    )
    fields.update(kw)
    return ObservedJob(**fields)


def evaluated(obj: dict[str, Any], subtask: str, evaluation: dict[str, Any]) -> dict[str, ManifestRead]:
    """What the executor recorded after reading the run's manifest.json."""
    model = TaskFineTune.model_validate(obj)
    sub = next(s for s in model.spec.subtasks if s.name == subtask)
    uri = resolve_subtask("legal", "ns", model.spec, sub).spec_prefix() + "manifest.json"
    return {uri: ManifestRead(manifest={"evaluation": evaluation})}


def launches(p: Any) -> list[str]:
    return [a.name for a in p.actions if isinstance(a, Launch)]


def phases(p: Any) -> dict[str, str]:
    return {s.name: s.phase.value for s in p.status.subtasks}


def test_first_pass_launches_up_to_the_parallelism_limit_in_order() -> None:
    obj = tft()
    p = plan(obj, [], {}, NOW, CONFIG)
    assert launches(p) == ["legal-task0-1", "legal-task1-1"]
    assert phases(p) == {"task0": "Pending", "task1": "Pending", "task2": "Pending"}
    assert p.status.phase.value == "Running"
    assert p.status.progress == "0/3"
    assert [e.reason for e in p.events] == ["Launched", "Launched"]
    assert "waiting" in p.status.subtasks[2].message


def test_a_finished_subtask_frees_a_slot_for_the_next() -> None:
    obj = tft()
    observed = [job(obj, "task0", 1, "succeeded"), job(obj, "task1", 1, "running")]
    p = plan(obj, observed, {}, NOW, CONFIG)
    assert launches(p) == ["legal-task2-1"]
    assert phases(p) == {"task0": "Succeeded", "task1": "Running", "task2": "Pending"}
    assert p.status.subtasks[0].adapter is None  # where it is: in the trainjob's record, read next
    record = {"runId": "3fa2c1d9e0", "runPrefix": "s3://adapters/out/legal/task0/runs/3fa2c1d9e0/", "outcome": "Trained",
              "reason": "first run of this sub-task", "evaluation": {"base": {"f1": 0.1}, "adapter": {"f1": 0.6}, "lift": {"f1": 0.5}}}
    read = plan(obj, observed, {next(iter(evaluated(obj, "task0", {}))): ManifestRead(manifest=record)}, NOW, CONFIG)
    st = read.status.subtasks[0]
    assert (st.adapter, st.runId, st.outcome) == (record["runPrefix"], "3fa2c1d9e0", "Trained")
    assert st.message == "trained run 3fa2c1d9e0 (first run of this sub-task): f1 0.100 -> 0.600 (+0.500)"
    assert "SubtaskSucceeded" in [e.reason for e in p.events]


def test_restart_recomputes_the_same_plan_without_duplicates() -> None:
    obj = tft()
    first = plan(obj, [], {}, NOW, CONFIG)
    # The operator died after creating task0's RayJob but before writing status.
    observed = [job(obj, "task0", 1, "active")]
    second = plan(obj, observed, {}, NOW, CONFIG)
    assert launches(second) == ["legal-task1-1"]  # same name as in the first plan: a 409 is success
    assert set(launches(second)) <= set(launches(first))


@pytest.mark.parametrize(
    ("message", "reason", "deployment", "expected"),
    [
        ("x\n" + failure_line(FailureClass.DataContract, "k.jsonl:3: empty output"), "", "Failed", FailureClass.DataContract),
        ("Job entrypoint command failed\nTraceback...\ntorch.OutOfMemoryError: CUDA out of memory", "", "Failed", FailureClass.OutOfMemory),
        ("pod was OOMKilled", "", "Failed", FailureClass.OutOfMemory),
        ("The node was preempted", "", "Failed", FailureClass.Preempted),
        ("", "DeadlineExceeded", "Failed", FailureClass.DeadlineExceeded),
        ("bad spec", "ValidationFailed", "ValidationFailed", FailureClass.InvalidSpec),
        ("segfault", "AppFailed", "Failed", FailureClass.Unknown),
        (failure_line(FailureClass.StorageUnavailable, "s3 down"), "", "Failed", FailureClass.StorageUnavailable),
    ],
)
def test_failure_classification(message: str, reason: str, deployment: str, expected: FailureClass) -> None:
    j = ObservedJob(name="j", subtask="s", run_id="r", attempt=1, deployment_status=deployment, job_status="FAILED", reason=reason, message=message)
    assert failure_class(j) == expected


def test_retryable_failure_waits_for_backoff_then_relaunches() -> None:
    obj = tft(subtasks=1)
    failed = job(obj, "task0", 1, "failed", message="OOMKilled", end_time=format_time(NOW - timedelta(seconds=3)))
    waiting = plan(obj, [failed], {}, NOW, CONFIG)
    assert launches(waiting) == []
    assert waiting.status.subtasks[0].nextRetryTime == format_time(NOW + timedelta(seconds=7))
    assert waiting.requeue_after == pytest.approx(7.0)
    assert waiting.status.subtasks[0].failureClass == "OutOfMemory"

    later = plan(obj, [failed], {}, NOW + timedelta(seconds=8), CONFIG)
    assert launches(later) == ["legal-task0-2"]
    launch = next(a for a in later.actions if isinstance(a, Launch))
    assert launch.retry_of == "OutOfMemory"
    assert later.status.subtasks[0].attempts == 2
    assert [e.reason for e in later.events] == ["Retrying"]

    retrying = plan(obj, [failed, job(obj, "task0", 2, "running")], {}, NOW + timedelta(seconds=9), CONFIG)
    assert retrying.status.subtasks[0].phase.value == "Running"
    assert retrying.status.subtasks[0].failureClass == "OutOfMemory"  # why this is a retry


def test_backoff_limit_exhausted_fails_the_subtask_but_not_the_others() -> None:
    obj = tft(subtasks=2)
    observed = [
        job(obj, "task0", 1, "failed", message="boom"),
        job(obj, "task0", 2, "failed", message="boom again"),
        job(obj, "task1", 1, "running"),
    ]
    p = plan(obj, observed, {}, NOW, CONFIG)
    assert launches(p) == []
    assert phases(p) == {"task0": "Failed", "task1": "Running"}
    assert "backoff limit 1 exceeded after 2 failed attempts" in p.status.subtasks[0].message
    assert p.status.phase.value == "Running"
    degraded = next(c for c in p.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "SubtaskFailed")


def test_data_contract_failure_is_never_retried() -> None:
    obj = tft(subtasks=1, backoffLimit=5)
    bad = job(obj, "task0", 1, "failed", message=failure_line(FailureClass.DataContract, "s3://datasets/t0.jsonl:7: output is empty"))
    p = plan(obj, [bad], {}, NOW + timedelta(hours=1), CONFIG)
    assert launches(p) == []
    assert phases(p) == {"task0": "Failed"}
    assert p.status.subtasks[0].failureClass == "DataContract"
    assert "t0.jsonl:7" in p.status.subtasks[0].message
    assert p.status.phase.value == "Failed"
    assert {e.reason for e in p.events} >= {"SubtaskFailed", "CompletedWithFailures"}


def test_all_succeeded_completes_with_conditions_and_metrics() -> None:
    obj = tft(subtasks=2)
    observed = [job(obj, "task0", 1, "succeeded"), job(obj, "task1", 2, "succeeded")]
    manifests = evaluated(obj, "task0", {"base": {"f1": 0.2}, "adapter": {"f1": 0.8}, "lift": {"f1": 0.6}})
    p = plan(obj, observed, manifests, NOW, CONFIG)
    assert p.status.phase.value == "Succeeded"
    assert p.status.progress == "2/2"
    assert p.status.completionTime == format_time(NOW)
    assert p.status.subtasks[0].metrics is not None and p.status.subtasks[0].metrics.lift == {"f1": 0.6}
    assert "0.200 -> 0.800 (+0.600)" in p.status.subtasks[0].message

    with_loss = evaluated(obj, "task0", {"base": {"f1": 0.2, "eval_loss": 2.0}, "adapter": {"f1": 0.8, "eval_loss": 0.5},
                                         "lift": {"f1": 0.6, "eval_loss": -1.5}})
    message = plan(obj, observed, with_loss, NOW, CONFIG).status.subtasks[0].message
    assert message.startswith("f1 0.200 -> 0.800 (+0.600); eval_loss")  # the task metric first
    conditions = {c.type: (c.status, c.reason) for c in p.status.conditions}
    assert conditions == {
        "Progressing": ("False", "Completed"),
        "Succeeded": ("True", "AllSubtasksSucceeded"),
        "Degraded": ("False", "AsExpected"),
        "Suspended": ("False", "NotSuspended"),
    }
    assert all(c.observedGeneration == 1 for c in p.status.conditions)


def test_suspend_launches_nothing_and_suspends_running_jobs_then_resume_unsuspends() -> None:
    obj = tft(suspend=True)
    running = job(obj, "task0", 1, "running")
    p = plan(obj, [running], {}, NOW, CONFIG)
    assert launches(p) == []
    assert SetSuspend("legal-task0-1", True) in p.actions
    assert p.status.phase.value == "Suspended"

    resumed = tft(suspend=False)
    suspended = job(resumed, "task0", 1, "active", suspend=True, deployment_status="Suspended")
    p2 = plan(resumed, [suspended], {}, NOW, CONFIG)
    assert SetSuspend("legal-task0-1", False) in p2.actions
    assert launches(p2) == ["legal-task1-1"]  # one slot left next to the resumed job


def test_spec_change_supersedes_running_job_and_relaunches_with_a_new_run_id() -> None:
    old = tft(subtasks=1)
    running = job(old, "task0", 1, "running")
    new = copy.deepcopy(old)
    new["spec"]["subtasks"][0]["lora"] = {"r": 64}
    new["metadata"]["generation"] = 2
    p = plan(new, [running], {}, NOW, CONFIG)
    assert DeleteJob("legal-task0-1", "Superseded") in p.actions
    assert launches(p) == ["legal-task0-2"]  # next number: never reuses a name
    assert p.status.subtasks[0].specId == run_id(new, "task0") != running.run_id
    assert p.status.observedGeneration == 2


def test_succeeded_subtask_with_unchanged_spec_is_not_retrained_after_another_changes() -> None:
    old = tft(subtasks=2)
    observed = [job(old, "task0", 1, "succeeded"), job(old, "task1", 1, "succeeded")]
    new = copy.deepcopy(old)
    new["spec"]["subtasks"][1]["instruction"] = "A sharper instruction."
    p = plan(new, observed, {}, NOW, CONFIG)
    assert launches(p) == ["legal-task1-2"]
    assert phases(p) == {"task0": "Succeeded", "task1": "Pending"}


def test_removed_subtask_has_its_running_job_deleted() -> None:
    obj = tft(subtasks=2)
    orphan = ObservedJob(name="legal-gone-1", subtask="gone", run_id="x", attempt=1, job_status="RUNNING")
    p = plan(obj, [orphan], {}, NOW, CONFIG)
    assert DeleteJob("legal-gone-1", "SubtaskRemoved") in p.actions


def test_invalid_spec_is_reported_not_launched() -> None:
    obj = tft(subtasks=1)
    obj["spec"]["subtasks"][0]["deepspeed"] = {"offloadOptimizer": True, "zeroStage": 0}
    p = plan(obj, [], {}, NOW, CONFIG)
    assert launches(p) == []
    assert p.status.subtasks[0].failureClass == "InvalidSpec"
    assert "offloadOptimizer needs zeroStage >= 1" in p.status.subtasks[0].message

    fused_on_cpu = tft(subtasks=1)
    fused_on_cpu["spec"]["cluster"] = {**fused_on_cpu["spec"].get("cluster", {}), "gpusPerWorker": 0}
    fused_on_cpu["spec"]["subtasks"][0]["training"] = {"fusedKernels": True}
    p_fused = plan(fused_on_cpu, [], {}, NOW, CONFIG)
    assert launches(p_fused) == [] and p_fused.status.subtasks[0].failureClass == "InvalidSpec"
    assert "training.fusedKernels needs GPUs (spec.cluster.gpusPerWorker > 0)" in p_fused.status.subtasks[0].message

    broken = tft(subtasks=1)
    broken["spec"]["maxParallelSubtasks"] = 0
    p2 = plan(broken, [], {}, NOW, CONFIG)
    assert p2.status.phase.value == "Invalid"
    assert [e.reason for e in p2.events] == ["InvalidSpec"]


def test_unchanged_world_gives_the_same_status_and_no_events() -> None:
    obj = tft(subtasks=2)
    observed = [job(obj, "task0", 1, "running"), job(obj, "task1", 1, "running")]
    first = plan(obj, observed, {}, NOW, CONFIG)
    obj["status"] = first.status.model_dump(mode="json", exclude_none=True)
    second = plan(obj, observed, {}, NOW + timedelta(minutes=5), CONFIG)
    assert second.status == first.status  # transition times kept: status is written only on change
    assert second.events == [] and second.actions == []


@pytest.mark.parametrize(("failures", "delay"), [(1, 10), (2, 20), (3, 40), (10, 300)])
def test_retry_delay_doubles_and_is_capped(failures: int, delay: float) -> None:
    assert CONFIG.retry_backoff.delay(failures) == delay


def test_a_suspended_rayjob_is_paused_not_failed() -> None:
    """KubeRay v1.4 suspends by resetting jobStatus to "" (never STOPPED) and deploymentStatus Suspended."""
    obj = tft(subtasks=1)
    paused = job(obj, "task0", 1, "active", suspend=True, deployment_status="Suspended", job_status="")
    assert paused.state.value == "Paused" and not paused.state.is_terminal
    p = plan(obj, [paused], {}, NOW, CONFIG)
    assert SetSuspend("legal-task0-1", False) in p.actions
    assert launches(p) == [] and phases(p) == {"task0": "Pending"}


def test_retry_time_is_stable_when_the_failed_job_has_no_end_time() -> None:
    """Otherwise every pass writes a new nextRetryTime, which triggers another pass."""
    obj = tft(subtasks=1)
    failed = job(obj, "task0", 1, "failed", message="Job failed", end_time=None, start_time=None, created=format_time(NOW - timedelta(seconds=2)))
    first = plan(obj, [failed], {}, NOW, CONFIG)
    obj["status"] = first.status.model_dump(mode="json", exclude_none=True)
    second = plan(obj, [failed], {}, NOW + timedelta(seconds=1), CONFIG)
    assert first.status.subtasks[0].nextRetryTime == second.status.subtasks[0].nextRetryTime == format_time(NOW + timedelta(seconds=10))


def test_invalid_spec_messages_are_worded_as_validate_words_them() -> None:
    broken = tft(subtasks=1)
    broken["spec"]["subtasks"][0]["dataset"]["uri"] = "https://example.com/x.jsonl"
    p = plan(broken, [], {}, NOW, CONFIG)
    condition = next(c for c in p.status.conditions if c.type == "Degraded")
    assert condition.message == "spec.subtasks[0].dataset: dataset.uri must be an s3://bucket/key URI"


def _ev(reason: str, message: str, type_: str = "Normal") -> Event:
    return Event(type_, reason, message)


@pytest.mark.parametrize(("events", "limit", "want"), [
    ([], 1024, []),
    ([_ev("Launched", "sub-task a: x")], 1024, [_ev("Launched", "sub-task a: x")]),
    # same reason: one Event, messages in order
    ([_ev("Launched", "a"), _ev("Launched", "b"), _ev("Launched", "c")], 1024, [_ev("Launched", "a; b; c")]),
    # groups keep the order of their first Event
    ([_ev("Launched", "a"), _ev("Superseded", "s"), _ev("Launched", "b")], 1024, [_ev("Launched", "a; b"), _ev("Superseded", "s")]),
    # a Warning and a Normal of one reason stay apart
    ([_ev("Retrying", "a", "Warning"), _ev("Retrying", "b")], 1024, [_ev("Retrying", "a", "Warning"), _ev("Retrying", "b")]),
    # split where the joined message would pass the limit: nothing is cut
    ([_ev("Launched", "aaaa"), _ev("Launched", "bbbb"), _ev("Launched", "cccc")], 10, [_ev("Launched", "aaaa; bbbb"), _ev("Launched", "cccc")]),
    ([_ev("Launched", "a" * 20), _ev("Launched", "b")], 10, [_ev("Launched", "a" * 20), _ev("Launched", "b")]),
])
def test_coalesce_joins_one_passes_events_by_reason(events: list[Event], limit: int, want: list[Event]) -> None:
    assert coalesce(events, limit) == want


def test_a_pool_launched_in_one_pass_is_announced_by_one_event() -> None:
    p = plan(tft(3, maxParallelSubtasks=3), [], {}, NOW, CONFIG)
    assert [e.reason for e in p.events] == ["Launched"] * 3
    assert [e.reason for e in coalesce(p.events)] == ["Launched"]
    assert all(f"sub-task task{i}:" in coalesce(p.events)[0].message for i in range(3))


# --- the memo of resolved sub-tasks (resolve.Resolutions) -------------------------------


def test_resolutions_are_memoized_by_content_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from anytasktune import resolve

    calls: list[str] = []
    real = resolve.resolve_pool
    monkeypatch.setattr(resolve, "resolve_pool", lambda name, namespace, spec: calls.append(name) or real(name, namespace, spec))
    memo = resolve.Resolutions(size=2)

    def get(obj: dict[str, Any], name: str = "legal", namespace: str = "ns") -> Any:
        return memo.get(name, namespace, obj["spec"]).subtasks

    base = tft()
    first = get(base)
    assert first["task1"].spec_id == run_id(base, "task1")
    assert first["task1"].spec_prefix == f"s3://adapters/out/legal/task1/{run_id(base, 'task1')}/"
    assert get(copy.deepcopy(base)) is first and len(calls) == 1  # the same content: no second resolve
    reordered = {"metadata": base["metadata"], "spec": dict(reversed(list(base["spec"].items())))}
    assert get(reordered) is first  # key order is not content
    changed = copy.deepcopy(base)
    changed["spec"]["subtasks"][1]["instruction"] = "Do it differently."
    assert get(changed)["task1"].spec_id != first["task1"].spec_id and len(calls) == 2
    assert get(base, name="other")["task1"].spec_id != first["task1"].spec_id  # the name is resolved into the spec
    assert len(memo) == 2 and len(calls) == 3  # bounded: the oldest (base) went first
    get(base)
    assert len(calls) == 4


def test_a_subtask_that_does_not_resolve_is_remembered_with_its_error() -> None:
    from anytasktune.resolve import Resolutions

    obj = tft(subtasks=2)
    obj["spec"]["subtasks"][1]["deepspeed"] = {"zeroStage": 0, "offloadOptimizer": True}
    resolved = Resolutions().get("legal", "ns", obj["spec"]).subtasks
    assert resolved["task0"].error == "" and resolved["task0"].spec_id
    assert resolved["task1"].error == "sub-task task1: deepspeed.offloadOptimizer needs zeroStage >= 1"
    assert resolved["task1"].spec_id == ""


def test_an_invalid_spec_is_remembered_with_its_description() -> None:
    from anytasktune.resolve import Resolutions

    memo = Resolutions()
    obj = tft(maxParallelSubtasks=0)
    first = memo.get("legal", "ns", obj["spec"])
    assert first.spec is None and "maxParallelSubtasks" in first.invalid
    assert memo.get("legal", "ns", copy.deepcopy(obj["spec"])) is first
    assert memo.get("Not-A-Label", "ns", tft()["spec"]).invalid  # the rules that read the name apply
