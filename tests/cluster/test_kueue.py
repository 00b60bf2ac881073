"""A queued TaskFineTune under the real Kueue: the operator creates the RayJob suspended with
the queue label, Kueue keeps it suspended while its ClusterQueue has no quota room, admits
it (lifts spec.suspend) once it has, and the pool trains to the end. The operator never
writes spec.suspend on a queued RayJob: Kueue owns it (docs/decisions.md, 2026-11-25).

Kueue v0.17.0 (hack/kueue/go.mod) is deployed for this module by hack/cluster/kueue.sh up
(only the RayJob integration, no waitForPodsReady, internal certificates) and removed
again afterwards, so the rest of the tier runs without it.

The RayJob's (spec.suspend, status) sequence is recorded into
tests/fixtures/kuberay/kueue_admission.json when ANYTASKTUNE_RECORD_KUEUE=1; the planner's
unit tests replay it (tests/unit/test_plan_recorded.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from anytasktune.attempt import parse_time
from tests.cluster.conftest import Cluster
from tests.cluster.harness import (
    REPO,
    RayJobWatcher,
    TrainingData,
    items,
    recorded_versions,
    recorded_where,
    taskfinetune,
    wait_for,
)

pytestmark = pytest.mark.timeout(3600)

FLAVOR = "anytasktune-test-flavor"
CLUSTER_QUEUE = "anytasktune-test-cq"
LOCAL_QUEUE = "training"
KUEUE = "kueue.x-k8s.io/v1beta2"
FIXTURE = REPO / "tests" / "fixtures" / "kuberay" / "kueue_admission.json"
HELD_S = 30  # how long the job must stay queued without quota room


@pytest.fixture(scope="module")
def kueue(cluster: Cluster) -> Iterator[str]:
    """Kueue in the cluster for this module (hack/cluster/kueue.sh): built and imported on
    first use, removed at the end unless ANYTASKTUNE_KEEP_CLUSTER=1 or the cluster itself
    is about to be torn down."""
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(REPO / "hack/cluster/kueue.sh"), "up"], cwd=REPO, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=3600)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stdout[-4000:]
    cluster.figures["kueue_up_s"] = round(time.monotonic() - t0, 1)
    version = subprocess.run(["go", "list", "-m", "-f", "{{.Version}}", "sigs.k8s.io/kueue"], cwd=REPO / "hack" / "kueue",
                             capture_output=True, text=True, env={**os.environ, "GOFLAGS": "-mod=mod"}).stdout.strip()
    yield version or "v0.17.0"
    # A cluster this session started goes at the end, Kueue with it (conftest orders these
    # tests after the others; only the crash test, which kills it all, comes later).
    if os.environ.get("ANYTASKTUNE_KEEP_CLUSTER") != "1" and not cluster.started_here:
        for kind, name in (("clusterqueue", CLUSTER_QUEUE), ("resourceflavor", FLAVOR)):
            cluster.kube.run("delete", kind, name, "--ignore-not-found", "--wait=false", check=False)
        subprocess.run(["bash", str(REPO / "hack/cluster/kueue.sh"), "down"], cwd=REPO, timeout=600, check=False)


def queues(namespace: str, cpu: str, memory: str) -> list[dict[str, Any]]:
    flavor = {"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": FLAVOR}}
    cq = {
        "apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": CLUSTER_QUEUE},
        "spec": {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "resourceGroups": [{"coveredResources": ["cpu", "memory"], "flavors": [
                {"name": FLAVOR, "resources": [{"name": "cpu", "nominalQuota": cpu}, {"name": "memory", "nominalQuota": memory}]},
            ]}],
        },
    }
    lq = {"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": LOCAL_QUEUE, "namespace": namespace},
          "spec": {"clusterQueue": CLUSTER_QUEUE}}
    return [flavor, cq, lq]


def writers(rayjob: dict[str, Any]) -> list[dict[str, Any]]:
    """The RayJob's managedFields: each manager, how and when it last wrote, and whether it
    owns spec.suspend."""
    return [{"manager": mf.get("manager"), "operation": mf.get("operation"), "subresource": mf.get("subresource", ""),
             "time": mf.get("time"), "owns_suspend": "f:suspend" in ((mf.get("fieldsV1") or {}).get("f:spec") or {})}
            for mf in rayjob["metadata"].get("managedFields") or []]


def written_by_the_create(entry_time: str, created: str) -> bool:
    """Stamped no later than creationTimestamp (to the second): the create, not a later update.
    The queued RayJob is held for HELD_S before any quota, so a write at admission would read
    well after it."""
    entry, creation = parse_time(entry_time), parse_time(created)
    assert entry and creation, (entry_time, created)
    return entry <= creation


def with_managed_fields(cluster: Cluster, rayjob: str, namespace: str) -> dict[str, Any]:
    return dict(json.loads(cluster.kube.run("get", "rayjob", rayjob, "-n", namespace, "-o", "json", "--show-managed-fields")))


def check_only_kueue_wrote_suspend(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Kueue lifts spec.suspend with an Update of its typed client, which drops `false`
    (omitempty): the field is then absent and nobody owns it. What shows that the operator
    never wrote it: the operator's entry (neither kueue's nor KubeRay's) was last written by
    the create, and does not own spec.suspend.

    By the create, not at creationTimestamp: the API server stamps managedFields before the
    admission webhooks (Kueue's among them) and creationTimestamp after, both to the second,
    so the entry can read a second earlier (recorded in CI: 23:17:53 against 23:17:54)."""
    entries = writers(job)
    created = job["metadata"]["creationTimestamp"]
    ours = [e for e in entries if e["manager"] not in ("kueue", "kuberay-operator")]
    assert ours and all(written_by_the_create(e["time"], created) and e["operation"] == "Update" and not e["owns_suspend"]
                        for e in ours), entries
    assert [e for e in entries if e["manager"] == "kueue" and e["operation"] == "Update" and not e["subresource"]], entries
    assert all(e["manager"] == "kueue" for e in entries if e["owns_suspend"]), entries
    assert not job["spec"].get("suspend", False), job["spec"].get("suspend")
    return entries


def test_a_queued_pool_waits_for_quota_then_kueue_admits_it(
    cluster: Cluster, kueue: str, operator: str, namespace: str, images: dict[str, str], s3: Any,
    training_data: TrainingData,
) -> None:
    kube = cluster.kube
    kube.apply(*queues(namespace, cpu="0", memory="0"))
    wait_for("the LocalQueue to be active", lambda: any(
        c["type"] == "Active" and c["status"] == "True"
        for c in (kube.get("localqueue", LOCAL_QUEUE, namespace).get("status") or {}).get("conditions", [])), timeout=60)

    tft = taskfinetune("queued", namespace, data=training_data, endpoint=s3.endpoint, subtasks={"sentiment": "sentiment"},
                       image=images["TRAINJOB_IMAGE"])
    tft["spec"]["queueName"] = LOCAL_QUEUE  # a top-level field of the spec, not of spec.cluster
    rayjob = "queued-sentiment-1"
    watcher = RayJobWatcher(kube, namespace, rayjob).start()
    t0 = time.monotonic()
    kube.apply(tft)
    watcher.mark(f"applied the TaskFineTune (queueName {LOCAL_QUEUE}; ClusterQueue quota cpu 0, memory 0)")

    # (a) queued: suspended, a Workload that is not admitted, no Ray cluster, no pods.
    job = wait_for("the RayJob", lambda: kube.get("rayjob", rayjob, namespace, check=False), timeout=120)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == LOCAL_QUEUE
    assert job["spec"]["suspend"] is True
    workload = wait_for("Kueue's Workload", lambda: kube.get("workloads", namespace=namespace)["items"], timeout=60)[0]
    time.sleep(HELD_S)
    workload = kube.get("workload", workload["metadata"]["name"], namespace)
    conditions = {c["type"]: c for c in (workload.get("status") or {}).get("conditions", [])}
    assert conditions.get("QuotaReserved", {}).get("status") == "False", conditions
    assert "Admitted" not in conditions or conditions["Admitted"]["status"] == "False", conditions
    assert kube.get("rayjob", rayjob, namespace)["spec"]["suspend"] is True
    assert items(cluster.kube, "rayclusters", namespace) == []
    assert items(cluster.kube, "pods", namespace) == []
    queued = dict(kube.get("taskfinetune", "queued", namespace).get("status") or {})
    sub = queued["subtasks"][0]
    assert sub["phase"] == "Pending" and sub["reason"] == "Queued", queued
    assert f"waiting for admission by Kueue queue {LOCAL_QUEUE}" in sub["message"], sub
    assert queued["phase"] == "Pending", queued  # nothing runs: not Running
    cluster.figures["kueue_queued"] = {"phase": queued.get("phase"), "subtask": {k: sub.get(k) for k in ("phase", "reason", "message")},
                                       "workload_pending": conditions.get("QuotaReserved", {}).get("message")}

    # (b) quota: Kueue admits the Workload, lifts spec.suspend, the pool trains to the end.
    kube.run("patch", "clusterqueue", CLUSTER_QUEUE, "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/resourceGroups/0/flavors/0/resources/0/nominalQuota", "value": "4"},
        {"op": "replace", "path": "/spec/resourceGroups/0/flavors/0/resources/1/nominalQuota", "value": "16Gi"}]))
    watcher.mark("gave the ClusterQueue quota (cpu 4, memory 16Gi)")
    t_quota = time.monotonic()
    # Kueue's Update drops `suspend: false` (omitempty): lifted means absent or false.
    wait_for("Kueue to lift spec.suspend", lambda: (j := kube.get("rayjob", rayjob, namespace)) and
             not j["spec"].get("suspend", False), timeout=120, interval=0.2)
    cluster.figures["kueue_quota_to_unsuspended_s"] = round(time.monotonic() - t_quota, 1)
    writers_at_admission = check_only_kueue_wrote_suspend(with_managed_fields(cluster, rayjob, namespace))

    def finished() -> dict[str, Any] | None:
        s = dict(kube.get("taskfinetune", "queued", namespace).get("status") or {})
        return s if s.get("phase") in ("Succeeded", "Failed", "Invalid") else None

    final = wait_for("the queued pool to finish", finished, timeout=1800, interval=3)
    cluster.figures["kueue_apply_to_finished_s"] = round(time.monotonic() - t0, 1)
    assert final["phase"] == "Succeeded", final
    assert final["subtasks"][0]["attempts"] == 1, final
    time.sleep(10)
    watcher.mark("the TaskFineTune is Succeeded")
    watcher.stop()

    # (c) spec.suspend: true at creation, false once (Kueue), never written back by the operator.
    sequence = [e["suspend"] for e in watcher.events if e["event"] != "DELETED"]
    assert sequence[0] is True and sequence[-1] is False, sequence
    flips = sum(1 for a, b in zip(sequence, sequence[1:], strict=False) if a != b)
    assert flips == 1, sequence
    if kube.get("rayjob", rayjob, namespace, check=False):  # still there at the end: same picture
        check_only_kueue_wrote_suspend(with_managed_fields(cluster, rayjob, namespace))
    cluster.figures["kueue_rayjob_writers_at_admission"] = writers_at_admission

    if os.environ.get("ANYTASKTUNE_RECORD_KUEUE") == "1":
        record(rayjob, watcher, kueue, writers_at_admission, queued)


def record(rayjob: str, watcher: RayJobWatcher, kueue: str, owners: list[dict[str, Any]], queued: dict[str, Any]) -> None:
    """tests/fixtures/kuberay/kueue_admission.json, in the format of record.py's fixtures."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    doc = {
        "recorded": {
            "where": recorded_where(kueue),
            "when": watcher.events[0]["observed"] if watcher.events else "",
            "how": "tests/cluster/test_kueue.py with ANYTASKTUNE_RECORD_KUEUE=1: a TaskFineTune with queueName applied "
                   "to the operator installed with helm; every distinct RayJob (spec.suspend, status without "
                   "status.rayClusterStatus) from a `kubectl get -w` stream",
            "versions": {**recorded_versions(), "kueue": kueue},
            "anytasktune": f"commit {commit} (working tree of the run; operator and training image)",
        },
        "scenario": "kueue_admission",
        "what": f"created suspended with queue {LOCAL_QUEUE}; held {HELD_S} s by a ClusterQueue with quota 0, then given "
                "quota: Kueue lifts spec.suspend, the job trains to the end",
        "queueName": LOCAL_QUEUE,
        "rayjob": rayjob,
        "actions": watcher.marks,
        "observations": watcher.events,
        "note": "after admission spec.suspend is absent, not false: Kueue's typed-client Update omits false "
                "(omitempty); the observations read an absent suspend as false",
        "rayjob_managed_fields_at_admission": owners,
        "taskfinetune_status_while_queued": queued,
    }
    FIXTURE.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
