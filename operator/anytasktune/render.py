"""Render one launch of a sub-task into Kubernetes objects (pure: no I/O).

A launch is one KubeRay `ray.io/v1` RayJob named `<taskfinetune>-<subtask>-<n>`, owned by
the TaskFineTune and labelled back to it. Its entrypoint is a fixed string; the resolved
TrainJobSpec reaches the Ray job as base64 JSON in its runtime env (`spec_runtime_env`), so
no user text is on a command line, and a launch is one write.

In cluster.mode PerSubtask the RayJob carries its own Ray cluster (`rayClusterSpec`). In
Shared mode one RayCluster per TaskFineTune (`<taskfinetune>-ray`, `render_shared_cluster`)
runs every sub-task: the RayJob names it with `clusterSelector`.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from anytasktune.config import OperatorConfig
from anytasktune.spec import GROUP, KIND, VERSION, ClusterMode, TaskFineTuneSpec
from anytasktune_contract.trainspec import COMPARE_API_KEY_ENV, DEADLINE_ENV, SPEC_B64_ENV, SecretKeyRef, TrainJobSpec

LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_TFT = f"{GROUP}/taskfinetune"
LABEL_SUBTASK = f"{GROUP}/subtask"
LABEL_RUN_ID = f"{GROUP}/run-id"  # the spec id (TrainJobSpec.spec_id); the key predates the name
LABEL_ATTEMPT = f"{GROUP}/attempt"
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_SHARED_CLUSTER = f"{GROUP}/shared-cluster"  # on the one RayCluster of a Shared-mode TaskFineTune
RAY_CLUSTER_SELECTOR = "ray.io/cluster"  # KubeRay's clusterSelector key: the RayCluster's name
MANAGER = "anytasktune"
RAY_UID = 1000  # the training image's non-root user
SUBMITTER_CONTAINER = "ray-job-submitter"
# The submitter runs two Ray CLI calls (`ray job submit --no-wait`, `ray job logs --follow`):
# one Python process of ~150 MiB. No CPU limit: a throttled `import ray` takes tens of seconds.
SUBMITTER_RESOURCES: dict[str, Any] = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}


def child_name(tft: str, subtask: str, n: int) -> str:
    return f"{tft}-{subtask}-{n}"


def shared_cluster_name(tft: str) -> str:
    return f"{tft}-ray"


def owner_reference(tft: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": tft,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_labels(tft: str, subtask: str, run_id: str, n: int) -> dict[str, str]:
    return {
        LABEL_MANAGED_BY: MANAGER,
        LABEL_TFT: tft,
        LABEL_SUBTASK: subtask,
        LABEL_RUN_ID: run_id,
        LABEL_ATTEMPT: str(n),
    }


def _metadata(name: str, namespace: str, labels: dict[str, str], owner: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": dict(labels), "ownerReferences": [owner]}


def _env(spec: TaskFineTuneSpec) -> list[dict[str, Any]]:
    storage = spec.storage
    env: list[dict[str, Any]] = [
        {"name": "AWS_DEFAULT_REGION", "value": storage.region},
        {"name": "AWS_REGION", "value": storage.region},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "HF_HUB_OFFLINE", "value": "1"},
    ]
    if storage.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": storage.endpoint})
    if spec.baseModel.cachePath:
        env.append({"name": "HF_HOME", "value": spec.baseModel.cachePath})
    secret = storage.credentialsSecret
    if secret is not None:  # credentials only by reference: never copied into our objects
        for var, key in (("AWS_ACCESS_KEY_ID", secret.accessKeyIdKey), ("AWS_SECRET_ACCESS_KEY", secret.secretAccessKeyKey)):
            env.append({"name": var, "valueFrom": {"secretKeyRef": {"name": secret.name, "key": key}}})
    return env


def _security(restricted: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pod and container security contexts satisfying Pod Security "restricted"."""
    if not restricted:
        return {}, {}
    pod = {
        "runAsNonRoot": True,
        "runAsUser": RAY_UID,
        "runAsGroup": RAY_UID,
        "fsGroup": RAY_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return pod, container


def _head_resources(spec: TaskFineTuneSpec) -> dict[str, Any]:
    """Requests as given; a memory limit but no CPU limit. The head trains nothing
    (num-cpus 0), yet starting Ray (GCS, raylet, dashboard, agents: a dozen Python
    processes importing at once) needs CPU in a burst: capped at a small request it takes
    minutes, during which KubeRay's exec probes (bash + wget, 5 s timeout) time out."""
    head = spec.cluster.head
    return {"requests": {"cpu": head.cpu, "memory": head.memory}, "limits": {"memory": head.memory}}


def _worker_resources(spec: TaskFineTuneSpec) -> dict[str, Any]:
    """Limits equal to requests (Guaranteed QoS): KubeRay gives Ray the CPU limit as
    num-cpus, and the trainer is sized by exactly these CPUs and GPUs."""
    cluster = spec.cluster
    resources: dict[str, Any] = {
        "requests": {"cpu": cluster.cpusPerWorker, "memory": cluster.memoryPerWorker},
        "limits": {"cpu": cluster.cpusPerWorker, "memory": cluster.memoryPerWorker},
    }
    if cluster.gpusPerWorker > 0:
        resources["limits"]["nvidia.com/gpu"] = cluster.gpusPerWorker
        resources["requests"]["nvidia.com/gpu"] = cluster.gpusPerWorker
    return resources


def _submitter_template(image: str, spec: TaskFineTuneSpec, config: OperatorConfig, labels: dict[str, str]) -> dict[str, Any]:
    """KubeRay's submitter pod (a Job that runs `ray job submit` against the head), with
    the training image and pull policy of the spec and the same security contexts as the
    head and workers. KubeRay's default submitter sets no security context, so Pod
    Security "restricted" refuses it and the RayJob never starts. KubeRay fills in the
    command and the RAY_DASHBOARD_ADDRESS / RAY_JOB_SUBMISSION_ID variables."""
    pod_security, container_security = _security(config.restricted_pods)
    container: dict[str, Any] = {"name": SUBMITTER_CONTAINER, "image": image, "resources": SUBMITTER_RESOURCES}
    if spec.cluster.imagePullPolicy:
        container["imagePullPolicy"] = spec.cluster.imagePullPolicy
    if container_security:
        container["securityContext"] = container_security
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        # It only talks to the Ray dashboard: no Kubernetes API token.
        "automountServiceAccountToken": False,
        "containers": [container],
    }
    if pod_security:
        pod["securityContext"] = pod_security
    return {"metadata": {"labels": dict(labels)}, "spec": pod}


def _pod_template(
    *,
    container_name: str,
    image: str,
    spec: TaskFineTuneSpec,
    config: OperatorConfig,
    resources: dict[str, Any],
    labels: dict[str, str],
    scheduling: bool,
) -> dict[str, Any]:
    cluster = spec.cluster
    pod_security, container_security = _security(config.restricted_pods)
    container: dict[str, Any] = {
        "name": container_name,
        "image": image,
        "env": _env(spec),
        "resources": resources,
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],  # torch dataloaders and NCCL need more than 64Mi
    }
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    if cluster.imagePullPolicy:
        container["imagePullPolicy"] = cluster.imagePullPolicy
    if container_security:
        container["securityContext"] = container_security
    pod: dict[str, Any] = {"containers": [container], "volumes": volumes}
    if pod_security:
        pod["securityContext"] = pod_security
    if cluster.serviceAccountName:
        pod["serviceAccountName"] = cluster.serviceAccountName
    if scheduling:  # GPU placement applies to the workers, not the CPU-only head
        if cluster.nodeSelector:
            pod["nodeSelector"] = dict(cluster.nodeSelector)
        if cluster.tolerations:
            pod["tolerations"] = [t.model_dump(mode="json", exclude_none=True) for t in cluster.tolerations]
    return {"metadata": {"labels": dict(labels)}, "spec": pod}


def _ray_cluster_spec(spec: TaskFineTuneSpec, config: OperatorConfig, image: str,
                      labels: dict[str, str], worker_pods: int, compare_secret: SecretKeyRef | None) -> dict[str, Any]:
    common: dict[str, Any] = {"image": image, "spec": spec, "config": config, "labels": labels}
    cluster: dict[str, Any] = {
        "rayVersion": spec.cluster.rayVersion,
        "headGroupSpec": {
            # The head schedules but does not train: workers hold all the CPUs/GPUs.
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _pod_template(container_name="ray-head", resources=_head_resources(spec), scheduling=False, **common),
        },
        "workerGroupSpecs": [
            {
                "groupName": "workers",
                "replicas": worker_pods,
                "minReplicas": worker_pods,
                "maxReplicas": worker_pods,
                "rayStartParams": {},
                "template": _pod_template(container_name="ray-worker", resources=_worker_resources(spec), scheduling=True, **common),
            }
        ],
    }
    if compare_secret is not None:  # the general model's key: the driver (head) only
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        head["env"].append({"name": COMPARE_API_KEY_ENV, "valueFrom": {"secretKeyRef": {
            "name": compare_secret.name, "key": compare_secret.key}}})
    return cluster


def spec_runtime_env(train: TrainJobSpec, deadline: int | None) -> str:
    """A RayJob runtimeEnvYAML (JSON is YAML) giving the Ray job its spec. Base64: KubeRay's
    submitter puts the runtime env into a bash command line inside "...", where bash still
    expands `$` and backquotes that an instruction may contain. With a deadline the driver
    stops itself once it passes: KubeRay marks a RayJob on an existing cluster Failed at its
    activeDeadlineSeconds but leaves its Ray job running on the shared cluster."""
    env_vars = {SPEC_B64_ENV: base64.b64encode(train.to_json().encode("utf-8")).decode("ascii")}
    if deadline:
        env_vars[DEADLINE_ENV] = str(deadline)
    return json.dumps({"env_vars": env_vars})


def spec_json_of(rayjob: dict[str, Any]) -> str:
    """The TrainJobSpec JSON a rendered RayJob hands its Ray job (`spec_runtime_env`'s inverse)."""
    env_vars = json.loads(rayjob["spec"]["runtimeEnvYAML"])["env_vars"]
    return base64.b64decode(env_vars[SPEC_B64_ENV], validate=True).decode("utf-8")


def compare_secret(train: TrainJobSpec) -> SecretKeyRef | None:
    compare = train.evaluation.compareWith
    return compare.apiKeySecret if compare is not None else None


def render_rayjob(
    tft: str,
    namespace: str,
    uid: str,
    spec: TaskFineTuneSpec,
    train: TrainJobSpec,
    n: int,
    config: OperatorConfig,
) -> dict[str, Any]:
    cluster = spec.cluster
    name = child_name(tft, train.subtask, n)
    labels = child_labels(tft, train.subtask, train.spec_id(), n)
    metadata = _metadata(name, namespace, labels, owner_reference(tft, uid))
    if spec.queueName:
        metadata["labels"][LABEL_KUEUE_QUEUE] = spec.queueName
    image = cluster.image or config.training_image
    rayjob_spec: dict[str, Any] = {
        "entrypoint": f"python -m {config.trainjob_module}",
        "backoffLimit": 0,  # retries are ours: classified, resumed from checkpoints
        "submissionMode": "K8sJobMode",  # KubeRay's default, explicit: docs/decisions.md
        "submitterPodTemplate": _submitter_template(image, spec, config, labels),
    }
    own = next((s.activeDeadlineSeconds for s in spec.subtasks if s.name == train.subtask), None)
    deadline = own or cluster.activeDeadlineSeconds  # the sub-task's own deadline wins
    if deadline:
        rayjob_spec["activeDeadlineSeconds"] = deadline
    if cluster.mode == ClusterMode.Shared:
        # On the TaskFineTune's RayCluster, which outlives the job: KubeRay must not shut it
        # down (and refuses a TTL without shutdown); the driver keeps the deadline itself.
        rayjob_spec |= {
            "clusterSelector": {RAY_CLUSTER_SELECTOR: shared_cluster_name(tft)},
            "shutdownAfterJobFinishes": False,
            "runtimeEnvYAML": spec_runtime_env(train, deadline),
        }
    else:  # KubeRay deletes the job's own cluster at the deadline
        rayjob_spec |= {
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": cluster.ttlSecondsAfterFinished,
            "runtimeEnvYAML": spec_runtime_env(train, None),
            "rayClusterSpec": _ray_cluster_spec(spec, config, image, labels, cluster.workers, compare_secret(train)),
        }
    if spec.queueName:
        # Kueue's contract for a RayJob: created suspended; Kueue lifts spec.suspend on
        # admission, and the operator never writes it afterwards (plan.suspension).
        rayjob_spec["suspend"] = True
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": metadata, "spec": rayjob_spec}


def shared_worker_pods(spec: TaskFineTuneSpec) -> int:
    """Room for every sub-task that may run at once: maxParallelSubtasks (or the pool, if
    smaller) times the workers of one sub-task; each Ray Train worker takes a whole pod's CPUs."""
    return spec.cluster.workers * min(spec.maxParallelSubtasks, len(spec.subtasks))


def render_shared_cluster(tft: str, namespace: str, uid: str, spec: TaskFineTuneSpec, config: OperatorConfig,
                          secret: SecretKeyRef | None) -> dict[str, Any]:
    """The one RayCluster of a Shared-mode TaskFineTune: head and worker pods as a
    sub-task's own cluster would have them."""
    name = shared_cluster_name(tft)
    labels = {LABEL_MANAGED_BY: MANAGER, LABEL_TFT: tft, LABEL_SHARED_CLUSTER: "true"}
    image = spec.cluster.image or config.training_image
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": _metadata(name, namespace, labels, owner_reference(tft, uid)),
        "spec": _ray_cluster_spec(spec, config, image, labels, shared_worker_pods(spec), secret),
    }
