"""The operator end to end against a real kube-apiserver, KubeRay's CRDs and the
garbage collector of a real kube-controller-manager. RayJob status is driven by the
test, the way KubeRay would drive it (no kubelet or KubeRay controller runs here)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anytasktune.render import spec_json_of
from anytasktune_contract.failures import FailureClass, failure_line
from tests.integration.helpers import (
    RUNNING,
    SUCCEEDED,
    Kubectl,
    OperatorProcess,
    announcements,
    failed,
    metrics_text,
    operator_serving,
    s3_serving,
    taskfinetune,
    wait_for,
)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3 server (SeaweedFS) holding adapter manifests."""
    with s3_serving(tmp_path_factory.mktemp("s3"), ["adapters"]) as server:
        yield server


@pytest.fixture(scope="module")
def operator(kube_env: dict[str, str], s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    with operator_serving(kube_env, tmp_path_factory.mktemp("operator"), s3) as op:
        yield op


def held_reads(operator: OperatorProcess) -> float:
    """Manifest reads the operator failed unsent (`anytasktune_manifest_reads_held_total`)."""
    return sum(float(line.split()[-1]) for line in metrics_text(operator.metrics_port).splitlines()
               if line.startswith("anytasktune_manifest_reads_held_total "))


def subtask_status(tft: dict[str, Any], name: str) -> dict[str, Any]:
    for s in tft.get("status", {}).get("subtasks", []):
        if s["name"] == name:
            return s  # type: ignore[no-any-return]
    raise AssertionError(f"no status for sub-task {name} yet")  # wait_for retries on this


def reasons(k: Kubectl, ns: str, name: str) -> list[str]:
    return [e["reason"] for e in k.events(ns, name)]


def condition(tft: dict[str, Any], type_: str) -> tuple[str, str]:
    c = next(c for c in tft["status"]["conditions"] if c["type"] == type_)
    return c["status"], c["reason"]


def test_lifecycle_parallelism_success_retry_and_backoff(k: Kubectl, operator: OperatorProcess) -> None:
    ns = k.namespace("lifecycle")
    k.apply(taskfinetune("pool", ["alpha", "beta", "gamma"], maxParallelSubtasks=2, backoffLimit=1), ns)

    # Launch: two RayJobs, in spec order; the third waits for a slot.
    jobs = wait_for("two RayJobs", lambda: (j := k.rayjobs(ns)) and len(j) == 2 and j)
    assert sorted(jobs) == ["pool-alpha-1", "pool-beta-1"]
    time.sleep(3)  # more than one resync: still no third launch
    assert sorted(k.rayjobs(ns)) == ["pool-alpha-1", "pool-beta-1"]
    tft = wait_for("status", lambda: (t := k.tft(ns, "pool")).get("status", {}).get("phase") == "Running" and t)
    assert tft["status"]["progress"] == "0/3"
    assert subtask_status(tft, "gamma")["phase"] == "Pending"
    assert "waiting" in subtask_status(tft, "gamma")["message"]
    assert condition(tft, "Progressing") == ("True", "Training")
    assert json.loads(spec_json_of(jobs["pool-alpha-1"]))["subtask"] == "alpha"  # the spec rides in the RayJob
    assert k.json("get", "configmaps", "-n", ns, "-l", "app.kubernetes.io/managed-by=anytasktune")["items"] == []  # and nothing else
    owner = jobs["pool-alpha-1"]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "TaskFineTune" and owner["uid"] == tft["metadata"]["uid"] and owner["controller"] is True

    # alpha runs and succeeds: its slot goes to gamma.
    k.set_rayjob_status(ns, "pool-alpha-1", **RUNNING)
    wait_for("alpha Running", lambda: subtask_status(k.tft(ns, "pool"), "alpha")["phase"] == "Running")
    k.set_rayjob_status(ns, "pool-alpha-1", **SUCCEEDED)
    wait_for("gamma launched", lambda: "pool-gamma-1" in k.rayjobs(ns))
    tft = k.tft(ns, "pool")
    assert subtask_status(tft, "alpha")["phase"] == "Succeeded"
    # where its adapter is (runs/<run id>/) is in the trainjob's record, unreadable here (no S3 at this endpoint)
    assert "adapter" not in subtask_status(tft, "alpha") and subtask_status(tft, "alpha")["specId"]
    assert tft["status"]["progress"] == "1/3"

    # beta fails (out of memory): retried with a new RayJob after the backoff.
    k.set_rayjob_status(ns, "pool-beta-1", **failed("Job entrypoint command failed\ntorch.OutOfMemoryError: CUDA out of memory"))
    wait_for("beta retried", lambda: "pool-beta-2" in k.rayjobs(ns))
    beta = subtask_status(k.tft(ns, "pool"), "beta")
    assert beta["attempts"] == 2 and beta["rayJob"] == "pool-beta-2" and beta["failureClass"] == "OutOfMemory"

    # beta fails again: backoffLimit 1 is exhausted, beta is Failed; gamma goes on.
    k.set_rayjob_status(ns, "pool-beta-2", **failed("segmentation fault"))
    wait_for("beta Failed", lambda: subtask_status(k.tft(ns, "pool"), "beta")["phase"] == "Failed")
    assert "backoff limit 1 exceeded" in subtask_status(k.tft(ns, "pool"), "beta")["message"]
    assert "pool-beta-3" not in k.rayjobs(ns)
    assert condition(k.tft(ns, "pool"), "Degraded") == ("True", "SubtaskFailed")
    assert k.tft(ns, "pool")["status"]["phase"] == "Running"

    k.set_rayjob_status(ns, "pool-gamma-1", **SUCCEEDED)
    tft = wait_for("pool finished", lambda: (t := k.tft(ns, "pool"))["status"]["phase"] == "Failed" and t)
    assert tft["status"]["progress"] == "2/3"
    assert condition(tft, "Succeeded") == ("False", "SubtasksFailed")
    assert condition(tft, "Progressing") == ("False", "Completed")
    assert all(c["observedGeneration"] == tft["metadata"]["generation"] for c in tft["status"]["conditions"])
    seen = wait_for("events", lambda: (r := reasons(k, ns, "pool")) and "CompletedWithFailures" in r and r)
    for reason in ("Launched", "Retrying", "SubtaskSucceeded", "SubtaskFailed", "CompletedWithFailures"):
        assert reason in seen, seen

    # Finished and quiet: the status is not rewritten on every resync.
    version = k.tft(ns, "pool")["metadata"]["resourceVersion"]
    time.sleep(5)
    assert k.tft(ns, "pool")["metadata"]["resourceVersion"] == version

    metrics = metrics_text(operator.metrics_port)
    assert 'anytasktune_retries_total{failure_class="OutOfMemory"} 1.0' in metrics
    assert 'anytasktune_subtasks{namespace="lifecycle",phase="Failed",taskfinetune="pool"} 1.0' in metrics


def test_bad_data_is_not_retried(k: Kubectl, operator: OperatorProcess) -> None:
    ns = k.namespace("baddata")
    k.apply(taskfinetune("data", ["kw"], backoffLimit=3), ns)
    wait_for("launch", lambda: "data-kw-1" in k.rayjobs(ns))
    message = "Job entrypoint command failed with exit code 3, last available logs:\n" + failure_line(
        FailureClass.DataContract, "s3://datasets/kw.jsonl:12: field 'output' is empty"
    )
    k.set_rayjob_status(ns, "data-kw-1", **failed(message))
    kw = wait_for("kw Failed", lambda: (s := subtask_status(k.tft(ns, "data"), "kw"))["phase"] == "Failed" and s)
    assert kw["failureClass"] == "DataContract" and "kw.jsonl:12" in kw["message"]
    time.sleep(3)
    assert list(k.rayjobs(ns)) == ["data-kw-1"]


def test_suspend_and_resume(k: Kubectl, operator: OperatorProcess) -> None:
    ns = k.namespace("suspend")
    k.apply(taskfinetune("pausable", ["one", "two"], maxParallelSubtasks=1), ns)
    wait_for("launch", lambda: "pausable-one-1" in k.rayjobs(ns))
    k.set_rayjob_status(ns, "pausable-one-1", **RUNNING)

    k.run("patch", "tft", "pausable", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for("RayJob suspended", lambda: k.rayjobs(ns)["pausable-one-1"]["spec"].get("suspend") is True)
    tft = wait_for("Suspended", lambda: (t := k.tft(ns, "pausable"))["status"]["phase"] == "Suspended" and t)
    assert condition(tft, "Suspended") == ("True", "Suspended")
    k.set_rayjob_status(ns, "pausable-one-1", jobDeploymentStatus="Suspended", jobStatus="STOPPED")
    time.sleep(3)
    assert list(k.rayjobs(ns)) == ["pausable-one-1"]  # nothing new launched while suspended

    k.run("patch", "tft", "pausable", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_for("RayJob resumed", lambda: k.rayjobs(ns)["pausable-one-1"]["spec"].get("suspend") is False)
    wait_for("Resumed event", lambda: "Resumed" in reasons(k, ns, "pausable"))


SHARED = {"mode": "Shared", "workers": 1, "gpusPerWorker": 1}


def test_shared_cluster_mode_runs_the_pool_on_one_raycluster_removed_when_done(k: Kubectl, operator: OperatorProcess) -> None:
    ns = k.namespace("shared")
    k.apply(taskfinetune("pool", ["one", "two", "three"], maxParallelSubtasks=2, cluster=SHARED), ns)
    wait_for("the shared RayCluster", lambda: k.rayclusters(ns) == ["pool-ray"])
    jobs = wait_for("two RayJobs", lambda: len(j := k.rayjobs(ns)) == 2 and j)
    assert {n: j["spec"]["clusterSelector"] for n, j in jobs.items()} == {
        "pool-one-1": {"ray.io/cluster": "pool-ray"}, "pool-two-1": {"ray.io/cluster": "pool-ray"}}
    cluster = k.json("get", "raycluster", "pool-ray", "-n", ns)
    assert cluster["spec"]["workerGroupSpecs"][0]["replicas"] == 2  # 1 worker x 2 sub-tasks at once

    crash = failure_line(FailureClass.DataContract, "s3://datasets/one.jsonl:3: field 'output' is empty")
    k.set_rayjob_status(ns, "pool-one-1", **failed(crash))  # one sub-task fails for good
    k.set_rayjob_status(ns, "pool-two-1", **SUCCEEDED)
    wait_for("the third on the same cluster", lambda: "pool-three-1" in k.rayjobs(ns))
    assert k.rayclusters(ns) == ["pool-ray"]  # a sub-task's failure leaves the others' cluster up
    k.set_rayjob_status(ns, "pool-three-1", **SUCCEEDED)
    wait_for("the RayCluster deleted when the pool is done", lambda: k.rayclusters(ns) == [], timeout=30)
    tft = k.tft(ns, "pool")
    assert (tft["status"]["succeeded"], tft["status"]["failed"]) == (2, 1)
    assert {"ClusterCreated", "ClusterDeleted"} <= set(reasons(k, ns, "pool"))


def test_suspending_a_shared_pool_deletes_its_attempts_then_its_cluster(k: Kubectl, operator: OperatorProcess) -> None:
    ns = k.namespace("shared-suspend")
    k.apply(taskfinetune("paused", ["one"], cluster=SHARED), ns)
    wait_for("launch", lambda: "paused-one-1" in k.rayjobs(ns) and k.rayclusters(ns) == ["paused-ray"])
    k.set_rayjob_status(ns, "paused-one-1", **RUNNING)
    k.run("patch", "tft", "paused", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    # KubeRay refuses spec.suspend on a RayJob with a clusterSelector: the attempt is deleted instead.
    wait_for("attempt and cluster gone", lambda: not k.rayjobs(ns) and not k.rayclusters(ns), timeout=30)
    wait_for("Suspended", lambda: k.tft(ns, "paused")["status"]["phase"] == "Suspended")
    k.run("patch", "tft", "paused", "-n", ns, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    # The deleted attempt left no RayJob to count: the new one may take its name again (it
    # resumes from the checkpoint in S3, not from anything the old RayJob held).
    wait_for("a new attempt on a new cluster", lambda: list(k.rayjobs(ns)) == ["paused-one-1"] and k.rayclusters(ns) == ["paused-ray"])


def test_spec_update_supersedes_the_running_attempt(k: Kubectl, operator: OperatorProcess) -> None:
    ns = k.namespace("update")
    k.apply(taskfinetune("evolving", ["kw"]), ns)
    first = wait_for("launch", lambda: k.rayjobs(ns).get("evolving-kw-1"))
    k.set_rayjob_status(ns, "evolving-kw-1", **RUNNING)
    changed = taskfinetune("evolving", ["kw"])
    changed["spec"]["subtasks"][0]["lora"] = {"r": 64}
    k.apply(changed, ns)
    jobs = wait_for("relaunch", lambda: (j := k.rayjobs(ns)) and "evolving-kw-1" not in j and "evolving-kw-2" in j and j)
    new = jobs["evolving-kw-2"]["metadata"]["labels"]["anytasktune.io/run-id"]
    assert new != first["metadata"]["labels"]["anytasktune.io/run-id"]
    tft = wait_for("status follows", lambda: (t := k.tft(ns, "evolving"))["status"]["observedGeneration"] == 2 and t)
    assert subtask_status(tft, "kw")["specId"] == new  # the label carries the spec id; the run id comes from the trainjob
    assert '"r": 64' in spec_json_of(jobs["evolving-kw-2"])


def test_operator_crash_mid_way_creates_no_duplicates(k: Kubectl, kube_env: dict[str, str], operator: OperatorProcess,
                                                     control_plane: Any, tmp_path: Path) -> None:
    """SIGKILL the operator the moment its first RayJob appears (mid-pass: the second launch,
    the status and the Events not yet done), and again the moment the third appears; each
    time a new operator takes over. A watch run by the test sees every RayJob change in
    commit order. (tests/integration/test_faults.py does this at random moments, 20 seeds.)"""
    from tests.integration.faults import RayJobWatch, overlap_problems

    ns = k.namespace("restart")
    operator.kill()
    watch = RayJobWatch(control_plane.kubeconfig, ns).start()
    current: list[OperatorProcess] = []
    kill_on = {"sturdy-a-1": True, "sturdy-c-1": True}

    def on_added(name: str) -> None:  # on the watch's thread: kill at once, then take over
        if kill_on.pop(name, False):
            current[-1].kill()
            current.append(OperatorProcess(kube_env, tmp_path / f"operator-{len(current)}.log").start())

    watch.on_added = on_added
    try:
        current.append(OperatorProcess(kube_env, tmp_path / "operator-0.log").start())
        k.apply(taskfinetune("sturdy", ["a", "b", "c"], maxParallelSubtasks=2), ns)
        wait_for("two RayJobs", lambda: len(k.rayjobs(ns)) == 2, timeout=60)
        time.sleep(3)  # more than a resync of the operator that took over: no third launch, no second a or b
        assert sorted(k.rayjobs(ns)) == ["sturdy-a-1", "sturdy-b-1"]
        k.set_rayjob_status(ns, "sturdy-a-1", **SUCCEEDED)
        wait_for("c launched", lambda: "sturdy-c-1" in k.rayjobs(ns), timeout=60)
        for job in ("sturdy-b-1", "sturdy-c-1"):
            k.set_rayjob_status(ns, job, **SUCCEEDED)
        tft = wait_for("Succeeded", lambda: (t := k.tft(ns, "sturdy")).get("status", {}).get("phase") == "Succeeded" and t, timeout=60)
        time.sleep(3)
        # Exactly one RayJob per sub-task, each created once, none deleted; never more than
        # two unfinished at once, never two of one sub-task.
        assert watch.errors == []
        assert watch.added() == {"sturdy-a-1": 1, "sturdy-b-1": 1, "sturdy-c-1": 1}
        assert watch.deleted() == []
        assert overlap_problems(watch.events, max_parallel=2) == []
        assert len(current) == 3, "the operator was killed twice"
        assert [(s["name"], s["phase"], s["attempts"], s["rayJob"]) for s in tft["status"]["subtasks"]] == [
            ("a", "Succeeded", 1, "sturdy-a-1"), ("b", "Succeeded", 1, "sturdy-b-1"), ("c", "Succeeded", 1, "sturdy-c-1")]
        # A kill may lose an Event (posted after the write); none is ever posted twice, and
        # each names a RayJob that exists.
        launched = [m for e in k.events(ns, "sturdy") if e["reason"] == "Launched" for m in announcements(e["message"])]
        assert len(launched) == len(set(launched))
        assert {m.split("RayJob ")[1].split(" ")[0] for m in launched} <= {"sturdy-a-1", "sturdy-b-1", "sturdy-c-1"}
    finally:
        watch.stop()
        if current:
            current[-1].stop()
        operator.start()


def test_invalid_at_reconcile_time_fails_the_subtask_with_an_event(k: Kubectl, operator: OperatorProcess) -> None:
    ns = k.namespace("invalid")
    body = taskfinetune("odd", ["kw", "ok"])
    body["spec"]["subtasks"][0]["deepspeed"] = {"offloadOptimizer": True}
    body["spec"]["defaults"] = {"deepspeed": {"zeroStage": 0}}
    k.apply(body, ns)
    kw = wait_for("kw Failed", lambda: (s := subtask_status(k.tft(ns, "odd"), "kw"))["phase"] == "Failed" and s)
    assert kw["failureClass"] == "InvalidSpec" and "offloadOptimizer needs zeroStage >= 1" in kw["message"]
    assert sorted(k.rayjobs(ns)) == ["odd-ok-1"]
    wait_for("event", lambda: "SubtaskFailed" in reasons(k, ns, "odd"))


def test_evaluation_is_read_from_the_run_manifest_in_s3(k: Kubectl, operator: OperatorProcess, s3: Any, kube_env: dict[str, str]) -> None:
    ns = k.namespace("scores")
    body = taskfinetune("scored", ["kw"])
    body["spec"]["storage"] = {"output": "s3://adapters/", "endpoint": s3.endpoint, "addressingStyle": "path"}
    k.apply(body, ns)
    job = wait_for("launch", lambda: k.rayjobs(ns).get("scored-kw-1"))
    run_id = job["metadata"]["labels"]["anytasktune.io/run-id"]
    manifest = {"runId": run_id, "evaluation": {"base": {"f1": 0.2, "eval_loss": 2.5}, "adapter": {"f1": 0.7, "eval_loss": 0.9},
                                                "lift": {"f1": 0.5, "eval_loss": -1.6}}}
    s3.client().put_object(Bucket="adapters", Key=f"scored/kw/{run_id}/manifest.json", Body=json.dumps(manifest).encode())
    k.set_rayjob_status(ns, "scored-kw-1", **SUCCEEDED)
    kw = wait_for("metrics in status", lambda: (s := subtask_status(k.tft(ns, "scored"), "kw")).get("metrics") and s)
    assert kw["metrics"]["lift"]["f1"] == 0.5 and kw["adapter"] == f"s3://adapters/scored/kw/{run_id}/"
    assert "f1 0.200 -> 0.700 (+0.500)" in kw["message"]
    # Success is announced when KubeRay declares it; the lift when the manifest has been read.
    events = wait_for("events", lambda: (e := {e["reason"]: e["message"] for e in k.events(ns, "scored")}) and "Evaluated" in e and e)
    assert "SubtaskSucceeded" in events and "+0.500" in events["Evaluated"]

    # `anytasktune status` reads the same from the cluster.
    proc = subprocess.run([sys.executable, "-m", "anytasktune.cli", "status", "-n", ns], env=kube_env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()[:2]
    assert header.split()[:4] == ["TASKFINETUNE", "SUBTASK", "PHASE", "ATTEMPTS"]
    assert row.split()[:4] == ["scored", "kw", "Succeeded", "1"] and "f1=+0.500" in row


def test_deleting_the_taskfinetune_leaves_nothing_behind(k: Kubectl, operator: OperatorProcess) -> None:
    ns = k.namespace("deletion")
    k.apply(taskfinetune("doomed", ["a", "b"]), ns)
    wait_for("launches", lambda: len(k.rayjobs(ns)) == 2)
    assert not k.tft(ns, "doomed")["metadata"].get("finalizers")  # nothing can wedge deletion
    k.run("delete", "tft", "doomed", "-n", ns, "--wait=true", "--timeout=30s")
    wait_for("RayJobs collected", lambda: k.rayjobs(ns) == {})


def test_passes_read_rayjobs_from_the_watch_and_see_one_deleted_behind_their_back(k: Kubectl, operator: OperatorProcess) -> None:
    """The operator's RayJob cache (informer.py) follows deletions: a RayJob deleted by
    hand is launched again by the event's pass, not left for the cache to remember."""
    ns = k.namespace("cache")
    k.apply(taskfinetune("pool", ["only"]), ns)
    first = wait_for("launch", lambda: k.rayjobs(ns).get("pool-only-1"))
    k.run("delete", "rayjob", "pool-only-1", "-n", ns, "--wait=true")
    again = wait_for("launched again", lambda: (j := k.rayjobs(ns).get("pool-only-1")) and j["metadata"]["uid"] != first["metadata"]["uid"] and j)
    assert again["metadata"]["labels"]["anytasktune.io/subtask"] == "only"
    reads = {line.split('source="')[1].split('"')[0]: float(line.split()[-1])
             for line in metrics_text(operator.metrics_port).splitlines() if line.startswith("anytasktune_child_reads_total{")}
    assert reads.get("cache", 0) > reads.get("list", 0), reads  # LISTs only while a pass's own writes are in flight


def test_s3_outage_is_retried_with_backoff_shown_held_and_recovered(k: Kubectl, operator: OperatorProcess, s3: Any, tmp_path: Path) -> None:
    """A pool of 5 whose S3 server goes down after its manifests were written: each sub-task
    shows the outage (EvaluationUnreadable, one StorageUnavailable Event each); after 5 reads
    in a row failed the endpoint's reads are held unsent (storagereads.py) and the status settles;
    once the server is back, a probe finds it and every evaluation is read."""
    ns = k.namespace("outage")
    names = [f"kw{i}" for i in range(5)]
    with s3_serving(tmp_path / "s3", ["adapters"], access_key=s3.access_key, secret_key=s3.secret_key) as own:
        body = taskfinetune("unlucky", names, maxParallelSubtasks=5)
        body["spec"]["storage"] = {"output": "s3://adapters/", "endpoint": own.endpoint, "addressingStyle": "path"}
        k.apply(body, ns)
        jobs = wait_for("launches", lambda: (j := k.rayjobs(ns)) and len(j) == 5 and j)
        for name in names:
            run_id = jobs[f"unlucky-{name}-1"]["metadata"]["labels"]["anytasktune.io/run-id"]
            manifest = {"runId": run_id, "evaluation": {"base": {"f1": 0.2}, "adapter": {"f1": 0.7}, "lift": {"f1": 0.5}}}
            own.client().put_object(Bucket="adapters", Key=f"unlucky/{name}/{run_id}/manifest.json", Body=json.dumps(manifest).encode())
        own.stop(keep_data=True)
        held_before = held_reads(operator)
        for name in names:
            k.set_rayjob_status(ns, f"unlucky-{name}-1", **SUCCEEDED)

        def all_held() -> dict[str, Any] | None:
            tft = k.tft(ns, "unlucky")
            return tft if all("reads in a row" in subtask_status(tft, n)["message"] for n in names) else None

        tft = wait_for("every sub-task's read held", all_held, timeout=60)
        kw = subtask_status(tft, "kw0")
        assert kw["phase"] == "Succeeded" and kw["reason"] == "EvaluationUnreadable" and "EndpointConnectionError" in kw["message"]
        unavailable = [m for e in k.events(ns, "unlucky") if e["reason"] == "StorageUnavailable" for m in announcements(e["message"])]
        assert sorted(m.split(":")[0] for m in unavailable) == [f"sub-task {n}" for n in names]  # one each
        assert held_reads(operator) > held_before
        # Backoff and the breaker, not a hot loop: the status settles while reads keep failing.
        version = tft["metadata"]["resourceVersion"]
        time.sleep(6)
        assert k.tft(ns, "unlucky")["metadata"]["resourceVersion"] == version
        own.start()
        tft = wait_for("every evaluation read", lambda: (t := k.tft(ns, "unlucky")) and all(
            subtask_status(t, n).get("metrics") for n in names) and t, timeout=90)
        assert {subtask_status(tft, n)["reason"] for n in names} == {"Succeeded"}
