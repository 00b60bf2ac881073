"""The Argo CD health check (gitops/argocd/health-taskfinetune.lua), run through Lua 5.1
(Argo CD's gopher-lua speaks 5.1) against statuses the planner really produces."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from lupa import lua51

from anytasktune.actions import Launch
from anytasktune.attempt import ObservedJob
from anytasktune.config import OperatorConfig
from anytasktune.plan import plan
from anytasktune.spec import TaskFineTuneStatus
from anytasktune_contract.failures import FailureClass, failure_line

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "gitops" / "argocd" / "health-taskfinetune.lua"
NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)
CONFIG = OperatorConfig()

RAYJOB_STATUS = {
    "active": {"jobDeploymentStatus": "Initializing"},
    "running": {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "startTime": "2026-11-24T11:00:00Z"},
    "succeeded": {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": "2026-11-24T11:50:00Z"},
    "oom": {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "endTime": "2026-11-24T11:59:59Z",
            "message": "torch.OutOfMemoryError: CUDA out of memory"},
    "bad-data": {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "endTime": "2026-11-24T11:50:00Z",
                 "message": failure_line(FailureClass.DataContract, "s3://datasets/b.jsonl:3: field 'output' is empty")},
}


def taskfinetune(subtasks: tuple[str, ...] = ("a", "b"), **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "domain": "legal",
        "baseModel": {"uri": "s3://models/base/"},
        "storage": {"output": "s3://adapters/"},
        "subtasks": [{"name": s, "dataset": {"uri": f"s3://datasets/{s}.jsonl"}, "instruction": f"Do {s}."} for s in subtasks],
        "maxParallelSubtasks": 4,
        "backoffLimit": 2,
    }
    body.update(spec)
    return {"apiVersion": "anytasktune.io/v1alpha1", "kind": "TaskFineTune",
            "metadata": {"name": "legal", "namespace": "team", "uid": "u-1", "generation": 1}, "spec": body}


def with_status(obj: dict[str, Any], status: TaskFineTuneStatus) -> dict[str, Any]:
    """The object as the API server holds it after the operator's status patch."""
    return {**obj, "status": status.model_dump(mode="json", exclude_none=True)}


def after(obj: dict[str, Any], jobs: dict[str, str], **then: Any) -> dict[str, Any]:
    """Run the planner twice: launch, then observe the RayJobs in the given KubeRay states
    (after changing the spec by `then`, if given)."""
    first = plan(obj, [], {}, NOW, CONFIG)
    launched = {a.subtask: a.rayjob for a in first.actions if isinstance(a, Launch)}
    observed = [ObservedJob.from_object({**launched[sub], "status": RAYJOB_STATUS[state]}) for sub, state in jobs.items()]
    if then:
        obj = {**obj, "spec": {**obj["spec"], **then}}
    return with_status(obj, plan(with_status(obj, first.status), observed, {}, NOW, CONFIG).status)


def samples() -> list[tuple[str, dict[str, Any], str, str]]:
    """(case, TaskFineTune, expected health, a word of the expected message)."""
    base = taskfinetune()
    invalid = taskfinetune()
    del invalid["spec"]["storage"]  # what the CRD forbids but the planner still guards
    stale = after(base, {"a": "succeeded", "b": "succeeded"})
    stale["metadata"] = {**stale["metadata"], "generation": 2}
    return [
        ("no status yet", base, "Progressing", "waiting"),
        ("initial status", with_status(base, TaskFineTuneStatus(observedGeneration=1)), "Progressing", "Pending"),
        ("launched", after(base, {"a": "active", "b": "active"}), "Progressing", "Running"),
        ("training", after(base, {"a": "running", "b": "running"}), "Progressing", "0/2"),
        ("retrying after OOM", after(base, {"a": "oom", "b": "running"}), "Progressing", "Running"),
        ("one succeeded, one training", after(base, {"a": "succeeded", "b": "running"}), "Progressing", "1/2"),
        ("a sub-task failed, another trains", after(base, {"a": "running", "b": "bad-data"}), "Degraded", "failed: b"),
        ("suspended", after(taskfinetune(suspend=True), {}), "Suspended", "suspend"),
        ("suspended while training", after(base, {"a": "running", "b": "running"}, suspend=True), "Suspended", "suspend"),
        ("all succeeded", after(base, {"a": "succeeded", "b": "succeeded"}), "Healthy", "2/2"),
        ("finished with a failure", after(base, {"a": "succeeded", "b": "bad-data"}), "Degraded", "Failed"),
        ("invalid spec", with_status(invalid, plan(invalid, [], {}, NOW, CONFIG).status), "Degraded", "Invalid"),
        ("status of an older generation", stale, "Progressing", "generation 2"),
    ]


@pytest.fixture(scope="module")
def health() -> Any:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    check = lua.eval("function(obj)\n" + LUA.read_text() + "\nend")

    def run(obj: dict[str, Any]) -> dict[str, str]:
        result = check(lua.table_from(copy.deepcopy(obj), recursive=True))
        return {"status": result["status"], "message": result["message"]}

    return run


@pytest.mark.parametrize(("case", "obj", "expected", "word"), samples(), ids=[s[0] for s in samples()])
def test_health(health: Any, case: str, obj: dict[str, Any], expected: str, word: str) -> None:
    got = health(obj)
    assert got["status"] == expected, (case, obj.get("status"), got)
    assert word in got["message"], got


def test_samples_cover_every_phase_and_health() -> None:
    phases = {(o.get("status") or {}).get("phase") for _, o, _, _ in samples()}
    assert phases >= {None, "Pending", "Running", "Suspended", "Succeeded", "Failed", "Invalid"}
    assert {e for _, _, e, _ in samples()} == {"Healthy", "Progressing", "Degraded", "Suspended"}
