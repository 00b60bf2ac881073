"""Helpers for integration tests: run the operator, drive RayJobs as KubeRay would.

No kubelet and no KubeRay controller run here (they need nodes and containers), so
tests write RayJob.status through the status subresource exactly as KubeRay does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from anytasktune.ports import free_port
from tests.kube.controlplane import ControlPlane, ControlPlaneBinaryMissing

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[2]


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 45.0, interval: float = 0.3) -> T:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except AssertionError as err:  # let fn assert; keep the last reason
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def _missing(message: str) -> None:
    """A missing binary fails the run, unless the environment explicitly allows skipping."""
    if os.environ.get("ANYTASKTUNE_ALLOW_SKIP_INTEGRATION") == "1":
        pytest.skip(message)
    pytest.fail(message)


P = TypeVar("P", bound=ControlPlane)


@contextmanager
def serving(plane: P) -> Iterator[P]:
    """Start a control plane with KubeRay's CRDs installed; stop it afterwards."""
    try:
        plane.check_binaries()
    except ControlPlaneBinaryMissing as exc:
        _missing(f"integration control plane unavailable: {exc}")
    plane.start()
    try:
        plane.install_kuberay_crds()
        yield plane
    finally:
        plane.stop()


def metrics_text(port: int) -> str:
    """The operator's Prometheus metrics page."""
    return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode())


def helm_command(bin_dir: Path, home: Path, kubeconfig: Path | None = None) -> list[str]:
    """The helm built by `make controlplane`, as a command prefix with throw-away config/cache dirs."""
    path = bin_dir / "helm"
    if not os.access(path, os.X_OK):
        _missing(f"helm not found at {path}; build it with `make controlplane`")
    dirs = [f"{var}={home / var.lower()}" for var in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME")]
    return ["env", *dirs, str(path), *([f"--kubeconfig={kubeconfig}"] if kubeconfig else [])]


def announcements(message: str) -> list[str]:
    """An Event's message split back into what each sub-task's Event said (the operator
    coalesces one pass's Events of a reason: `summary.coalesce`)."""
    return re.split(r"; (?=sub-task )", message)


class OperatorProcess:
    """The real operator (`kopf run -m anytasktune.handlers`) as a subprocess."""

    def __init__(self, env: dict[str, str], log_path: Path, extra_env: dict[str, str] | None = None):
        self.env = {
            **env,
            "ANYTASKTUNE_RESYNC_SECONDS": "2",
            "ANYTASKTUNE_RETRY_BACKOFF_SECONDS": "1",
            "ANYTASKTUNE_RETRY_BACKOFF_MAX_SECONDS": "2",
            "ANYTASKTUNE_METRICS_PORT": str(free_port()),
            "ANYTASKTUNE_TRAINING_IMAGE": "registry.test/anytasktune/trainjob:test",
            # The tests read every manifest they publish (tests/integration/test_security.py
            # checks the policy itself).
            "ANYTASKTUNE_STORAGE_READ_POLICY": '[{"namespaces": ["*"], "endpoints": ["*"], "outputs": ["s3://"]}]',
            # Manifests are read from an S3 that is not there: fail fast.
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            **(extra_env or {}),
        }
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def metrics_port(self) -> int:
        return int(self.env["ANYTASKTUNE_METRICS_PORT"])

    def start(self) -> OperatorProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces", "-m", "anytasktune.handlers"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """An abrupt crash (SIGKILL), as when a node dies under the operator."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""


class Kubectl:
    """kubectl against the test control plane, returning parsed JSON."""

    def __init__(self, env: dict[str, str]):
        self.env = env

    def run(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["kubectl", *args], env=self.env, input=input, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def apply(self, obj: dict[str, Any] | str, namespace: str) -> None:
        text = obj if isinstance(obj, str) else json.dumps(obj)
        self.run("apply", "-n", namespace, "-f", "-", input=text)

    def tft(self, namespace: str, name: str) -> dict[str, Any]:
        return self.json("get", "taskfinetune", name, "-n", namespace)  # type: ignore[no-any-return]

    def rayjobs(self, namespace: str) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.json("get", "rayjobs", "-n", namespace)["items"]}

    def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        items = self.json("get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}")["items"]
        return list(items)

    def set_rayjob_status(self, namespace: str, name: str, **status: Any) -> None:
        """Write RayJob.status the way KubeRay's controller does."""
        self.run("patch", "rayjob", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", json.dumps({"status": status}))

    def create_raycluster_for(self, namespace: str, rayjob: dict[str, Any]) -> str:
        """The RayCluster KubeRay v1.4 creates for a RayJob: the RayJob's labels plus
        ray.io/originated-from-*, owned by the RayJob, named <rayjob>-<suffix>."""
        meta = rayjob["metadata"]
        name = f"{meta['name']}-x7k2p"
        labels = {**meta["labels"], "ray.io/originated-from-cr-name": meta["name"], "ray.io/originated-from-crd": "RayJob"}
        owner = {"apiVersion": "ray.io/v1", "kind": "RayJob", "name": meta["name"], "uid": meta["uid"], "controller": True}
        cluster = {"apiVersion": "ray.io/v1", "kind": "RayCluster",
                   "metadata": {"name": name, "labels": labels, "ownerReferences": [owner]},
                   "spec": rayjob["spec"]["rayClusterSpec"]}
        self.apply(cluster, namespace)
        return name

    def rayclusters(self, namespace: str) -> list[str]:
        return [o["metadata"]["name"] for o in self.json("get", "rayclusters", "-n", namespace)["items"]]

    def namespace(self, name: str) -> str:
        self.run("create", "namespace", name)
        return name


RUNNING = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING", "startTime": "2026-11-24T10:00:00Z"}
SUCCEEDED = {"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED", "endTime": "2026-11-24T10:30:00Z"}


def failed(message: str) -> dict[str, Any]:
    return {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed", "message": message,
            "endTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def taskfinetune(name: str, subtasks: list[str], **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "domain": "legal",
        "baseModel": {"uri": "s3://models/base/"},
        "storage": {"output": "s3://adapters/", "endpoint": "http://127.0.0.1:1"},
        "subtasks": [{"name": s, "dataset": {"uri": f"s3://datasets/{s}.jsonl"}, "instruction": f"Do {s}."} for s in subtasks],
        "cluster": {"workers": 1, "gpusPerWorker": 1},
    }
    body.update(spec)
    return {"apiVersion": "anytasktune.io/v1alpha1", "kind": "TaskFineTune", "metadata": {"name": name}, "spec": body}


@contextmanager
def s3_serving(tmp: Path, buckets: list[str], **kwargs: Any) -> Iterator[Any]:
    """A real S3 server (SeaweedFS, `anytasktune.s3server.EmbeddedS3`) for the duration."""
    from anytasktune.s3server import EmbeddedS3

    server = EmbeddedS3(tmp, buckets=buckets, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def s3_credentials(s3: Any) -> dict[str, str]:
    """The S3 server's keys as an operator's environment (none without a server)."""
    return {k: v for k, v in s3.env().items() if k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")} if s3 is not None else {}


@contextmanager
def operator_serving(kube_env: dict[str, str], log_dir: Path, s3: Any = None, **env: str) -> Iterator[OperatorProcess]:
    """The real operator with the S3 server's keys (if any) and `env`; its log printed at the end."""
    op = OperatorProcess(kube_env, log_dir / "operator.log", extra_env={**s3_credentials(s3), **env}).start()
    try:
        yield op
    finally:
        op.stop()
        print(op.logs())


def api_client_in_new_namespace(control_plane: ControlPlane, namespace: str, user_agent: str) -> Any:
    """A kubernetes ApiClient for the control plane (its user agent names the test in audit
    logs), after creating the namespace the test works in."""
    import kubernetes

    Kubectl(control_plane.env()).run("create", "namespace", namespace)
    client = kubernetes.config.new_client_from_config(config_file=str(control_plane.kubeconfig))
    client.user_agent = user_agent
    return client


def pod_refusals(core: Any, namespace: str, rayjob_spec: dict[str, Any]) -> dict[str, str]:
    """Dry-run create the pods KubeRay would make from a RayJob's templates (head, worker,
    submitter): role -> the API server's refusal, for each one it would not admit."""
    import copy

    from kubernetes.client.rest import ApiException

    templates = {"head": rayjob_spec["rayClusterSpec"]["headGroupSpec"]["template"],
                 "worker": rayjob_spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]}
    if "submitterPodTemplate" in rayjob_spec:
        templates["submitter"] = rayjob_spec["submitterPodTemplate"]
    refused: dict[str, str] = {}
    for role, template in templates.items():
        pod_spec = copy.deepcopy(template["spec"])
        if pod_spec.get("serviceAccountName"):  # must exist for admission; its name is checked by the schema
            pod_spec["serviceAccountName"] = "default"
        for container in pod_spec.get("containers", []):  # the Python client wants quantities as strings (1 == "1")
            for section in (container.get("resources") or {}).values():
                section.update({k: str(v) for k, v in section.items()})
        pod = {"apiVersion": "v1", "kind": "Pod", "spec": pod_spec,
               "metadata": {"name": f"probe-{role}", "labels": template["metadata"].get("labels", {})}}
        try:
            core.create_namespaced_pod(namespace, pod, dry_run="All")
        except ApiException as err:
            refused[role] = str(err.body)
    return refused
