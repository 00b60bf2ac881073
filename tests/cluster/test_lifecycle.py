"""A TaskFineTune's life on the real cluster beyond the happy path: a broken dataset, deletion,
suspend and resume with the operator restarted in between, a Ray pod deleted mid-training.

Everything is real (API server, kubelet, containerd, KubeRay v1.4.2, Ray, the operator installed
with helm, a Pod Security "restricted" namespace); nothing here writes a RayJob status.
Figures (steps lost, seconds) go into the tier's figures file next to test_pool's.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.cluster.conftest import OPERATOR_NAMESPACE, Cluster
from tests.cluster.harness import STEP, TrainingData, status_of, taskfinetune, training_logs, wait_finished, wait_for

pytestmark = pytest.mark.timeout(1800)
LONG_RUN_STEPS = 120  # long enough that a suspend or a pod loss lands mid-training on a fast machine
RESUMED = re.compile(r"resumed from checkpoint at step (\d+)/(\d+)")


def items(cluster: Cluster, kind: str, namespace: str, *selector: str) -> list[str]:
    """Names of the objects of a kind in the namespace (with a label selector if given)."""
    args = ["-l", ",".join(selector)] if selector else []
    return cluster.kube.run("get", kind, "-n", namespace, *args, "-o", "name", check=False).split()


def last_step(cluster: Cluster, namespace: str) -> int:
    return max((int(m.group(1)) for m in STEP.finditer(training_logs(cluster.kube, namespace))), default=0)


def test_a_broken_dataset_fails_alone_and_deletion_removes_everything(
    cluster: Cluster, operator: str, namespace: str, images: dict[str, str], s3: Any, training_data: TrainingData,
) -> None:
    kube = cluster.kube
    tft = taskfinetune("mixed", namespace, data=training_data, endpoint=s3.endpoint,
                       subtasks={"sentiment": "sentiment", "broken": "broken"}, image=images["TRAINJOB_IMAGE"])
    kube.apply(tft)
    final = wait_finished(cluster.kube, "mixed", namespace)
    by_name = {s["name"]: s for s in final["subtasks"]}
    broken, good = by_name["broken"], by_name["sentiment"]
    assert good["phase"] == "Succeeded", good  # the other sub-task is not stopped
    assert broken["phase"] == "Failed", broken
    assert broken["failureClass"] == "DataContract", broken
    assert broken["attempts"] == 1, broken  # bad data is not retried
    # the file and the line (the 41st: 40 good records, then a cut one)
    assert "broken.jsonl" in broken["message"] and re.search(r"line 41\b|:41\b", broken["message"]), broken["message"]
    rayjobs = items(cluster, "rayjobs", namespace)
    assert len(rayjobs) == 2, rayjobs  # one attempt each, nothing relaunched

    t0 = time.monotonic()
    kube.run("delete", "taskfinetune", "mixed", "-n", namespace, "--wait=true", timeout=300)

    def leftovers() -> dict[str, list[str]]:
        return {kind: names for kind in ("rayjobs", "rayclusters", "pods", "jobs", "services")
                if (names := items(cluster, kind, namespace))} | (
            {"configmaps": cms} if (cms := items(cluster, "configmaps", namespace, "app.kubernetes.io/managed-by")) else {})

    wait_for("the TaskFineTune's children to be gone", lambda: not leftovers() or None, timeout=300, interval=2)
    cluster.figures["delete_to_nothing_left_s"] = round(time.monotonic() - t0, 1)


def test_suspend_resume_with_the_operator_restarted_between(
    cluster: Cluster, operator: str, namespace: str, images: dict[str, str], s3: Any, training_data: TrainingData,
) -> None:
    kube = cluster.kube
    tft = taskfinetune("pausing", namespace, data=training_data, endpoint=s3.endpoint, subtasks={"sentiment": "sentiment"},
                       image=images["TRAINJOB_IMAGE"], max_steps=LONG_RUN_STEPS, epochs=20)
    kube.apply(tft)
    # Suspend once a checkpoint (every 4 steps) is surely in S3.
    reached = wait_for("step 6 in the driver log", lambda: (n := last_step(cluster, namespace)) >= 6 and n or None,
                       timeout=900, interval=2)
    kube.run("patch", "taskfinetune", "pausing", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    t_suspend = time.monotonic()

    def released() -> bool | None:
        nonlocal reached  # training goes on until KubeRay deletes the cluster (and the submitter's log)
        reached = max(reached, last_step(cluster, namespace))
        return status_of(cluster.kube, "pausing", namespace).get("phase") == "Suspended" and \
            not items(cluster, "rayclusters", namespace) and not items(cluster, "pods", namespace) or None

    wait_for("the pool Suspended, its Ray cluster and pods gone", released, timeout=300, interval=2)
    cluster.figures["suspend_to_released_s"] = round(time.monotonic() - t_suspend, 1)
    rayjobs_before = items(cluster, "rayjobs", namespace)

    # The operator's pod is deleted while the pool is suspended; its Deployment starts another.
    kube.run("delete", "pod", "-n", OPERATOR_NAMESPACE, "-l", "app.kubernetes.io/component=operator", "--wait=true")
    kube.run("rollout", "status", "deploy/anytasktune", "-n", OPERATOR_NAMESPACE, "--timeout=180s", timeout=200)
    kube.run("patch", "taskfinetune", "pausing", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')

    final = wait_finished(cluster.kube, "pausing", namespace)
    assert final["phase"] == "Succeeded", final
    sub = final["subtasks"][0]
    assert sub["attempts"] == 1, sub  # resumed, not relaunched
    assert items(cluster, "rayjobs", namespace) == rayjobs_before  # no duplicate RayJob
    resumed = [int(m.group(1)) for m in RESUMED.finditer(training_logs(cluster.kube, namespace))]
    assert resumed, "the resumed run did not start from its S3 checkpoint"
    assert 4 <= resumed[-1] < LONG_RUN_STEPS, resumed  # from a checkpoint, and mid-training
    # Steps lost: at most the checkpoint interval; the exact count is not observable here, as
    # KubeRay deletes the submitter Job (the driver's log) with the cluster.
    cluster.figures["suspend"] = {"last_step_logged": reached, "resumed_at": resumed[-1], "total": LONG_RUN_STEPS}


def test_a_ray_worker_pod_deleted_mid_training(
    cluster: Cluster, operator: str, namespace: str, images: dict[str, str], s3: Any, training_data: TrainingData,
) -> None:
    """KubeRay v1.4.2 and Ray Train recover a deleted worker inside the attempt (recorded in
    tests/fixtures/kuberay/worker_deleted.json): Ray Train restarts the worker group on the new
    pod from the last checkpoint. The attempt succeeds; what is lost is the steps since it."""
    kube = cluster.kube
    tft = taskfinetune("podloss", namespace, data=training_data, endpoint=s3.endpoint, subtasks={"sentiment": "sentiment"},
                       image=images["TRAINJOB_IMAGE"], max_steps=LONG_RUN_STEPS, epochs=20)
    kube.apply(tft)
    wait_for("step 6 in the driver log", lambda: last_step(cluster, namespace) >= 6 or None, timeout=900, interval=2)
    role = "worker"
    pods = items(cluster, "pods", namespace, f"ray.io/node-type={role}")
    assert pods, f"no {role} pod"
    reached = last_step(cluster, namespace)
    kube.run("delete", "-n", namespace, "--wait=false", *pods)
    # The run goes on until Ray notices the node is gone: the last step the old worker logged.
    def resumed_line() -> re.Match[str] | None:
        nonlocal reached
        logs = training_logs(cluster.kube, namespace)
        found = RESUMED.search(logs)
        if not found:
            reached = max([reached, *(int(m.group(1)) for m in STEP.finditer(logs))])
        return found

    wait_for("the restarted worker to resume", resumed_line, timeout=900, interval=2)
    final = wait_finished(cluster.kube, "podloss", namespace)
    assert final["phase"] == "Succeeded", final
    sub = final["subtasks"][0]
    resumed = [int(m.group(1)) for m in RESUMED.finditer(training_logs(cluster.kube, namespace))]
    assert resumed, "the restarted worker did not resume from a checkpoint"
    assert resumed[-1] < LONG_RUN_STEPS, resumed
    cluster.figures["worker_pod_deleted"] = {"attempts": sub["attempts"], "last_step_logged": reached,
                                             "resumed_at": resumed[-1], "steps_lost": max(0, reached - resumed[-1])}
