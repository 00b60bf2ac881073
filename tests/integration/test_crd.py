"""The TaskFineTune CRD on a real kube-apiserver: examples apply, the invalid corpus
is rejected at apply time with the expected message, defaults and transition rules
behave, and the RayJobs we render are accepted by KubeRay's real CRD schema."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from anytasktune.actions import CreateCluster, Launch, Plan
from anytasktune.config import OperatorConfig
from anytasktune.plan import plan
from tests.integration.helpers import Kubectl, taskfinetune
from tests.unit.test_validation import EXAMPLES, INVALID, expectations

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def k(kube_env: dict[str, str]) -> Kubectl:
    kubectl = Kubectl(kube_env)
    kubectl.run("create", "namespace", "crd-tests")
    return kubectl


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_applies_cleanly(k: Kubectl, path: Path) -> None:
    k.run("apply", "-n", "crd-tests", "-f", str(path))
    name = yaml.safe_load(path.read_text())["metadata"]["name"]
    assert k.tft("crd-tests", name)["spec"]["domain"]
    k.run("delete", "-n", "crd-tests", "taskfinetune", name)


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_resource_is_rejected_at_apply_time(k: Kubectl, path: Path) -> None:
    expected, _ = expectations(path)
    proc = k.run("apply", "-n", "crd-tests", "-f", str(path), check=False)
    assert proc.returncode != 0, f"{path.name} was accepted by the API server"
    assert expected in proc.stderr, proc.stderr


def test_server_applies_nested_defaults(k: Kubectl) -> None:
    k.apply(taskfinetune("defaults", ["kw"]), "crd-tests")
    spec = k.tft("crd-tests", "defaults")["spec"]
    assert spec["defaults"]["lora"] == {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["q_proj", "v_proj"]}
    assert spec["defaults"]["deepspeed"]["zeroStage"] == 2
    assert spec["maxParallelSubtasks"] == 4 and spec["backoffLimit"] == 2 and spec["suspend"] is False
    assert spec["subtasks"][0]["dataset"]["format"] == "taskfinetune"
    assert spec["cluster"]["head"] == {"cpu": "2", "memory": "8Gi"}
    assert "lora" not in spec["subtasks"][0]  # overrides stay absent: defaults apply at resolve time


def test_output_prefix_is_immutable_once_training_started(k: Kubectl) -> None:
    k.apply(taskfinetune("immutable", ["kw"]), "crd-tests")
    moved = taskfinetune("immutable", ["kw"])
    moved["spec"]["storage"]["output"] = "s3://elsewhere/"
    k.apply(moved, "crd-tests")  # allowed before anything ran
    k.run("patch", "taskfinetune", "immutable", "-n", "crd-tests", "--subresource=status", "--type=merge",
          "-p", json.dumps({"status": {"startTime": "2026-11-24T10:00:00Z", "phase": "Running"}}))
    again = taskfinetune("immutable", ["kw"])
    proc = k.run("apply", "-n", "crd-tests", "-f", "-", input=json.dumps(again), check=False)
    assert proc.returncode != 0
    assert "spec.storage.output cannot change once training started" in proc.stderr


def test_printer_columns(k: Kubectl) -> None:
    k.apply(taskfinetune("columns", ["kw"]), "crd-tests")
    k.run("patch", "taskfinetune", "columns", "-n", "crd-tests", "--subresource=status", "--type=merge",
          "-p", json.dumps({"status": {"phase": "Running", "progress": "1/3"}}))
    table = k.run("get", "tft", "columns", "-n", "crd-tests").stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "DOMAIN", "PHASE", "SUBTASKS", "AGE"]
    assert row.split()[:4] == ["columns", "legal", "Running", "1/3"]


def rendered_plan(example: Path) -> Plan:
    obj: dict[str, Any] = yaml.safe_load(example.read_text())
    obj["metadata"].update(namespace="crd-tests", uid="00000000-0000-0000-0000-000000000001", generation=1)
    return plan(obj, [], {}, datetime.now(timezone.utc), OperatorConfig())


def rendered_launches(example: Path) -> list[Launch]:
    return [a for a in rendered_plan(example).actions if isinstance(a, Launch)]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_rendered_rayjobs_are_accepted_by_kuberays_crd(k: Kubectl, path: Path) -> None:
    launches = rendered_launches(path)
    assert launches
    objects = [launch.rayjob for launch in launches]
    objects += [a.raycluster for a in rendered_plan(path).actions if isinstance(a, CreateCluster)]  # cluster.mode Shared
    for obj in objects:
        # Strict server-side validation: unknown or mistyped fields are errors.
        proc = k.run("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(obj), check=False)
        assert proc.returncode == 0, f"{obj['kind']} {obj['metadata']['name']} rejected: {proc.stderr}"


def test_kuberay_crd_would_reject_a_broken_rayjob(k: Kubectl) -> None:
    """The dry run above is meaningful: the same path rejects a mistyped RayJob."""
    launch = rendered_launches(next(p for p in EXAMPLES if p.stem == "legal-assistant"))[0]
    broken = json.loads(json.dumps(launch.rayjob))
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    proc = k.run("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(broken), check=False)
    assert proc.returncode != 0 and "replicas" in proc.stderr
