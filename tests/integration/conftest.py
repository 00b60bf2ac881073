"""Integration tests run against a real control plane (etcd, kube-apiserver,
kube-controller-manager) built by `make controlplane`. Nothing is built here.

A missing binary is an error, unless ANYTASKTUNE_ALLOW_SKIP_INTEGRATION=1, in
which case the tests that need the control plane are skipped.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# tests/ has no __init__.py; make `tests.kube` importable under plain `pytest` too.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.integration.helpers import Kubectl, serving  # noqa: E402
from tests.kube.controlplane import ControlPlane  # noqa: E402

PROJECT_CRD_DIR = REPO_ROOT / "manifests" / "crd"


# --- project CRDs --------------------------------------------------------------
# The place where the project's own CRDs (TaskFineTune, ...) get installed:
# every *.yaml / *.yml in manifests/crd/, once that directory exists.
def install_project_crds(cp: ControlPlane) -> None:
    if not PROJECT_CRD_DIR.is_dir():
        return
    files = sorted(p for p in PROJECT_CRD_DIR.iterdir() if p.suffix in (".yaml", ".yml"))
    if not files:
        return
    applied = cp.kubectl(
        "apply", "--server-side", "--output=name", *(f"--filename={f}" for f in files)
    ).stdout.split()
    crds = [name for name in applied if name.startswith("customresourcedefinition")]
    if crds:
        cp.wait_established(crds)  # not `kubectl wait`: it fails at once while status.conditions is null


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """A started control plane with the KubeRay (and project) CRDs installed."""
    with serving(ControlPlane()) as cp:
        install_project_crds(cp)
        yield cp


@pytest.fixture(scope="session")
def kube_env(control_plane: ControlPlane) -> dict[str, str]:
    """Environment (os.environ + KUBECONFIG=admin kubeconfig) for subprocesses."""
    return control_plane.env()


@pytest.fixture(scope="module")
def k(kube_env: dict[str, str]) -> Kubectl:
    """kubectl against the shared control plane (modules with a plane of their own override it)."""
    return Kubectl(kube_env)
