"""The RayJob renderer and the generated CRD (pure, no cluster)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from anytasktune import crd
from anytasktune.config import OperatorConfig
from anytasktune.render import render_rayjob, spec_json_of
from anytasktune.resolve import resolve_subtask
from anytasktune.spec import TaskFineTune
from anytasktune_contract.trainspec import SPEC_B64_ENV, TrainJobSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((ROOT / "manifests/examples/legal-assistant.yaml").read_text())


def render(example: dict[str, Any] = EXAMPLE, subtask: int = 0, config: OperatorConfig | None = None) -> tuple[TrainJobSpec, dict[str, Any]]:
    """The resolved spec and the RayJob that carries it."""
    model = TaskFineTune.model_validate(example)
    sub = model.spec.subtasks[subtask]
    train = resolve_subtask("legal-assistant", "ns", model.spec, sub)
    cfg = config or OperatorConfig(training_image="registry.local/trainjob:1")
    return train, render_rayjob("legal-assistant", "ns", "uid-1", model.spec, train, 3, cfg)


def test_the_rayjob_carries_the_resolved_spec_with_overrides_merged_over_defaults() -> None:
    resolved, job = render(subtask=1)
    train = TrainJobSpec.from_json(spec_json_of(job))
    assert train == resolved
    assert train.lora.r == 32  # sub-task override
    assert train.lora.alpha == 32 and train.lora.targetModules == ["q_proj", "k_proj", "v_proj", "o_proj"]  # defaults
    assert train.outputPrefix == "s3://adapters/legal-assistant/clause-risk"
    assert train.instruction.startswith("Rate the legal risk")
    assert train.scaling.numWorkers == 2 and train.scaling.useGpu


def test_rayjob_identity_labels_and_ownership() -> None:
    _, job = render()
    meta = job["metadata"]
    assert meta["name"] == "legal-assistant-keyword-extraction-3"
    assert len(meta["name"]) <= 47
    assert meta["labels"]["anytasktune.io/taskfinetune"] == "legal-assistant"
    assert meta["labels"]["anytasktune.io/subtask"] == "keyword-extraction"
    assert meta["labels"]["anytasktune.io/attempt"] == "3"
    owner = meta["ownerReferences"][0]
    assert owner == {"apiVersion": "anytasktune.io/v1alpha1", "kind": "TaskFineTune", "name": "legal-assistant", "uid": "uid-1",
                     "controller": True, "blockOwnerDeletion": True}


def test_rayjob_shape_follows_the_cluster_spec() -> None:
    _, job = render()
    spec = job["spec"]
    assert spec["entrypoint"] == "python -m anytasktune_trainjob"  # the spec comes from the runtime env
    assert list(json.loads(spec["runtimeEnvYAML"])["env_vars"]) == [SPEC_B64_ENV]  # KubeRay stops it at the deadline
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] == 300  # the example sets it
    assert spec["activeDeadlineSeconds"] == 14400  # the pool's deadline (case-split has its own)
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 2
    pod = workers["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.local/trainjob:1"
    assert container["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": 1}
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(head) and "nodeSelector" not in head
    assert [v["name"] for v in head["volumes"]] == ["dshm"]  # nothing to mount: a launch is one object


def test_credentials_only_by_secret_reference() -> None:
    _, job = render()
    env = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["AWS_ACCESS_KEY_ID"] == {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID"}}}
    assert "value" not in by_name["AWS_SECRET_ACCESS_KEY"]


@pytest.mark.parametrize("restricted", [True, False])
def test_pods_are_restricted_by_default(restricted: bool) -> None:
    _, job = render(config=OperatorConfig(restricted_pods=restricted))
    for group in [job["spec"]["rayClusterSpec"]["headGroupSpec"], *job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]:
        pod = group["template"]["spec"]
        container = pod["containers"][0]
        if restricted:
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        else:
            assert "securityContext" not in pod and "securityContext" not in container


def test_kueue_queue_and_cpu_only_cluster() -> None:
    example = yaml.safe_load((ROOT / "manifests/examples/healthcare-cpu-minimal.yaml").read_text())
    model = TaskFineTune.model_validate(example)
    train = resolve_subtask("healthcare", "ns", model.spec, model.spec.subtasks[0])
    job = render_rayjob("healthcare", "ns", "u", model.spec, train, 1, OperatorConfig())
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-ml"
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in worker["resources"]["limits"]
    env = {e["name"]: e.get("value") for e in worker["env"]}
    assert env["AWS_ENDPOINT_URL_S3"] == "http://minio.storage.svc:9000" and env["HF_HOME"] == "/models/hf"
    assert "AWS_ACCESS_KEY_ID" not in env  # no Secret: the pod identity (IRSA) supplies credentials
    assert not train.scaling.useGpu


def test_run_id_is_stable_and_changes_with_the_spec() -> None:
    _, job1 = render()
    _, job2 = render()
    assert job1["metadata"]["labels"]["anytasktune.io/run-id"] == job2["metadata"]["labels"]["anytasktune.io/run-id"]
    changed = json.loads(json.dumps(EXAMPLE))
    changed["spec"]["defaults"]["training"]["epochs"] = 4
    _, job3 = render(changed)
    assert job3["metadata"]["labels"]["anytasktune.io/run-id"] != job1["metadata"]["labels"]["anytasktune.io/run-id"]


def test_committed_crd_matches_the_models() -> None:
    committed = (ROOT / crd.CRD_PATH).read_text()
    assert committed == crd.render_yaml(), "the CRD drifted from operator/anytasktune/spec.py: run `make manifests`"


def test_crd_schema_is_structural_enough_for_the_api_server() -> None:
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(node: dict[str, Any], path: str) -> None:
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        if node.get("type") == "object":
            for name, sub in node.get("properties", {}).items():
                walk(sub, f"{path}.{name}")
            if isinstance(node.get("additionalProperties"), dict):
                walk(node["additionalProperties"], f"{path}[*]")
        elif node.get("type") == "array":
            walk(node["items"], f"{path}[]")
        else:
            assert node.get("type") in {"string", "integer", "number", "boolean"}, path

    walk(schema, "")
    subtasks = schema["properties"]["spec"]["properties"]["subtasks"]
    assert subtasks["x-kubernetes-list-type"] == "map" and subtasks["x-kubernetes-list-map-keys"] == ["name"]


def test_readme_field_reference_matches_the_models() -> None:
    readme = (ROOT / "README.md").read_text()
    assert crd.update_readme(readme) == readme, "README field reference drifted: run `make manifests`"


def test_run_id_ignores_where_storage_is_reached() -> None:
    model = TaskFineTune.model_validate(EXAMPLE)
    train = resolve_subtask("legal-assistant", "ns", model.spec, model.spec.subtasks[0])
    moved = train.model_copy(update={"storage": train.storage.model_copy(update={"endpoint": "http://127.0.0.1:9999"})})
    assert moved.spec_id() == train.spec_id()


@pytest.mark.parametrize(("quantity", "cpus"), [("8", 8.0), ("500m", 1.0), ("2500m", 2.5), ("16", 16.0)])
def test_ray_train_gets_the_workers_cpus(quantity: str, cpus: float) -> None:
    """Ray Train sizes torch's thread pool from this: one CPU would waste the pod."""
    example = json.loads(json.dumps(EXAMPLE))
    example["spec"]["cluster"]["cpusPerWorker"] = quantity
    model = TaskFineTune.model_validate(example)
    assert resolve_subtask("x", "ns", model.spec, model.spec.subtasks[0]).scaling.cpusPerWorker == cpus


# --- pods that run under Pod Security "restricted" (found on the real KubeRay, issue 8) ---

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """The checks of Pod Security Standards "restricted" (v1.32) that a pod template can fail."""
    out = []
    pod_sc = pod.get("securityContext", {})
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            out.append(f"volume {volume['name']}: {kinds}")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{c['name']}: allowPrivilegeEscalation != false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{c['name']}: unrestricted capabilities")
        if sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is not True:
            out.append(f"{c['name']}: runAsNonRoot != true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            out.append(f"{c['name']}: runAsUser=0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{c['name']}: seccompProfile")
        if sc.get("privileged"):
            out.append(f"{c['name']}: privileged")
    return out


def pod_templates(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    spec = job["spec"]
    return {
        "head": spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"],
        **{g["groupName"]: g["template"]["spec"] for g in spec["rayClusterSpec"]["workerGroupSpecs"]},
        "submitter": spec["submitterPodTemplate"]["spec"],
    }


def test_every_pod_including_the_submitter_passes_restricted() -> None:
    """KubeRay's default submitter has no security context: a restricted namespace refuses
    its pod and the RayJob never starts. We render the submitter ourselves."""
    _, job = render()
    assert job["spec"]["submissionMode"] == "K8sJobMode"
    for name, pod in pod_templates(job).items():
        assert restricted_violations(pod) == [], name


def test_submitter_uses_the_training_image_and_small_fixed_resources() -> None:
    _, job = render()
    template = job["spec"]["submitterPodTemplate"]
    pod = template["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "ray-job-submitter"
    assert container["image"] == "registry.local/trainjob:1"  # same Ray version as the head
    assert "command" not in container and "args" not in container  # KubeRay fills them in
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert template["metadata"]["labels"]["anytasktune.io/subtask"] == "keyword-extraction"


def test_submitter_has_no_security_context_when_restricted_pods_are_off() -> None:
    _, job = render(config=OperatorConfig(restricted_pods=False))
    pod = job["spec"]["submitterPodTemplate"]["spec"]
    assert "securityContext" not in pod and "securityContext" not in pod["containers"][0]


@pytest.mark.parametrize("policy", ["Never", "IfNotPresent", "Always", None])
def test_image_pull_policy_on_every_container(policy: str | None) -> None:
    example = json.loads(json.dumps(EXAMPLE))
    if policy:
        example["spec"]["cluster"]["imagePullPolicy"] = policy
    else:
        example["spec"]["cluster"].pop("imagePullPolicy", None)
    _, job = render(example)
    for name, pod in pod_templates(job).items():
        for c in pod["containers"]:
            assert c.get("imagePullPolicy") == policy, name


def test_small_head_gets_no_cpu_limit_and_workers_are_guaranteed() -> None:
    """Issue 8: with limits equal to a 300m request, the head never started Ray before
    KubeRay's probes gave up. The head keeps its memory limit; workers keep limits =
    requests (KubeRay sets Ray's num-cpus from the CPU limit)."""
    example = json.loads(json.dumps(EXAMPLE))
    example["spec"]["cluster"]["head"] = {"cpu": "300m", "memory": "2Gi"}
    _, job = render(example)
    pods = pod_templates(job)
    head = pods["head"]["containers"][0]["resources"]
    assert head == {"requests": {"cpu": "300m", "memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    worker = pods["workers"]["containers"][0]["resources"]
    assert worker["limits"] == {**worker["requests"]}
    assert worker["limits"]["cpu"] == "8" and worker["limits"]["nvidia.com/gpu"] == 1


def test_the_general_models_key_reaches_the_head_only_by_reference() -> None:
    _, rayjob = render()
    cluster = rayjob["spec"]["rayClusterSpec"]
    head_env = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    worker_env = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]
    key = next(e for e in head_env if e["name"] == "ANYTASKTUNE_COMPARE_API_KEY")
    assert key == {"name": "ANYTASKTUNE_COMPARE_API_KEY", "valueFrom": {"secretKeyRef": {"name": "general-model", "key": "api-key"}}}
    assert not [e for e in worker_env if e["name"] == "ANYTASKTUNE_COMPARE_API_KEY"]  # the driver runs on the head
    _, job = render()
    spec = json.loads(spec_json_of(job))
    assert spec["evaluation"]["compareWith"]["apiKeySecret"] == {"name": "general-model", "key": "api-key"}
    assert "sk-" not in json.dumps(rayjob)  # a reference, never a value


@pytest.mark.parametrize(("cluster", "own", "expected"), [(None, None, None), (7200, None, 7200), (7200, 600, 600), (None, 600, 600)])
def test_a_subtasks_own_deadline_wins_over_the_clusters(cluster: int | None, own: int | None, expected: int | None) -> None:
    example = json.loads(json.dumps(EXAMPLE))
    example["spec"]["cluster"].pop("activeDeadlineSeconds", None)
    example["spec"]["subtasks"][0].pop("activeDeadlineSeconds", None)
    if cluster is not None:
        example["spec"]["cluster"]["activeDeadlineSeconds"] = cluster
    if own is not None:
        example["spec"]["subtasks"][0]["activeDeadlineSeconds"] = own
    _, rayjob = render(example)
    assert rayjob["spec"].get("activeDeadlineSeconds") == expected
    _, other = render(example, subtask=1)
    assert other["spec"].get("activeDeadlineSeconds") == cluster  # the other sub-task keeps the pool's
    assert "activeDeadlineSeconds" not in spec_json_of(rayjob)  # not the trainjob's business: no new run id


def test_a_worst_case_spec_fits_the_submitters_command_line() -> None:
    """KubeRay's submitter passes the runtime env on one bash command line; Linux refuses an
    argument over 128 KiB (MAX_ARG_STRLEN). The CRD's limits keep the spec well below it."""
    example = json.loads(json.dumps(EXAMPLE))
    sub = example["spec"]["subtasks"][0]
    sub["instruction"] = "\U0001d11e" * 8192  # the CRD's maxLength, in 4-byte UTF-8 characters
    sub["dataset"]["uri"] = "s3://datasets/" + "k" * (1024 - len("s3://datasets/"))
    _, job = render(example)
    assert json.loads(spec_json_of(job))["instruction"] == sub["instruction"]
    assert len(job["spec"]["runtimeEnvYAML"].encode("utf-8")) < 100 * 1024
