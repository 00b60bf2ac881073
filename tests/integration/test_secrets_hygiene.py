"""Credentials never leak: with S3 keys set to unique marker values and the operator
logging at debug level, a whole lifecycle (launch, failure and retry, success, manifest
read, an S3 outage) shows the markers in no log line, Event, status field, ConfigMap or
RayJob. Real API server, real S3 server (SeaweedFS) with the marker keys."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.helpers import SUCCEEDED, Kubectl, OperatorProcess, failed, operator_serving, s3_serving, taskfinetune, wait_for

ACCESS = "AKIAMARKERACCESS7Q3Z"
SECRET = "marker-secret-key-4b9e1f77c2d04a6e"
MARKERS = (ACCESS, SECRET)



@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with s3_serving(tmp_path_factory.mktemp("s3"), ["adapters"], access_key=ACCESS, secret_key=SECRET) as server:
        yield server


@pytest.fixture(scope="module")
def operator(kube_env: dict[str, str], s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with operator_serving(kube_env, tmp_path_factory.mktemp("operator"), s3, KOPF_RUN_VERBOSE="true") as op:
        yield op


def test_no_marker_anywhere_after_a_lifecycle(k: Kubectl, operator: OperatorProcess, s3: Any) -> None:
    ns = k.namespace("hygiene")
    body = taskfinetune("clean", ["kw", "down"], maxParallelSubtasks=2)
    body["spec"]["storage"] = {"output": "s3://adapters/", "endpoint": s3.endpoint, "addressingStyle": "path",
                               "credentialsSecret": {"name": "s3-keys"}}
    k.apply(body, ns)
    jobs = wait_for("launch", lambda: (j := k.rayjobs(ns)) and len(j) == 2 and j)
    k.set_rayjob_status(ns, "clean-kw-1", **failed("torch.OutOfMemoryError: CUDA out of memory"))
    retry = wait_for("retry", lambda: k.rayjobs(ns).get("clean-kw-2"))
    run_id = retry["metadata"]["labels"]["anytasktune.io/run-id"]
    manifest = {"evaluation": {"base": {"f1": 0.1}, "adapter": {"f1": 0.6}, "lift": {"f1": 0.5}}}
    s3.client().put_object(Bucket="adapters", Key=f"clean/kw/{run_id}/manifest.json", Body=json.dumps(manifest).encode())
    k.set_rayjob_status(ns, "clean-kw-2", **SUCCEEDED)
    # "down"'s manifest is missing: its reads fail (NoSuchKey) and are retried and reported.
    k.set_rayjob_status(ns, "clean-down-1", **SUCCEEDED)
    wait_for("evaluation read", lambda: k.tft(ns, "clean")["status"]["subtasks"][0].get("metrics"))
    wait_for("read failure reported", lambda: "StorageUnavailable" in [e["reason"] for e in k.events(ns, "clean")])

    log = operator.log_path.read_text(errors="replace")
    assert "DEBUG" in log and "manifest" in log  # the operator really logged at debug level, S3 included
    seen = {
        "operator log": log,
        "events": json.dumps(k.json("get", "events", "-n", ns)),
        "status": json.dumps(k.tft(ns, "clean")),
        "configmaps": json.dumps(k.json("get", "configmaps", "-n", ns)),
        "rayjobs": json.dumps(list(jobs.values()) + list(k.rayjobs(ns).values())),
    }
    leaks = {where: [m for m in MARKERS if m in text] for where, text in seen.items()}
    assert leaks == {where: [] for where in seen}
    # The RayJobs reference the Secret; the kubelet resolves it, the operator never sees it.
    env = k.rayjobs(ns)["clean-kw-2"]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "s3-keys", "key": "AWS_SECRET_ACCESS_KEY"}}} in env
