"""The test ground is a real cluster: real API server version, real KubeRay CRD
schema validation, real garbage collection / namespace deletion, real RBAC."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kube.controlplane import ControlPlane


def wait_until(cond: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false", check=False)


def rayjob(name: str, spec_overrides: dict | None = None) -> str:
    spec = {
        "entrypoint": "python -c 'print(42)'",
        "shutdownAfterJobFinishes": True,
        "rayClusterSpec": {
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {
                    "spec": {
                        "containers": [{"name": "ray-head", "image": "rayproject/ray:2.46.0"}]
                    }
                },
            }
        },
    }
    spec.update(spec_overrides or {})
    return json.dumps(
        {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name}, "spec": spec}
    )


def test_server_version(control_plane: ControlPlane) -> None:
    out = json.loads(control_plane.kubectl("version", "--output=json").stdout)
    server = out["serverVersion"]
    assert server["gitVersion"].startswith("v1.32."), server
    assert (server["major"], server["minor"]) == ("1", "32")


def test_rayjob_crd_validates(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    bad = cp.kubectl(
        "create", "-n", namespace, "-f", "-", check=False,
        input=rayjob("bad", {"shutdownAfterJobFinishes": "yes please"}),
    )
    assert bad.returncode != 0
    assert "shutdownAfterJobFinishes" in bad.stderr and "boolean" in bad.stderr, bad.stderr

    cp.kubectl("create", "-n", namespace, "-f", "-", input=rayjob("good"))
    stored = json.loads(cp.kubectl("get", "rayjob", "good", "-n", namespace, "-o", "json").stdout)
    assert stored["apiVersion"] == "ray.io/v1"
    head = stored["spec"]["rayClusterSpec"]["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["name"] == "ray-head"


def test_owner_reference_garbage_collection(control_plane: ControlPlane, namespace: str) -> None:
    cp = control_plane
    cp.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = cp.kubectl("get", "configmap", "owner", "-n", namespace,
                     "-o", "jsonpath={.metadata.uid}").stdout
    dependent = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "dependent", "ownerReferences": [
            {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid}
        ]},
    }
    cp.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(dependent))
    cp.kubectl("delete", "configmap", "owner", "-n", namespace)

    def gone() -> bool:
        res = cp.kubectl("get", "configmap", "dependent", "-n", namespace, check=False)
        return res.returncode != 0 and "NotFound" in res.stderr

    wait_until(gone, what="kube-controller-manager to collect the dependent ConfigMap")


def test_namespace_deletion_completes(control_plane: ControlPlane) -> None:
    cp = control_plane
    cp.kubectl("create", "namespace", "doomed")
    cp.kubectl("create", "configmap", "content", "-n", "doomed")
    cp.kubectl("delete", "namespace", "doomed", "--wait=false")
    wait_until(
        lambda: cp.kubectl("get", "namespace", "doomed", check=False).returncode != 0,
        what="the namespace controller to finish deleting namespace doomed",
    )


def test_service_account_token_is_subject_to_rbac(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    cp = control_plane
    cp.kubectl("create", "serviceaccount", "robot", "-n", namespace)
    token = cp.kubectl("create", "token", "robot", "-n", namespace).stdout.strip()
    assert token.count(".") == 2  # a JWT

    kubeconfig = cp.token_kubeconfig(token, tmp_path / "robot.kubeconfig")
    whoami = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:robot"

    denied = cp.kubectl("get", "secrets", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr or "forbidden" in denied.stderr, denied.stderr

    # ...and RBAC grants work too.
    cp.kubectl("create", "role", "read-secrets", "-n", namespace,
               "--verb=list", "--resource=secrets")
    cp.kubectl("create", "rolebinding", "robot-reads", "-n", namespace,
               "--role=read-secrets", f"--serviceaccount={namespace}:robot")
    wait_until(
        lambda: cp.kubectl("get", "secrets", "-n", namespace, kubeconfig=kubeconfig,
                           check=False).returncode == 0,
        timeout=10, what="the RoleBinding to take effect",
    )
