"""Deadlines and clean-up on the real control plane: a sub-task's own
activeDeadlineSeconds reaches its RayJob (KubeRay's CRD schema takes it), the pool's
applies to the others, ttlSecondsAfterFinished rides along, and an attempt KubeRay
fails for its deadline is classified DeadlineExceeded and retried with the same bound."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.kuberay import load
from tests.integration.helpers import RUNNING, Kubectl, OperatorProcess, operator_serving, taskfinetune, wait_for


@pytest.fixture(scope="module")
def operator(kube_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with operator_serving(kube_env, tmp_path_factory.mktemp("operator")) as op:
        yield op


def deadline_exceeded() -> dict[str, Any]:
    """The status KubeRay v1.4.2 wrote when activeDeadlineSeconds passed (recorded on a real
    cluster: tests/fixtures/kuberay/deadline_exceeded.json), with a fresh endTime."""
    final = load("deadline_exceeded").observations[-1].status
    keep = ("jobDeploymentStatus", "jobStatus", "reason", "message", "startTime")
    return {**{k: final[k] for k in keep if k in final}, "endTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def test_each_subtask_gets_its_deadline_and_a_deadline_failure_is_retried(k: Kubectl, operator: OperatorProcess) -> None:
    ns = k.namespace("deadlines")
    body = taskfinetune("timed", ["long", "short"], maxParallelSubtasks=2, backoffLimit=1)
    body["spec"]["cluster"].update(activeDeadlineSeconds=14400, ttlSecondsAfterFinished=300)
    body["spec"]["subtasks"][1]["activeDeadlineSeconds"] = 600
    k.apply(body, ns)
    jobs = wait_for("two RayJobs", lambda: (j := k.rayjobs(ns)) and len(j) == 2 and j)
    assert jobs["timed-long-1"]["spec"]["activeDeadlineSeconds"] == 14400
    assert jobs["timed-short-1"]["spec"]["activeDeadlineSeconds"] == 600
    assert {j["spec"]["ttlSecondsAfterFinished"] for j in jobs.values()} == {300}

    k.set_rayjob_status(ns, "timed-short-1", **RUNNING)
    k.set_rayjob_status(ns, "timed-short-1", **deadline_exceeded())
    retry = wait_for("retry", lambda: k.rayjobs(ns).get("timed-short-2"), timeout=60)
    assert retry["spec"]["activeDeadlineSeconds"] == 600  # a fresh attempt, the same bound
    short = next(s for s in k.tft(ns, "timed")["status"]["subtasks"] if s["name"] == "short")
    assert short["failureClass"] == "DeadlineExceeded"
    assert "passed the activeDeadlineSeconds" in short["message"]

    # A field the trainjob never sees: changing it relaunches nothing running, the next attempt gets it.
    body["spec"]["subtasks"][1]["activeDeadlineSeconds"] = 900
    k.apply(body, ns)
    time.sleep(4)
    assert sorted(k.rayjobs(ns)) == ["timed-long-1", "timed-short-1", "timed-short-2"]
