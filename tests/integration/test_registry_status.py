"""Retraining only what changed, the promotion gate and the registry, on the real
control plane and a real S3 server: the real operator launches RayJobs; the test
plays each RayJob's trainjob with the trainjob's own code (settle the run identity
from the spec in its RayJob, reuse or "train" — a manifest standing in for the
adapter — record the outcome in the registry and the spec's record), then KubeRay's
Complete. The operator reads the record into the status and posts the Events."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anytasktune.render import spec_json_of
from anytasktune_contract.storage import ObjectStore, StorageSettings
from anytasktune_contract.trainspec import TrainJobSpec
from tests.integration.helpers import SUCCEEDED, Kubectl, OperatorProcess, operator_serving, s3_serving, taskfinetune, wait_for


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with s3_serving(tmp_path_factory.mktemp("s3"), ["adapters", "datasets", "models"]) as server:
        yield server


@pytest.fixture(scope="module")
def operator(kube_env: dict[str, str], s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with operator_serving(kube_env, tmp_path_factory.mktemp("operator"), s3) as op:
        yield op


@pytest.fixture(scope="module")
def store(s3: Any) -> Iterator[ObjectStore]:
    with pytest.MonkeyPatch.context() as mp:  # the trainjob's credentials: the tenant's own
        for key, value in s3.env().items():
            mp.setenv(key, value)
        yield ObjectStore(StorageSettings(s3.endpoint, "us-east-1", "path"))


def run_trainjob(k: Kubectl, store: ObjectStore, ns: str, job: str, lift: list[float]) -> dict[str, Any]:
    """What `python -m anytasktune_trainjob` (its spec from the RayJob's runtime env) does around
    training, for RayJob `job`; returns its record."""
    from anytasktune_trainjob import publish
    from anytasktune_trainjob.identity import settle

    spec = settle(TrainJobSpec.from_json(spec_json_of(k.json("get", "rayjob", job, "-n", ns))), store)
    if publish.without_training(spec, store, log=lambda _: None) is None:
        why = publish.why_trained(spec, store)
        manifest = {"runId": spec.run_id(), "specId": spec.spec_id(), "createdAt": "2026-11-25T10:00:00Z",
                    "spec": spec.model_dump(mode="json"), "baseModel": {"identity": spec.baseModel.identity()},
                    "evaluation": {"metrics": ["f1"], "samples": 16, "base": {"f1": 0.2}, "adapter": {"f1": 0.2 + sum(lift) / 2},
                                   "lift": {"f1": sum(lift) / 2}, "intervals": {"f1": {"lift": lift}}}}
        store.put_json(spec.run_prefix() + "manifest.json", manifest)
        publish.record_outcome(spec, store, spec.run_id(), manifest, "Trained", why, log=lambda _: None)
    record = publish.read_json(store, spec.spec_prefix() + "manifest.json")
    assert record is not None
    k.set_rayjob_status(ns, job, **SUCCEEDED)
    return record


def sub(k: Kubectl, ns: str, name: str) -> dict[str, Any]:
    return next((s for s in k.tft(ns, "pool").get("status", {}).get("subtasks", []) if s["name"] == name), {})


def read(k: Kubectl, ns: str, name: str, run_id: str) -> dict[str, Any]:
    """The sub-task's status once the operator has read the record of run `run_id`."""
    return wait_for(f"{name}'s record read", lambda: (s := sub(k, ns, name)).get("runId") == run_id and s.get("metrics") and s)


def reasons(k: Kubectl, ns: str) -> list[str]:
    return [e["reason"] for e in k.events(ns, "pool")]


def test_outcomes_promotion_and_retraining_only_what_changed(k: Kubectl, operator: OperatorProcess, s3: Any,
                                                             store: ObjectStore, kube_env: dict[str, str]) -> None:
    ns = k.namespace("registry")
    client = s3.client()
    client.put_object(Bucket="models", Key="base/config.json", Body=b"{}")
    for name in ("kw", "risk"):
        client.put_object(Bucket="datasets", Key=f"{name}.jsonl", Body=f'{{"input": "{name}", "output": "x"}}\n'.encode())
    body = taskfinetune("pool", ["kw", "risk"], maxParallelSubtasks=2)
    body["spec"]["storage"] = {"output": "s3://adapters/", "endpoint": s3.endpoint, "addressingStyle": "path"}
    body["spec"]["subtasks"][1]["evaluation"] = {"minLift": 0.1}  # risk must clear +0.1 with 95% confidence
    k.apply(body, ns)
    wait_for("two RayJobs", lambda: sorted(k.rayjobs(ns)) == ["pool-kw-1", "pool-risk-1"])

    # Both finish at once: both land in the registry (compare-and-swap on the real server).
    records: dict[str, dict[str, Any]] = {}
    threads = [threading.Thread(target=lambda j=j, lift=lift: records.update({j: run_trainjob(k, store, ns, j, lift)}))
               for j, lift in (("pool-kw-1", [0.2, 0.6]), ("pool-risk-1", [0.02, 0.5]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kw = read(k, ns, "kw", records["pool-kw-1"]["runId"])
    assert (kw["outcome"], kw["outcomeReason"], kw["promoted"]) == ("Trained", "first run of this sub-task", True)
    assert kw["metrics"]["intervals"]["f1"]["lift"] == [0.2, 0.6] and kw["metrics"]["verdict"] == "adapter wins"
    assert kw["adapter"] == f"s3://adapters/pool/kw/runs/{kw['runId']}/" and kw["specId"] != kw["runId"]
    risk = read(k, ns, "risk", records["pool-risk-1"]["runId"])
    assert risk["phase"] == "Succeeded" and risk["reason"] == "NotPromoted" and risk["promoted"] is False
    assert "95% CI +0.020..+0.500), lower bound not above minLift 0.1; active: none" in risk["message"]
    events = wait_for("promotion events", lambda: (r := reasons(k, ns)) and {"Promoted", "NotPromoted"} <= set(r) and r)
    assert events.count("Promoted") == 1 and events.count("NotPromoted") == 1
    table = subprocess.run([sys.executable, "-m", "anytasktune.cli", "status", "-n", ns], env=kube_env,
                           capture_output=True, text=True, timeout=60).stdout.splitlines()
    assert table[0].split()[:5] == ["TASKFINETUNE", "SUBTASK", "PHASE", "ATTEMPTS", "RUN"]
    rows = {line.split()[1]: line for line in table[1:]}
    assert f"trained {kw['runId']}" in rows["kw"] and "active" in rows["kw"]
    assert "not promoted" in rows["risk"] and "accuracy" not in rows["risk"] and "[+0.02,+0.50]" in rows["risk"]
    registry = publish_registry(store)
    assert registry["subtasks"]["kw"]["active"]["runId"] == kw["runId"]
    assert registry["subtasks"]["risk"].get("active") is None and len(registry["subtasks"]["risk"]["runs"]) == 1

    # The same YAML again: nothing launched.
    k.apply(body, ns)
    wait_for("resyncs", lambda: k.tft(ns, "pool")["status"]["observedGeneration"] == 1, timeout=10)
    time.sleep(5)  # more than two resyncs
    assert sorted(k.rayjobs(ns)) == ["pool-kw-1", "pool-risk-1"]

    # One sub-task edited: exactly that one relaunches and trains.
    body["spec"]["subtasks"][1]["lora"] = {"r": 32}
    k.apply(body, ns)
    wait_for("risk relaunched", lambda: sorted(k.rayjobs(ns)) == ["pool-kw-1", "pool-risk-1", "pool-risk-2"])
    second = run_trainjob(k, store, ns, "pool-risk-2", [0.2, 0.5])
    risk = read(k, ns, "risk", second["runId"])
    assert (risk["outcome"], risk["outcomeReason"], risk["promoted"]) == ("Trained", "spec changed: lora.r", True)

    # One dataset object replaced at the same URI; its revision bumped: exactly that sub-task retrains.
    client.put_object(Bucket="datasets", Key="kw.jsonl", Body=b'{"input": "kw", "output": "new"}\n')
    body["spec"]["subtasks"][0]["dataset"]["revision"] = "2026-11-25"
    k.apply(body, ns)
    wait_for("kw relaunched", lambda: "pool-kw-2" in k.rayjobs(ns))
    third = run_trainjob(k, store, ns, "pool-kw-2", [0.3, 0.7])
    kw2 = read(k, ns, "kw", third["runId"])
    assert kw2["outcome"] == "Trained" and kw2["outcomeReason"].startswith("dataset content changed (etag:")
    assert kw2["specId"] != kw["specId"] and kw2["runId"] != kw["runId"]

    # A revision bumped with nothing replaced: relaunched, reused, nothing trained.
    body["spec"]["subtasks"][1]["dataset"]["revision"] = "check"
    k.apply(body, ns)
    wait_for("risk check launched", lambda: "pool-risk-3" in k.rayjobs(ns))
    fourth = run_trainjob(k, store, ns, "pool-risk-3", [0.0, 0.0])
    assert fourth["outcome"] == "Reused" and fourth["runId"] == second["runId"]
    risk = wait_for("reused", lambda: (s := sub(k, ns, "risk")).get("outcome") == "Reused" and s)
    assert "already published" in risk["outcomeReason"]
    wait_for("Reused event", lambda: "Reused" in reasons(k, ns))

    # Rollback: pin kw to its first run.
    body["spec"]["subtasks"][0]["pin"] = kw["runId"]
    k.apply(body, ns)
    wait_for("kw pin launched", lambda: "pool-kw-3" in k.rayjobs(ns))
    fifth = run_trainjob(k, store, ns, "pool-kw-3", [0.0, 0.0])
    assert fifth["outcome"] == "Pinned"
    kw3 = wait_for("pinned", lambda: (s := sub(k, ns, "kw")).get("outcome") == "Pinned" and s)
    assert kw3["runId"] == kw["runId"] and kw3["activeRunId"] == kw["runId"]
    assert publish_registry(store)["subtasks"]["kw"]["active"]["reason"] == "Pinned"
    assert sorted(k.rayjobs(ns)) == ["pool-kw-1", "pool-kw-2", "pool-kw-3", "pool-risk-1", "pool-risk-2", "pool-risk-3"]


def publish_registry(store: ObjectStore) -> dict[str, Any]:
    from anytasktune_trainjob import registry

    doc, _ = registry.read(store, "s3://adapters/pool/index.json")
    assert doc is not None
    return doc


def test_a_general_model_is_compared_and_its_failure_fails_nothing(k: Kubectl, operator: OperatorProcess, s3: Any,
                                                                    store: ObjectStore) -> None:
    """compareWith: the key reaches the RayJob's head by secretKeyRef only; the trainjob
    asks the endpoint (a real HTTP server speaking /v1/chat/completions) with the same
    prompts; the status shows the general model beside base and adapter; an endpoint that
    refuses the key leaves the sub-task Succeeded with the comparison marked Failed."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
    from chatserver import ChatServer

    from anytasktune_trainjob import publish
    from anytasktune_trainjob.compare import compared
    from anytasktune_trainjob.identity import settle

    ns = k.namespace("general")
    client = s3.client()
    client.put_object(Bucket="models", Key="base/config.json", Body=b"{}")
    with ChatServer(lambda messages, _: "positive", api_key="sk-right") as good, \
            ChatServer(lambda messages, _: "positive", api_key="sk-other") as refusing:
        body = taskfinetune("gen", ["ok", "refused"], maxParallelSubtasks=2)
        body["spec"]["storage"] = {"output": "s3://adapters/", "endpoint": s3.endpoint, "addressingStyle": "path"}
        for i, server in enumerate((good, refusing)):
            client.put_object(Bucket="datasets", Key=f"gen{i}.jsonl", Body=b"x\n")
            body["spec"]["subtasks"][i]["dataset"]["uri"] = f"s3://datasets/gen{i}.jsonl"
            body["spec"]["subtasks"][i]["evaluation"] = {"compareWith": {
                "endpoint": server.url, "model": "general-7b", "maxRetries": 1,
                "apiKeySecret": {"name": "general-model", "key": "api-key"}}}
        k.apply(body, ns)
        jobs = wait_for("two RayJobs", lambda: (j := k.rayjobs(ns)) and len(j) == 2 and j)
        cluster = jobs["gen-ok-1"]["spec"]["rayClusterSpec"]
        head_env = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
        assert {"name": "ANYTASKTUNE_COMPARE_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": "general-model", "key": "api-key"}}} in head_env
        assert "ANYTASKTUNE_COMPARE_API_KEY" not in str(cluster["workerGroupSpecs"])

        held = {"messages": [[{"role": "user", "content": f"review {i}"}] for i in range(4)],
                "references": ["positive", "negative", "positive", "positive"], "keys": ["k"] * 4}
        for job, key in (("gen-ok-1", "sk-right"), ("gen-refused-1", "sk-right")):
            spec = settle(TrainJobSpec.from_json(spec_json_of(k.json("get", "rayjob", job, "-n", ns))), store)
            evaluation = {"metrics": ["accuracy"], "samples": 4, "base": {"accuracy": 0.25}, "adapter": {"accuracy": 0.75},
                          "lift": {"accuracy": 0.5}, "classLabels": ["positive", "negative"],
                          "perRecord": {"accuracy": {"base": [0.0, 1.0, 0.0, 0.0], "adapter": [1.0, 0.0, 1.0, 1.0]}}}
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv("ANYTASKTUNE_COMPARE_API_KEY", key)  # what the secretKeyRef puts in the head
                evaluation = compared(spec, evaluation, held, log=lambda _: None)
            manifest = {"runId": spec.run_id(), "spec": spec.model_dump(mode="json"), "evaluation": evaluation}
            store.put_json(spec.run_prefix() + "manifest.json", manifest)
            publish.record_outcome(spec, store, spec.run_id(), manifest, "Trained", "first run", log=lambda _: None)
            k.set_rayjob_status(ns, job, **SUCCEEDED)
        assert sorted(str(r["body"]["messages"]) for r in good.requests) == sorted(str(m) for m in held["messages"])

    def status(name: str) -> dict[str, Any]:
        return wait_for(f"{name} read", lambda: (s := next((x for x in k.tft(ns, "gen").get("status", {}).get("subtasks", [])
                                                             if x["name"] == name), {})).get("metrics") and s)

    ok, refused = status("ok"), status("refused")
    assert ok["metrics"]["general"] == {"accuracy": 0.75} and ok["metrics"]["comparison"] == "Succeeded"
    assert ok["metrics"]["generalModel"] == "general-7b" and "liftOverGeneral" in ok["metrics"]["intervals"]["accuracy"]
    assert "general model general-7b 0.750" in ok["message"]
    assert refused["phase"] == "Succeeded" and refused["metrics"]["comparison"].startswith("Failed: ")
    assert "HTTP 401" in refused["metrics"]["comparison"] and "not compared" in refused["message"]
    assert k.tft(ns, "gen")["status"]["phase"] == "Succeeded"
