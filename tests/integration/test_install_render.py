"""The Helm chart and the kustomize overlays, rendered by the real tools: `helm lint
--strict`, `helm template` (helm from the control-plane cache) and `kubectl kustomize`,
with table-driven assertions on the objects. No API server needed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from anytasktune import install
from tests.integration.helpers import helm_command
from tests.kube.controlplane import default_cache_dir

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "anytasktune"
RELEASE, NAMESPACE = "anytasktune", "anytasktune-system"
KUBECTL = os.environ.get("KUBECTL", "/usr/bin/kubectl")


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The helm binary built by `make controlplane` (as a command prefix), with throw-away config/cache dirs."""
    return helm_command(default_cache_dir() / "bin", tmp_path_factory.mktemp("helm"))


def sets(values: dict[str, Any]) -> list[str]:
    """--set-json per value: exact types, no shell-style parsing surprises."""
    return [a for k, v in values.items() for a in ("--set-json", f"{k}={json.dumps(v)}")]


def run_helm(helm: list[str], *args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*helm, *args, *sets(values or {})], capture_output=True, text=True, timeout=120)


def template(helm: list[str], **values: Any) -> list[dict[str, Any]]:
    proc = run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=values)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"{kind} {name}: {len(matches)} found"
    return matches[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


# --- lint ------------------------------------------------------------------------------

ALL_ON = {"watchNamespaces": ["team-a", "team-b"], "metrics.serviceMonitor.enabled": True, "dashboards.enabled": True,
          "podDisruptionBudget.enabled": True, "priorityClassName": "system-cluster-critical",
          "storage.credentialsSecret.name": "s3", "image.pullSecrets": ["regcred"], "logLevel": "debug"}


@pytest.mark.parametrize("values", [{}, ALL_ON], ids=["defaults", "everything-on"])
def test_helm_lint_strict(helm: list[str], values: dict[str, Any]) -> None:
    proc = run_helm(helm, "lint", "--strict", str(CHART), values=values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


# --- rendered objects ------------------------------------------------------------------

def test_defaults_render_a_cluster_wide_operator(helm: list[str]) -> None:
    objects = template(helm)
    assert kinds(objects) == ["ClusterRole", "ClusterRole", "ClusterRoleBinding", "ClusterRoleBinding",
                              "CustomResourceDefinition", "Deployment", "Service", "ServiceAccount"]
    crd = find(objects, "CustomResourceDefinition")
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["spec"] == yaml.safe_load((ROOT / "manifests/crd/anytasktune.io_taskfinetunes.yaml").read_text())["spec"]
    deployment = find(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/anytasktune/operator:0.1.0"
    assert container["args"] == ["operator"] and pod["serviceAccountName"] == "anytasktune"
    assert env_of(deployment)["ANYTASKTUNE_NAMESPACES"] == ""
    assert env_of(deployment)["ANYTASKTUNE_TRAINING_IMAGE"] == "ghcr.io/anytasktune/trainjob:0.1.0"
    assert env_of(deployment)["KOPF_RUN_LOG_FORMAT"] == "json"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    service = find(objects, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert {"name": "metrics", "containerPort": 8080, "protocol": "TCP"} in container["ports"]


def test_operator_pod_satisfies_restricted(helm: list[str]) -> None:
    pod = find(template(helm), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532,
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    container = pod["containers"][0]
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}]


@pytest.mark.parametrize(
    ("values", "role_kind", "namespaces"),
    [
        ({}, "ClusterRole", [None]),
        ({"watchNamespaces": ["team-a"]}, "Role", ["team-a"]),
        ({"watchNamespaces": ["team-a", "team-b"]}, "Role", ["team-a", "team-b"]),
    ],
    ids=["cluster-wide", "one-namespace", "two-namespaces"],
)
def test_rbac_per_mode(helm: list[str], values: dict[str, Any], role_kind: str, namespaces: list[str | None]) -> None:
    objects = template(helm, **values)
    other = "Role" if role_kind == "ClusterRole" else "ClusterRole"
    assert not [o for o in objects if o["kind"] in (other, other + "Binding")], f"no {other}s in this mode"
    roles = [o for o in objects if o["kind"] == role_kind]
    bindings = [o for o in objects if o["kind"] == role_kind + "Binding"]
    assert sorted((r["metadata"].get("namespace"), r["metadata"]["name"]) for r in roles) == sorted(
        (ns, f"anytasktune-{s}") for ns in namespaces for s in ("framework", "application"))
    for role in roles:
        rule_set = role["metadata"]["name"].rsplit("-", 1)[1]
        assert role["rules"] == install.policy_rules(rule_set)
    for binding in bindings:
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": binding["metadata"]["name"]}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "anytasktune", "namespace": NAMESPACE}]
    assert len(bindings) == len(roles)
    deployment = find(objects, "Deployment")
    assert env_of(deployment)["ANYTASKTUNE_NAMESPACES"] == ",".join(values.get("watchNamespaces", []))


ENV_CASES = [
    ({"logFormat": "plain"}, {"KOPF_RUN_LOG_FORMAT": "plain"}),
    ({"logLevel": "debug"}, {"KOPF_RUN_VERBOSE": "true"}),
    ({"logLevel": "warning"}, {"KOPF_RUN_QUIET": "true"}),
    ({"kopf.livenessPort": 9000}, {"KOPF_RUN_LIVENESS_ENDPOINT": "http://0.0.0.0:9000/healthz"}),
    ({"operator.trainingImage": "registry.example/trainjob:1"}, {"ANYTASKTUNE_TRAINING_IMAGE": "registry.example/trainjob:1"}),
    ({"operator.restrictedPods": False}, {"ANYTASKTUNE_RESTRICTED_PODS": "false"}),
    ({"operator.resyncSeconds": 15}, {"ANYTASKTUNE_RESYNC_SECONDS": "15"}),
    ({"metrics.port": 9090}, {"ANYTASKTUNE_METRICS_PORT": "9090"}),
    ({"storage.endpoint": "http://minio.storage:9000"}, {"AWS_ENDPOINT_URL_S3": "http://minio.storage:9000"}),
    ({"storage.region": "eu-west-1"}, {"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1"}),
    ({"storage.credentialsSecret.name": "s3"},
     {"AWS_ACCESS_KEY_ID": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}},
      "AWS_SECRET_ACCESS_KEY": {"secretKeyRef": {"name": "s3", "key": "AWS_SECRET_ACCESS_KEY"}}}),
    ({"extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}]}, {"HTTPS_PROXY": "http://proxy:3128"}),
]


@pytest.mark.parametrize(("values", "expected"), ENV_CASES, ids=[next(iter(v)) for v, _ in ENV_CASES])
def test_values_reach_the_operator_environment(helm: list[str], values: dict[str, Any], expected: dict[str, Any]) -> None:
    env = env_of(find(template(helm, **values), "Deployment"))
    assert {k: env.get(k) for k in expected} == expected


def test_defaults_set_no_storage_credentials_or_log_level_flags(helm: list[str]) -> None:
    env = env_of(find(template(helm), "Deployment"))
    assert not {"AWS_ACCESS_KEY_ID", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "KOPF_RUN_VERBOSE", "KOPF_RUN_QUIET"} & set(env)


POD_CASES = [
    ({"image.tag": "0.2.0"}, lambda p: p["containers"][0]["image"] == "ghcr.io/anytasktune/operator:0.2.0"),
    ({"image.digest": "sha256:" + "a" * 64}, lambda p: p["containers"][0]["image"].endswith(":0.1.0@sha256:" + "a" * 64)),
    ({"image.pullPolicy": "Always"}, lambda p: p["containers"][0]["imagePullPolicy"] == "Always"),
    ({"image.pullSecrets": ["regcred"]}, lambda p: p["imagePullSecrets"] == [{"name": "regcred"}]),
    ({"priorityClassName": "system-cluster-critical"}, lambda p: p["priorityClassName"] == "system-cluster-critical"),
    ({"nodeSelector": {"pool": "system"}}, lambda p: p["nodeSelector"] == {"pool": "system"}),
    ({"tolerations": [{"key": "k", "operator": "Exists"}]}, lambda p: p["tolerations"] == [{"key": "k", "operator": "Exists"}]),
    ({"affinity": {"nodeAffinity": {}}}, lambda p: p["affinity"] == {"nodeAffinity": {}}),
    ({"resources": {"limits": {"memory": "1Gi"}}}, lambda p: p["containers"][0]["resources"]["limits"] == {"memory": "1Gi"}),
    ({"kopf.livenessPort": 0}, lambda p: "livenessProbe" not in p["containers"][0]),
    ({"serviceAccount.name": "op"}, lambda p: p["serviceAccountName"] == "op"),
]


@pytest.mark.parametrize(("values", "check"), POD_CASES, ids=[next(iter(v)) for v, _ in POD_CASES])
def test_values_reach_the_pod(helm: list[str], values: dict[str, Any], check: Any) -> None:
    assert check(find(template(helm, **values), "Deployment")["spec"]["template"]["spec"])


def test_optional_objects(helm: list[str]) -> None:
    objects = template(helm, **{"crds.enabled": False, "metrics.service.enabled": False, "rbac.create": False,
                                "serviceAccount.create": False, "serviceAccount.name": "mine"})
    assert kinds(objects) == ["Deployment"]
    objects = template(helm, **{"crds.keep": False})
    assert "annotations" not in find(objects, "CustomResourceDefinition")["metadata"]

    objects = template(helm, **{"metrics.serviceMonitor.enabled": True, "metrics.serviceMonitor.labels": {"release": "prom"},
                                "podDisruptionBudget.enabled": True, "dashboards.enabled": True})
    monitor = find(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["honorLabels"] is True  # keep the TaskFineTune's `namespace` label
    service_labels = find(objects, "Service")["metadata"]["labels"]
    assert service_labels | monitor["spec"]["selector"]["matchLabels"] == service_labels  # it selects the Service
    assert find(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    dashboard = find(objects, "ConfigMap", "anytasktune-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["anytasktune.json"]) == json.loads((CHART / "dashboards/anytasktune.json").read_text())

    pdb = find(template(helm, **{"podDisruptionBudget.enabled": True, "podDisruptionBudget.minAvailable": 1,
                                 "podDisruptionBudget.maxUnavailable": None}), "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]


# --- values.schema.json ----------------------------------------------------------------

REJECTED = [
    ({"replicas": "two"}, "replicas"),
    ({"replicas": 2}, "replicas"),
    ({"logFormat": "xml"}, "logFormat"),
    ({"logLevel": "trace"}, "logLevel"),
    ({"watchNamespaces": ["Team_A"]}, "watchNamespaces"),
    ({"watchNamespaces": "team-a"}, "watchNamespaces"),
    ({"image.pullPolicy": "Sometimes"}, "pullPolicy"),
    ({"image.digest": "latest"}, "digest"),
    ({"storage.endpoint": "minio:9000"}, "endpoint"),
    ({"metrics.port": 0}, "port"),
    ({"operator.resyncSeconds": 0}, "resyncSeconds"),
    ({"operator.restrictedPods": "yes"}, "restrictedPods"),
    ({"metrics.serviceMonitor.interval": "30 seconds"}, "interval"),
    ({"watchNamespace": ["team-a"]}, "watchNamespace"),  # a typo: unknown keys are errors
    ({"crds": {"enable": True}}, "enable"),
]


@pytest.mark.parametrize(("values", "field"), REJECTED, ids=[f"{k}={v!r}" for d, _ in REJECTED for k, v in d.items()])
def test_schema_rejects(helm: list[str], values: dict[str, Any], field: str) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART), values=values)
    assert proc.returncode != 0, f"accepted {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert field in proc.stderr, proc.stderr


def test_service_monitor_needs_the_service(helm: list[str]) -> None:
    proc = run_helm(helm, "template", RELEASE, str(CHART),
                    values={"metrics.serviceMonitor.enabled": True, "metrics.service.enabled": False})
    assert proc.returncode != 0 and "metrics.serviceMonitor.enabled needs metrics.service.enabled" in proc.stderr


# --- kustomize -------------------------------------------------------------------------

def kustomize(overlay: str) -> list[dict[str, Any]]:
    proc = subprocess.run([KUBECTL, "kustomize", str(ROOT / "manifests" / "overlays" / overlay)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.mark.parametrize(
    ("overlay", "namespace", "role_kind", "watch"),
    [
        ("cluster-wide", "anytasktune-system", "ClusterRole", {"value": ""}),
        ("single-namespace", "anytasktune", "Role", {"valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
    ],
)
def test_kustomize_overlays(overlay: str, namespace: str, role_kind: str, watch: dict[str, Any]) -> None:
    objects = kustomize(overlay)
    assert kinds(objects) == sorted(["Namespace", "CustomResourceDefinition", "ServiceAccount", "Deployment", "Service",
                                     role_kind, role_kind, role_kind + "Binding", role_kind + "Binding"])
    assert find(objects, "Namespace")["metadata"]["name"] == namespace
    for obj in objects:
        if obj["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == namespace, obj["metadata"]
        if obj["kind"].endswith("Binding"):
            assert obj["subjects"] == [{"kind": "ServiceAccount", "name": "anytasktune-operator", "namespace": namespace}]
        if obj["kind"] == role_kind:
            assert obj["rules"] == install.policy_rules(obj["metadata"]["name"].rsplit("-", 1)[1])
    env = find(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {k: v for k, v in env[0].items() if k != "name"} == watch and env[0]["name"] == "ANYTASKTUNE_NAMESPACES"


def test_kustomize_pod_matches_the_chart_defaults(helm: list[str]) -> None:
    """manifests/base/deployment.yaml is written by hand: it must stay the chart's pod."""
    chart_pod = find(template(helm), "Deployment")["spec"]["template"]["spec"]
    base_pod = find(kustomize("cluster-wide"), "Deployment")["spec"]["template"]["spec"]
    chart_pod["serviceAccountName"] = base_pod["serviceAccountName"]  # names differ by design
    assert base_pod == chart_pod
