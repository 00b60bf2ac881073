"""A TaskFineTune through the whole real path: `kubectl apply` -> our operator (installed with
helm) -> the real KubeRay -> Ray pods running the trainjob image -> adapters in S3; a broken
dataset failing alone; `kubectl delete` removing every child.

No mock anywhere: the API server, kubelet, containerd, CoreDNS, kube-proxy, KubeRay and Ray
are the real ones, in a namespace enforcing Pod Security "restricted".
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.cluster.conftest import Cluster
from tests.cluster.harness import (
    BUCKET,
    FINISHED,
    STEP,
    MemorySampler,
    TrainingData,
    items,
    status_of,
    taskfinetune,
    training_logs,
    wait_finished,
    wait_for,
)

# The session fixtures build what is missing (Go binaries, images: up to ~40 min cold on
# 2 cores) within the first test's time.
pytestmark = pytest.mark.timeout(7200)

def test_a_pool_trains_through_the_real_kuberay_a_broken_dataset_fails_alone_and_deletion_removes_everything(
    cluster: Cluster, operator: str, namespace: str, images: dict[str, str], s3: Any, training_data: TrainingData,
) -> None:
    """Three sub-tasks, two at a time: two train and succeed (adapters, manifests and scores
    in S3 and in the status), one whose dataset has a cut line fails alone, with the file and
    the line, and is not retried. Then `kubectl delete` leaves nothing of it behind."""
    kube = cluster.kube
    tft = taskfinetune("reviews", namespace, data=training_data, endpoint=s3.endpoint, image=images["TRAINJOB_IMAGE"],
                       subtasks={"broken": "broken", "sentiment": "sentiment", "sentiment-b": "sentiment-b"})
    memory = MemorySampler().start()
    t0 = time.monotonic()
    kube.apply(tft)

    def first_step() -> float | str | None:
        if status_of(kube, "reviews", namespace).get("phase") in FINISHED:
            return "finished before any step"
        return time.monotonic() - t0 if STEP.search(training_logs(kube, namespace)) else None

    first = wait_for("a training step in a driver log", first_step, timeout=900, interval=2)
    cluster.figures["apply_to_first_step_s"] = round(first, 1) if isinstance(first, float) else first

    wait_finished(kube, "reviews", namespace, timeout=1800)

    # The operator reads each run's record off the reconcile pass once its RayJob has
    # succeeded (README: What the operator does): the adapter and scores follow shortly.
    def with_results() -> dict[str, Any] | None:
        now = status_of(kube, "reviews", namespace)
        done = [sub for sub in now.get("subtasks", []) if sub.get("phase") == "Succeeded"]
        return now if len(done) == 2 and all(sub.get("adapter") and sub.get("metrics") for sub in done) else None

    final = wait_for("the two good sub-tasks' adapters and scores in the status", with_results, timeout=300,
                     interval=2)
    cluster.figures["apply_to_finished_s"] = round(time.monotonic() - t0, 1)
    cluster.figures["peak_memory_gib"] = memory.stop()

    # One sub-task failed, so the pool did: 2 of 3 succeeded.
    assert final["phase"] == "Failed", final
    assert final["progress"] == "2/3", final
    assert final["succeeded"] == 2 and final["failed"] == 1
    printed = kube.run("get", "tft", "reviews", "-n", namespace)
    assert re.search(r"reviews\s+reviews\s+Failed\s+2/3", printed), printed

    by_name = {s["name"]: s for s in final["subtasks"]}
    broken = by_name.pop("broken")
    assert broken["phase"] == "Failed", broken
    assert broken["failureClass"] == "DataContract", broken
    assert broken["attempts"] == 1, broken  # bad data is not retried
    # the file and the line (the 41st: 40 good records, then a cut one)
    assert "broken.jsonl" in broken["message"] and re.search(r"line 41\b|:41\b", broken["message"]), broken["message"]
    rayjobs = items(kube, "rayjobs", namespace)
    assert len(rayjobs) == 3, rayjobs  # one attempt each, nothing relaunched

    client = s3.client()
    for sub in by_name.values():  # the good ones were not stopped by the broken one
        assert sub["phase"] == "Succeeded", sub
        assert sub["attempts"] == 1, sub
        prefix = f"adapters/reviews/{sub['name']}/"
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}
        assert any(k.endswith("/manifest.json") for k in keys), sorted(keys)
        adapter = sub.get("adapter") or ""
        assert adapter.startswith(f"s3://{BUCKET}/{prefix}"), sub
        run = adapter.removeprefix(f"s3://{BUCKET}/").rstrip("/")
        assert {f"{run}/adapter_config.json", f"{run}/adapter_model.safetensors"} <= keys, sorted(keys)
        # base vs adapter per sub-task, read by the operator from the run's manifest
        metrics = sub.get("metrics") or {}
        assert "accuracy" in metrics.get("base", {}) and "accuracy" in metrics.get("adapter", {}), sub

    t_delete = time.monotonic()
    kube.run("delete", "taskfinetune", "reviews", "-n", namespace, "--wait=true", timeout=300)

    def leftovers() -> dict[str, list[str]]:
        return {kind: names for kind in ("rayjobs", "rayclusters", "pods", "jobs", "services")
                if (names := items(kube, kind, namespace))} | (
            {"configmaps": cms} if (cms := items(kube, "configmaps", namespace, "app.kubernetes.io/managed-by")) else {})

    wait_for("the TaskFineTune's children to be gone", lambda: not leftovers() or None, timeout=300, interval=2)
    cluster.figures["delete_to_nothing_left_s"] = round(time.monotonic() - t_delete, 1)
