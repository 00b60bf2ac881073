"""Real installs: `helm install` and `kubectl apply -k` into a real kube-apiserver, then the
operator runs as its pod would (the Deployment's args and environment) but authenticated
with its own ServiceAccount's token, and takes a TaskFineTune through its lifecycle.

The control plane here is this module's own: the API server writes an audit log of every
request made by a ServiceAccount, so the tests can prove the RBAC both sufficient (nothing
the operator needs was denied) and minimal (every rule granted was used, and the rest is
forbidden). It also enables the OwnerReferencesPermissionEnforcement admission plugin,
which OpenShift and hardened clusters run, so that the children's blockOwnerDeletion is
checked for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from anytasktune import install
from tests.integration.helpers import SUCCEEDED, Kubectl, OperatorProcess, failed, free_port, helm_command, serving, taskfinetune, wait_for
from tests.kube.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "anytasktune"
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [{"level": "Metadata", "userGroups": ["system:serviceaccounts"]}, {"level": "None"}],
}
# kopf's cluster observers (namespaces, CRDs) are not granted, by design, and kopf's
# scanning is disabled (handlers.configure): no request may be denied at all.
KOPF_SCANNING: set[tuple[str, str, str]] = set()
# Checked by the admission plugin when setting blockOwnerDeletion, never requested.
ADMISSION_ONLY = {("anytasktune.io", "taskfinetunes/finalizers", "update")}


class AuditedControlPlane(ControlPlane):
    """The test control plane plus an audit log and OwnerReferencesPermissionEnforcement."""

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        if name == "kube-apiserver":
            assert self.workdir
            policy = self.workdir / "audit-policy.yaml"
            policy.write_text(yaml.safe_dump(AUDIT_POLICY))
            self.audit_log = self.workdir / "audit.log"
            args = [*args, f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}",
                    "--audit-log-format=json", "--enable-admission-plugins=OwnerReferencesPermissionEnforcement"]
        return super()._spawn(name, args)

    def requests_by(self, username: str) -> set[tuple[str, str, str, int]]:
        """(API group, resource[/subresource], verb, code) of what `username` asked itself,
        excluding kubectl (the tests' own probes with the token)."""
        seen = set()
        for line in self.audit_log.read_text().splitlines():
            event = json.loads(line)
            if event["user"]["username"] != username or event.get("userAgent", "").startswith("kubectl"):
                continue
            ref = event.get("objectRef")
            if ref is None:
                seen.add(("", event["requestURI"].split("?")[0], event["verb"], event["responseStatus"]["code"]))
                continue
            resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            seen.add((ref.get("apiGroup", ""), resource, event["verb"], event["responseStatus"]["code"]))
        return seen


@pytest.fixture(scope="module")
def cp() -> Iterator[AuditedControlPlane]:
    with serving(AuditedControlPlane()) as plane:  # KubeRay is a prerequisite; our CRD comes with the install
        yield plane


@pytest.fixture(scope="module")
def k(cp: AuditedControlPlane) -> Kubectl:
    return Kubectl(cp.env())


@pytest.fixture(scope="module")
def helm(cp: AuditedControlPlane, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return helm_command(cp.bin_dir, tmp_path_factory.mktemp("helm"), cp.kubeconfig)


# --- helpers ---------------------------------------------------------------------------

def helm_run(helm: list[str], *args: str) -> str:
    proc = subprocess.run([*helm, *args], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc.stdout


def deployment_in(manifest: str) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "Deployment")


def restricted_namespace(k: Kubectl, name: str) -> None:
    k.run("create", "namespace", name)
    k.run("label", "namespace", name, "pod-security.kubernetes.io/enforce=restricted",
          "pod-security.kubernetes.io/enforce-version=latest")


def admit_pod(k: Kubectl, namespace: str, pod_spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """Let the API server's admission (Pod Security included) judge a pod; store nothing."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "admission-probe", "namespace": namespace}, "spec": pod_spec}
    return k.run("create", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)


class PodProcess(OperatorProcess):
    """The operator started the way its Deployment starts it: same args, same environment
    (fieldRefs resolved, Secrets left out), but with the ServiceAccount token's kubeconfig,
    free local ports and a short resync."""

    def __init__(self, cp: ControlPlane, deployment: dict[str, Any], namespace: str, log_path: Path) -> None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        self.args: list[str] = container["args"]
        env: dict[str, str] = {}
        for var in container["env"]:
            if "value" in var:
                env[var["name"]] = var["value"]
            elif var.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.namespace":
                env[var["name"]] = namespace
        sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        token = cp.kubectl("create", "token", sa, "-n", namespace, "--duration=1h").stdout.strip()
        self.kubeconfig = cp.token_kubeconfig(token, log_path.with_suffix(".kubeconfig"), user=sa)
        self.user = f"system:serviceaccount:{namespace}:{sa}"
        self.liveness_port = free_port()
        base = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        super().__init__({**base, **env, "KUBECONFIG": str(self.kubeconfig)}, log_path, extra_env={
            "ANYTASKTUNE_TRAINING_IMAGE": env["ANYTASKTUNE_TRAINING_IMAGE"],
            "KOPF_RUN_LIVENESS_ENDPOINT": f"http://127.0.0.1:{self.liveness_port}/healthz",
        })

    def start(self) -> PodProcess:
        log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        # The image's ENTRYPOINT is `anytasktune`; `python -m anytasktune.cli` is the same program.
        self.proc = subprocess.Popen([sys.executable, "-m", "anytasktune.cli", *self.args], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        return self

    def get(self, port: int, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return str(resp.read().decode())


def can_i(k: Kubectl, user: str, *args: str) -> bool:
    proc = k.run("auth", "can-i", f"--as={user}", *args, check=False)
    return proc.stdout.strip() == "yes"


def phase(k: Kubectl, ns: str, name: str) -> str:
    return str((k.tft(ns, name).get("status") or {}).get("phase", ""))


def launch_and_succeed(k: Kubectl, ns: str, name: str, subtasks: list[str]) -> dict[str, Any]:
    k.apply(taskfinetune(name, subtasks), ns)
    jobs = wait_for("RayJobs", lambda: (j := k.rayjobs(ns)) and len(j) == len(subtasks) and j)
    wait_for("status Running", lambda: phase(k, ns, name) == "Running")
    for job in jobs:
        k.set_rayjob_status(ns, job, **SUCCEEDED)
    wait_for("Succeeded", lambda: phase(k, ns, name) == "Succeeded")
    return jobs


def audit_verdict(cp: AuditedControlPlane, user: str) -> tuple[set[tuple[str, str, str]], set[tuple[str, str, str]]]:
    """(allowed, denied) resource requests of the operator, as (group, resource, verb)."""
    seen = cp.requests_by(user)
    allowed = {(g, r, v) for g, r, v, code in seen if code != 403 and not r.startswith("/")}
    denied = {(g, r, v) for g, r, v, code in seen if code == 403}
    return allowed, denied


def wait_until_watching(cp: AuditedControlPlane, op: PodProcess) -> None:
    """Until kopf's watch streams run. With kopf's scanning on and no permission on
    namespaces, kopf first retries that list for about a minute (namespaced mode)."""
    started = time.monotonic()
    watches = {("anytasktune.io", "taskfinetunes", "watch"), ("ray.io", "rayjobs", "watch")}
    wait_for("kopf watching", lambda: watches <= audit_verdict(cp, op.user)[0], timeout=150, interval=1)
    print(f"kopf watching {time.monotonic() - started:.1f}s after start")


GRANTED = {(r.group, res, verb) for rules in install.RULE_SETS.values() for r in rules for res in r.resources for verb in r.verbs}


# --- tests -----------------------------------------------------------------------------

def test_helm_install_namespaced_runs_a_full_lifecycle_on_minimal_rbac(
        cp: AuditedControlPlane, k: Kubectl, helm: list[str], tmp_path: Path) -> None:
    restricted_namespace(k, "anytasktune-system")
    team = k.namespace("team-a")
    notes = helm_run(helm, "install", "anytasktune", str(CHART), "--namespace", "anytasktune-system",
                     "--set-json", 'watchNamespaces=["team-a"]', "--set", "logFormat=full")
    assert "It serves TaskFineTunes in: team-a (Role + RoleBinding in each" in notes
    cp.wait_established(["taskfinetunes.anytasktune.io"])  # polled: kubectl wait fails on a CRD without conditions yet
    deployment = deployment_in(helm_run(helm, "get", "manifest", "anytasktune", "--namespace", "anytasktune-system"))

    # Pod Security "restricted" admits the operator's pod (and does reject a plain one).
    assert admit_pod(k, "anytasktune-system", deployment["spec"]["template"]["spec"]).returncode == 0
    plain = {"containers": [{"name": "c", "image": "busybox"}]}
    assert "violates PodSecurity" in admit_pod(k, "anytasktune-system", plain).stderr

    op = PodProcess(cp, deployment, "anytasktune-system", tmp_path / "operator.log").start()
    try:
        wait_until_watching(cp, op)
        k.apply(taskfinetune("pool", ["alpha", "beta"]), team)
        jobs = wait_for("two RayJobs", lambda: (j := k.rayjobs(team)) and len(j) == 2 and j)
        assert sorted(jobs) == ["pool-alpha-1", "pool-beta-1"]
        wait_for("status Running", lambda: phase(k, team, "pool") == "Running")
        # The chart's default training image, restricted RayJob pods, an owner that blocks deletion.
        head = jobs["pool-alpha-1"]["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        assert head["containers"][0]["image"] == "ghcr.io/anytasktune/trainjob:0.1.0"
        assert admit_pod(k, "anytasktune-system", head).returncode == 0, "RayJob pods pass Pod Security restricted"
        assert jobs["pool-alpha-1"]["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True

        # Suspend and resume (patch rayjobs), then change beta (delete the superseded RayJob).
        k.run("patch", "tft", "pool", "-n", team, "--type=merge", "-p", '{"spec":{"suspend":true}}')
        wait_for("suspended", lambda: all(j["spec"].get("suspend") is True for j in k.rayjobs(team).values()))
        k.run("patch", "tft", "pool", "-n", team, "--type=merge", "-p", '{"spec":{"suspend":false}}')
        wait_for("resumed", lambda: all(j["spec"].get("suspend") is False for j in k.rayjobs(team).values()))
        changed = taskfinetune("pool", ["alpha", "beta"])
        changed["spec"]["subtasks"][1]["lora"] = {"r": 8}
        k.apply(changed, team)
        wait_for("beta superseded", lambda: sorted(k.rayjobs(team)) == ["pool-alpha-1", "pool-beta-2"])

        # alpha fails with a retryable class while its Ray cluster is up: the operator
        # deletes the cluster (list, watch, delete rayclusters) and launches the retry.
        cluster = k.create_raycluster_for(team, k.rayjobs(team)["pool-alpha-1"])
        k.set_rayjob_status(team, "pool-alpha-1", **failed("torch.OutOfMemoryError: CUDA out of memory"))
        wait_for("failed attempt's cluster released", lambda: cluster not in k.rayclusters(team))
        wait_for("retry launched", lambda: "pool-alpha-2" in k.rayjobs(team), timeout=60)

        for job in ("pool-alpha-2", "pool-beta-2"):
            k.set_rayjob_status(team, job, **SUCCEEDED)
        wait_for("Succeeded", lambda: phase(k, team, "pool") == "Succeeded")
        reasons = wait_for("events", lambda: (r := [e["reason"] for e in k.events(team, "pool")]) and "Completed" in r and r)
        assert {"Launched", "Suspended", "Resumed", "Superseded", "Retrying", "Completed"} <= set(reasons)
        assert op.get(op.liveness_port, "/healthz")  # kopf's liveness endpoint answers
        assert "anytasktune_rayjobs_created_total 4.0" in op.get(op.metrics_port, "/metrics")

        # cluster.mode Shared: the operator creates the pool's RayCluster (create rayclusters),
        # its pods pass Pod Security "restricted", and it is deleted when the pool is done.
        k.apply(taskfinetune("shared", ["gamma"], cluster={"mode": "Shared", "workers": 1, "gpusPerWorker": 1}), team)
        wait_for("the shared RayCluster", lambda: "shared-ray" in k.rayclusters(team))
        raycluster = k.json("get", "raycluster", "shared-ray", "-n", team)["spec"]
        for group in (raycluster["headGroupSpec"], *raycluster["workerGroupSpecs"]):
            assert admit_pod(k, "anytasktune-system", group["template"]["spec"]).returncode == 0
        wait_for("its RayJob", lambda: "shared-gamma-1" in k.rayjobs(team))
        k.set_rayjob_status(team, "shared-gamma-1", **SUCCEEDED)
        wait_for("the shared RayCluster deleted", lambda: "shared-ray" not in k.rayclusters(team))
    finally:
        op.stop()
        print(op.logs())

    # Sufficient and minimal, from the API server's own audit log.
    allowed, denied = audit_verdict(cp, op.user)
    assert denied <= KOPF_SCANNING, f"denied beyond kopf's optional scanning: {denied - KOPF_SCANNING}"
    assert allowed <= GRANTED, allowed - GRANTED
    assert GRANTED - ADMISSION_ONLY <= allowed, f"granted but never used: {GRANTED - ADMISSION_ONLY - allowed}"

    # And nothing else: no Secrets, no Pods, nothing outside team-a, nothing cluster-wide.
    user = op.user
    for forbidden in (["list", "secrets", "-n", team], ["get", "secrets", "-n", team], ["create", "pods", "-n", team],
                      ["get", "configmaps", "-n", team], ["delete", "configmaps", "-n", team],
                      ["update", "taskfinetunes", "-n", team], ["delete", "taskfinetunes", "-n", team],
                      ["list", "taskfinetunes", "--all-namespaces"], ["list", "rayjobs", "--all-namespaces"],
                      ["create", "rayjobs", "-n", "default"], ["create", "events", "-n", "default"],
                      ["list", "namespaces"], ["list", "customresourcedefinitions"]):
        assert not can_i(k, user, *forbidden), forbidden
    for allowed_here in (["create", "rayjobs", "-n", team], ["patch", "taskfinetunes", "--subresource=status", "-n", team]):
        assert can_i(k, user, *allowed_here), allowed_here
    # The token itself, the way the operator holds it.
    secrets = k.run(f"--kubeconfig={op.kubeconfig}", "get", "secrets", "-n", team, check=False)
    assert secrets.returncode != 0 and "forbidden" in secrets.stderr

    # helm uninstall keeps the CRD, and with it the TaskFineTunes.
    helm_run(helm, "uninstall", "anytasktune", "--namespace", "anytasktune-system")
    assert k.tft(team, "pool")["status"]["phase"] == "Succeeded"
    assert k.tft(team, "shared")["status"]["phase"] == "Succeeded"
    assert not [r for r in k.json("get", "roles", "-n", team)["items"] if r["metadata"]["name"].startswith("anytasktune")]


def test_helm_install_cluster_wide_without_crds(cp: AuditedControlPlane, k: Kubectl, helm: list[str], tmp_path: Path) -> None:
    # The CRD is managed elsewhere (here: the kustomize copy) and the release leaves it alone.
    k.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "manifests/base/crd.yaml"))
    cp.wait_established(["taskfinetunes.anytasktune.io"])  # polled: kubectl wait fails on a CRD without conditions yet
    restricted_namespace(k, "anytasktune-cluster")
    team = k.namespace("team-b")
    helm_run(helm, "install", "anytasktune", str(CHART), "--namespace", "anytasktune-cluster", "--set", "crds.enabled=false")
    manifest = helm_run(helm, "get", "manifest", "anytasktune", "--namespace", "anytasktune-cluster")
    assert "CustomResourceDefinition" not in manifest
    op = PodProcess(cp, deployment_in(manifest), "anytasktune-cluster", tmp_path / "operator.log").start()
    try:
        wait_until_watching(cp, op)
        launch_and_succeed(k, team, "wide", ["one"])
    finally:
        op.stop()
        print(op.logs())
    allowed, denied = audit_verdict(cp, op.user)
    assert denied <= KOPF_SCANNING, denied
    assert ("anytasktune.io", "taskfinetunes", "list") in allowed  # cluster-wide list and watch
    assert can_i(k, op.user, "list", "taskfinetunes", "--all-namespaces")
    assert not can_i(k, op.user, "list", "secrets", "--all-namespaces")
    assert not can_i(k, op.user, "create", "pods", "-n", team)
    helm_run(helm, "uninstall", "anytasktune", "--namespace", "anytasktune-cluster")


def test_kustomize_single_namespace(cp: AuditedControlPlane, k: Kubectl, tmp_path: Path) -> None:
    overlay = ROOT / "manifests" / "overlays" / "single-namespace"
    # Server-side: the CRD is too large for client-side apply's last-applied annotation.
    k.run("apply", "--server-side", "--force-conflicts", "-k", str(overlay))
    rendered = k.run("kustomize", str(overlay)).stdout
    deployment = deployment_in(rendered)
    ns = deployment["metadata"]["namespace"]
    assert ns == "anytasktune"
    labels = k.json("get", "namespace", ns)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert admit_pod(k, ns, deployment["spec"]["template"]["spec"]).returncode == 0

    op = PodProcess(cp, deployment, ns, tmp_path / "operator.log").start()
    try:
        wait_until_watching(cp, op)
        jobs = launch_and_succeed(k, ns, "local", ["kw", "risk"])
        # RayJobs run in the same restricted namespace: their pods must be admitted there.
        worker = jobs["local-kw-1"]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
        assert admit_pod(k, ns, worker).returncode == 0
    finally:
        op.stop()
        print(op.logs())
    allowed, denied = audit_verdict(cp, op.user)
    assert denied <= KOPF_SCANNING, denied
    assert allowed <= GRANTED
    assert not can_i(k, op.user, "list", "taskfinetunes", "-n", "team-a")
    assert not can_i(k, op.user, "list", "taskfinetunes", "--all-namespaces")
    assert not can_i(k, op.user, "get", "secrets", "-n", ns)

    # `taskfinetunes/finalizers: update` is what OwnerReferencesPermissionEnforcement asks for
    # before it lets anyone set blockOwnerDeletion on a child: without it, creating the
    # children fails.
    tft = k.tft(ns, "local")["metadata"]
    child = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"generateName": "probe-", "namespace": ns, "ownerReferences": [
        {"apiVersion": "anytasktune.io/v1alpha1", "kind": "TaskFineTune", "name": "local", "uid": tft["uid"],
         "controller": True, "blockOwnerDeletion": True}]},  # unlabelled: not the operator's to reconcile
        "spec": {"entrypoint": "python -c pass", "clusterSelector": {"ray.io/cluster": "probe"}}}
    as_operator = (f"--kubeconfig={op.kubeconfig}", "create", "-f", "-")
    assert k.run(*as_operator, input=json.dumps(child), check=False).returncode == 0
    rules = k.json("get", "role", "anytasktune-application", "-n", ns)["rules"]
    index = rules.index(next(r for r in rules if r["resources"] == ["taskfinetunes/finalizers"]))
    k.run("patch", "role", "anytasktune-application", "-n", ns, "--type=json", "-p", json.dumps([{"op": "remove", "path": f"/rules/{index}"}]))
    denied_child = k.run(*as_operator, input=json.dumps(child), check=False)
    assert denied_child.returncode != 0 and "cannot set blockOwnerDeletion" in denied_child.stderr, denied_child.stderr
    k.run("apply", "--server-side", "--force-conflicts", "-k", str(overlay))  # restore
