"""A TaskFineTune through the whole real path: `kubectl apply` -> our operator (installed with
helm) -> the real KubeRay -> Ray pods running the trainjob image -> adapters in S3.

No mock anywhere: the API server, kubelet, containerd, CoreDNS, kube-proxy, KubeRay and Ray
are the real ones, in a namespace enforcing Pod Security "restricted".
"""

from __future__ import annotations

import re
import time
from typing import Any

from tests.cluster.conftest import Cluster
from tests.cluster.harness import BUCKET, MemorySampler, TrainingData, taskfinetune, wait_for

STEP = re.compile(r"\bstep (\d+)/(\d+)\b")


def training_logs(cluster: Cluster, namespace: str) -> str:
    """The drivers' output: KubeRay's submitter Jobs follow `ray job logs`."""
    jobs = cluster.kube.get("jobs", namespace=namespace)["items"]
    return "".join(cluster.kube.logs(namespace, f"job/{j['metadata']['name']}") for j in jobs)


def test_two_subtasks_succeed_through_the_real_kuberay(
    cluster: Cluster, operator: str, namespace: str, images: dict[str, str], s3: Any, training_data: TrainingData,
) -> None:
    kube = cluster.kube
    tft = taskfinetune("reviews", namespace, data=training_data, endpoint=s3.endpoint,
                       subtasks={"sentiment": "sentiment", "sentiment-b": "sentiment-b"}, image=images["TRAINJOB_IMAGE"])
    memory = MemorySampler().start()
    t0 = time.monotonic()
    kube.apply(tft)

    def first_step() -> float | None:
        return time.monotonic() - t0 if STEP.search(training_logs(cluster, namespace)) else None

    cluster.figures["apply_to_first_step_s"] = round(wait_for("a training step in a driver log", first_step,
                                                              timeout=900, interval=2), 1)

    def done() -> dict[str, Any] | None:
        obj = kube.get("taskfinetune", "reviews", namespace)
        status = obj.get("status") or {}
        assert status.get("phase") not in ("Failed", "Invalid"), status
        return status if status.get("phase") == "Succeeded" else None

    status = wait_for("the TaskFineTune to succeed", done, timeout=1800, interval=3)
    cluster.figures["apply_to_succeeded_s"] = round(time.monotonic() - t0, 1)
    cluster.figures["peak_memory_gib"] = memory.stop()

    assert status["progress"] == "2/2", status
    assert status["succeeded"] == 2 and status["failed"] == 0
    printed = kube.run("get", "tft", "reviews", "-n", namespace)
    assert re.search(r"reviews\s+reviews\s+Succeeded\s+2/2", printed), printed

    client = s3.client()
    for sub in status["subtasks"]:
        assert sub["phase"] == "Succeeded", sub
        assert sub["attempts"] == 1, sub
        adapter = sub["adapter"]
        assert adapter.startswith(f"s3://{BUCKET}/adapters/reviews/{sub['name']}/"), adapter
        prefix = adapter.removeprefix(f"s3://{BUCKET}/").rstrip("/") + "/"
        keys = {o["Key"].removeprefix(prefix) for o in client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])}
        assert {"manifest.json", "adapter_config.json", "adapter_model.safetensors"} <= keys, keys
        # base vs adapter per sub-task, read by the operator from manifest.json
        metrics = sub["metrics"]
        assert set(metrics["base"]) == set(metrics["adapter"]) == {"accuracy"}, metrics
