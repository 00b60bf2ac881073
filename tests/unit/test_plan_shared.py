"""cluster.mode Shared, table-driven: the rendered RayCluster and RayJobs (as KubeRay v1.4.2
validates them), and when the planner creates and deletes the pool's one RayCluster."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import pytest

from anytasktune.actions import CreateCluster, DeleteCluster, DeleteJob, Launch, ObservedCluster, SetSuspend
from anytasktune.attempt import format_time
from anytasktune.local.supervisor import one_local_cluster
from anytasktune.plan import plan
from anytasktune.render import LABEL_SHARED_CLUSTER, shared_worker_pods, spec_json_of
from anytasktune.spec import TaskFineTune
from anytasktune_contract.trainspec import DEADLINE_ENV, SPEC_B64_ENV, TrainJobSpec
from tests.unit.test_plan import CONFIG, NOW, job, tft

SHARED = {"mode": "Shared", "workers": 2, "gpusPerWorker": 0, "cpusPerWorker": "2", "memoryPerWorker": "4Gi"}
CLUSTER = ObservedCluster("legal-ray")


def shared(subtasks: int = 3, **spec: Any) -> dict[str, Any]:
    return tft(subtasks, cluster=dict(SHARED), **spec)


def kinds(actions: list[Any]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_a_shared_rayjob_names_the_pools_cluster_and_carries_its_spec_in_the_runtime_env() -> None:
    obj = shared(1)
    obj["spec"]["subtasks"][0]["instruction"] = 'Quote "$HOME", `date` and \\n as they are: é.'
    launch = next(a for a in plan(obj, [], {}, NOW, CONFIG, CLUSTER).actions if isinstance(a, Launch))
    spec = launch.rayjob["spec"]
    assert spec["clusterSelector"] == {"ray.io/cluster": "legal-ray"}
    # KubeRay v1.4.2 (ValidateRayJobSpec): no cluster of its own, no suspend, no TTL without shutdown.
    assert "rayClusterSpec" not in spec and "suspend" not in spec and "ttlSecondsAfterFinished" not in spec
    assert spec["shutdownAfterJobFinishes"] is False
    assert spec["entrypoint"] == "python -m anytasktune_trainjob"  # the spec comes from the env
    env = json.loads(spec["runtimeEnvYAML"])["env_vars"]
    # Base64 only: KubeRay's submitter puts this into a bash "..." string, where $ and ` expand.
    assert set(env[SPEC_B64_ENV]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    train = TrainJobSpec.from_json(base64.b64decode(env[SPEC_B64_ENV]).decode("utf-8"))
    assert train.instruction == obj["spec"]["subtasks"][0]["instruction"]
    assert train.to_json() == spec_json_of(launch.rayjob)


@pytest.mark.parametrize(("own", "pool", "want"), [(None, None, None), (7200, None, "7200"), (None, 3600, "3600"), (600, 3600, "600")])
def test_a_shared_rayjobs_driver_is_told_its_deadline_to_stop_itself(own: int | None, pool: int | None, want: str | None) -> None:
    """KubeRay v1.4.2 fails a RayJob on an existing cluster at activeDeadlineSeconds without
    stopping its Ray job: the driver gets the deadline and stops itself."""
    obj = tft(1, cluster={**SHARED, **({"activeDeadlineSeconds": pool} if pool else {})})
    if own:
        obj["spec"]["subtasks"][0]["activeDeadlineSeconds"] = own
    launch = next(a for a in plan(obj, [], {}, NOW, CONFIG, CLUSTER).actions if isinstance(a, Launch))
    env = json.loads(launch.rayjob["spec"]["runtimeEnvYAML"])["env_vars"]
    assert env.get(DEADLINE_ENV) == want
    assert launch.rayjob["spec"].get("activeDeadlineSeconds") == (int(want) if want else None)


@pytest.mark.parametrize(("subtasks", "parallel", "workers", "pods"), [(3, 2, 2, 4), (1, 4, 2, 2), (5, 5, 1, 5), (8, 3, 3, 9)])
def test_the_shared_cluster_has_room_for_every_sub_task_that_may_run_at_once(subtasks: int, parallel: int, workers: int, pods: int) -> None:
    obj = tft(subtasks, maxParallelSubtasks=parallel, cluster={**SHARED, "workers": workers})
    assert shared_worker_pods(TaskFineTune.model_validate(obj).spec) == pods


def test_the_shared_cluster_is_created_with_the_first_launches_owned_by_the_pool() -> None:
    result = plan(shared(3), [], {}, NOW, CONFIG, None)
    assert kinds(result.actions) == ["Launch", "Launch", "CreateCluster"]
    create = next(a for a in result.actions if isinstance(a, CreateCluster))
    cluster = create.raycluster
    assert (cluster["kind"], cluster["metadata"]["name"]) == ("RayCluster", "legal-ray")
    assert cluster["metadata"]["labels"][LABEL_SHARED_CLUSTER] == "true"
    assert cluster["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    workers = cluster["spec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 4  # 2 workers x 2 at once
    pod = workers["template"]["spec"]
    assert [v["name"] for v in pod["volumes"]] == ["dshm"]
    assert pod["containers"][0]["resources"]["limits"]["cpu"] == "2"
    assert ("Normal", "ClusterCreated") in {(e.type, e.reason) for e in result.events}


def test_an_existing_shared_cluster_is_left_alone_while_the_pool_has_work() -> None:
    obj = shared(3)
    running = [job(obj, "task0", 1, "running", shared=True), job(obj, "task1", 1, "running", shared=True)]
    result = plan(obj, running, {}, NOW, CONFIG, CLUSTER)
    assert kinds(result.actions) == []
    assert result.status.subtasks[2].reason == "WaitingForCapacity"


def test_a_failed_attempt_on_the_shared_cluster_is_retried_there_without_releasing_anything() -> None:
    obj = shared(1)
    failed = job(obj, "task0", 1, "failed", shared=True, message="worker died: exit code 1",
                 end_time=format_time(NOW - timedelta(minutes=5)))  # past the 10 s backoff
    result = plan(obj, [failed], {}, NOW, CONFIG, CLUSTER)
    assert kinds(result.actions) == ["Launch"]
    launch = result.actions[0]
    assert isinstance(launch, Launch) and launch.name == "legal-task0-2" and launch.retry_of is not None


@pytest.mark.parametrize(
    ("case", "states", "suspend", "cluster", "want"),
    [
        ("pool done", ["succeeded", "failed"], False, CLUSTER, ["DeleteCluster:PoolFinished"]),
        ("one still running", ["succeeded", "running"], False, CLUSTER, []),
        ("already going", ["succeeded", "succeeded"], False, ObservedCluster("legal-ray", deleting=True), []),
        # Suspend: first the attempts (KubeRay stops their Ray jobs through the cluster), then the cluster.
        ("suspend, jobs live", ["running", "running"], True, CLUSTER, ["DeleteJob:Suspended", "DeleteJob:Suspended"]),
        ("suspend, jobs going", ["running-deleting", "running-deleting"], True, CLUSTER, ["DeleteCluster:Suspended"]),
        ("suspended, nothing left", [], True, CLUSTER, ["DeleteCluster:Suspended"]),
        ("suspended, no cluster", [], True, None, []),
    ],
)
def test_the_shared_cluster_goes_when_the_pool_needs_it_no_more(case: str, states: list[str], suspend: bool,
                                                               cluster: ObservedCluster | None, want: list[str]) -> None:
    obj = shared(2, suspend=suspend, backoffLimit=0)
    observed = [job(obj, f"task{i}", 1, s.removesuffix("-deleting"), shared=True, deleting=s.endswith("-deleting"))
                for i, s in enumerate(states)]
    result = plan(obj, observed, {}, NOW, CONFIG, cluster)
    got = [f"{type(a).__name__}:{a.reason}" for a in result.actions if isinstance(a, (DeleteJob, DeleteCluster))]
    assert got == want, case
    assert not [a for a in result.actions if isinstance(a, (SetSuspend, CreateCluster, Launch))], case


def test_no_launch_onto_a_shared_cluster_that_is_being_deleted() -> None:
    result = plan(shared(1), [], {}, NOW, CONFIG, ObservedCluster("legal-ray", deleting=True))
    assert kinds(result.actions) == []
    assert result.status.subtasks[0].reason == "WaitingForCluster"
    assert result.requeue_after is not None


def test_a_shared_cluster_left_by_a_pool_switched_to_per_subtask_is_deleted_once_nothing_runs_on_it() -> None:
    obj = tft(1)
    on_it = job(obj, "task0", 1, "running", shared=True)
    assert kinds(plan(obj, [on_it], {}, NOW, CONFIG, CLUSTER).actions) == []
    done = job(obj, "task0", 1, "succeeded", shared=True)
    deletes = [a for a in plan(obj, [done], {}, NOW, CONFIG, CLUSTER).actions if isinstance(a, DeleteCluster)]
    assert [(a.name, a.reason) for a in deletes] == [("legal-ray", "NotShared")]


def test_sub_tasks_that_name_another_general_model_key_cannot_share_the_head() -> None:
    compare = {"endpoint": "https://api.example.com/v1", "model": "general"}
    obj = shared(3, maxParallelSubtasks=3, defaults={"evaluation": {"compareWith": {**compare, "apiKeySecret": {"name": "k1", "key": "key"}}}})
    obj["spec"]["subtasks"][1]["evaluation"] = {"compareWith": {**compare, "apiKeySecret": {"name": "k2", "key": "key"}}}
    result = plan(obj, [], {}, NOW, CONFIG, None)
    assert [a.subtask for a in result.actions if isinstance(a, Launch)] == ["task0", "task2"]
    bad = result.status.subtasks[1]
    assert (bad.phase, bad.reason) == ("Failed", "InvalidSpec") and "k2/key differs from k1/key" in (bad.message or "")
    cluster = next(a for a in result.actions if isinstance(a, CreateCluster)).raycluster
    head_env = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "k1", "key": "key"} in [e["valueFrom"]["secretKeyRef"] for e in head_env if "valueFrom" in e]


def test_local_mode_plans_a_shared_pool_as_per_subtask_on_its_one_ray() -> None:
    obj = shared(2)
    local = one_local_cluster(obj)
    assert local["spec"]["cluster"]["mode"] == "PerSubtask" and obj["spec"]["cluster"]["mode"] == "Shared"
    assert kinds(plan(local, [], {}, NOW, CONFIG, None).actions) == ["Launch", "Launch"]
