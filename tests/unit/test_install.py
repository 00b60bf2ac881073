"""Install artifacts without a cluster: generated files in sync with install.py, the RBAC
rules' shape, the Grafana dashboard's metric names, the Dockerfiles and image defaults."""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import importlib.util
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import Counter
from prometheus_client.metrics import MetricWrapperBase

from anytasktune import install, metrics
from anytasktune.cli import build_parser
from anytasktune.config import DEFAULT_TRAINING_IMAGE, OperatorConfig
from anytasktune.render import RAY_UID

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "anytasktune"
# The installed distribution's metadata (what `pip install -e .` made of pyproject.toml).
VERSION = importlib.metadata.version("anytasktune")
SCRIPTS = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "anytasktune"}


def extra(name: str, dist: str = "anytasktune") -> list[str]:
    """Requirements of an extra, e.g. ['kopf==1.45.2', ...]; "" = the unconditional ones."""
    marker = re.compile(rf"""extra\s*==\s*["']{name}["']""")
    reqs = importlib.metadata.requires(dist) or []
    if not name:
        return [r for r in reqs if "extra" not in r]
    return [r.split(";")[0].strip() for r in reqs if marker.search(r)]


HEAVY = re.compile(r"\b(torch|ray|deepspeed|transformers|peft|anytasktune-trainjob)\b")


# --- one source of truth ---------------------------------------------------------------

def test_generated_files_are_in_sync() -> None:
    stale = install.drifted(ROOT)
    assert not stale, f"out of date: {[str(p) for p in stale]}; run `python -m anytasktune.install`"


def test_generator_covers_chart_manifests_docs_and_gitops() -> None:
    paths = {str(p) for p in install.generated_files(ROOT)}
    assert paths == {
        "charts/anytasktune/templates/crd.yaml",
        "charts/anytasktune/templates/_rules.tpl",
        "manifests/base/crd.yaml",
        "manifests/rbac/cluster-wide/rbac.yaml",
        "manifests/rbac/single-namespace/rbac.yaml",
        "docs/install.md",
        "gitops/argocd/argocd-cm-health.yaml",
    }


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert install.main(["--root", str(tmp_path), "--check"]) == 1
    assert "out of date: manifests/base/crd.yaml" in capsys.readouterr().err
    assert install.main(["--root", str(tmp_path)]) == 0
    assert install.main(["--root", str(tmp_path), "--check"]) == 0


def test_kustomize_crd_is_the_crd_of_the_models() -> None:
    committed = yaml.safe_load((ROOT / "manifests/crd/anytasktune.io_taskfinetunes.yaml").read_text())
    assert yaml.safe_load((ROOT / "manifests/base/crd.yaml").read_text()) == committed


# --- RBAC rules ------------------------------------------------------------------------

ALL_RULES = [(name, r) for name, rules in install.RULE_SETS.items() for r in rules]
READ_ONLY_OR_NARROW = {"get", "list", "watch", "create", "patch", "delete", "update"}


@pytest.mark.parametrize(("rule_set", "rule"), ALL_RULES, ids=[f"{n}:{r.group or 'core'}/{','.join(r.resources)}" for n, r in ALL_RULES])
def test_rule_is_narrow_and_explained(rule_set: str, rule: install.Rule) -> None:
    assert "*" not in rule.resources and "*" not in rule.verbs and rule.group != "*"
    assert set(rule.verbs) <= READ_ONLY_OR_NARROW
    assert not {"secrets", "pods", "pods/exec", "serviceaccounts/token", "roles", "rolebindings"} & set(rule.resources)
    assert len(rule.why) > 40, "every rule says why the operator needs it"


def test_rule_sets_split_framework_from_application() -> None:
    framework = {(r.group, res) for r in install.FRAMEWORK_RULES for res in r.resources}
    application = {(r.group, res) for r in install.APPLICATION_RULES for res in r.resources}
    assert ("anytasktune.io", "taskfinetunes") in framework and ("", "events") in framework
    assert ("ray.io", "rayjobs") in application and ("ray.io", "rayclusters") in application
    assert ("", "configmaps") not in framework | application  # a launch is one RayJob: its spec rides in it
    assert not framework & application


def test_rbac_manifests_bind_both_sets_to_the_service_account() -> None:
    for mode, role_kind in (("cluster-wide", "ClusterRole"), ("single-namespace", "Role")):
        docs = list(yaml.safe_load_all((ROOT / f"manifests/rbac/{mode}/rbac.yaml").read_text()))
        roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == role_kind}
        bindings = [d for d in docs if d["kind"] == role_kind + "Binding"]
        assert set(roles) == {"anytasktune-framework", "anytasktune-application"}
        assert roles["anytasktune-application"]["rules"] == install.policy_rules("application")
        assert {b["roleRef"]["name"] for b in bindings} == set(roles)
        assert all(b["subjects"] == [{"kind": "ServiceAccount", "name": "anytasktune-operator", "namespace": "anytasktune-system"}]
                   for b in bindings)


# --- Grafana dashboard ---------------------------------------------------------------

def dashboard_exprs() -> list[str]:
    dash = json.loads((CHART / "dashboards" / "anytasktune.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    return exprs


def queried_metrics(expr: str) -> set[str]:
    names = set(re.findall(r"\b(anytasktune_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_dashboard_queries_only_metrics_the_operator_exports() -> None:
    used = set().union(*(queried_metrics(e) for e in dashboard_exprs()))
    assert used <= set(metrics.ALL_METRICS), used - set(metrics.ALL_METRICS)
    assert used == set(metrics.ALL_METRICS), f"not on the dashboard: {set(metrics.ALL_METRICS) - used}"


def test_dashboard_labels_exist_on_the_metrics() -> None:
    labels = {collector._name + ("_total" if isinstance(collector, Counter) else ""): set(collector._labelnames)
              for collector in vars(metrics).values() if isinstance(collector, MetricWrapperBase)}
    assert set(labels) == set(metrics.ALL_METRICS)
    for expr in dashboard_exprs():
        for group in re.findall(r"by \(([^)]*)\)", expr):
            used = {g.strip() for g in group.split(",")} - {"le"}
            allowed = set().union(*(labels.get(m, set()) for m in queried_metrics(expr)))
            assert used <= allowed, (expr, used - allowed)


# --- images --------------------------------------------------------------------------

def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "docker" / name).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def build_args(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(a.split("=", 1) for i, a in steps if i == "ARG" and "=" in a)


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics, enough for an allow-list (last match wins)."""
    result = False
    for pat in patterns:
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pat) or path.startswith(pat + "/") or fnmatch.fnmatch(path, pat.replace("**/", "*/")):
            result = not negate
    return result


@pytest.mark.parametrize("name", ["operator.Dockerfile", "trainjob.Dockerfile"])
def test_dockerfile_copies_existing_sources_not_ignored(name: str) -> None:
    ignore = [ln.strip() for ln in (ROOT / "docker" / f"{name}.dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    copies = [shlex.split(a) for i, a in dockerfile(name) if i == "COPY"]
    assert copies
    for args in copies:
        if any(a.startswith("--from") for a in args):
            continue
        sources = [a for a in args if not a.startswith("--")][:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"{name}: COPY {src}: no such file in the build context"
            assert not ignored(src, ignore), f"{name}: COPY {src} is excluded by {name}.dockerignore"


@pytest.mark.parametrize("name", ["operator.Dockerfile", "trainjob.Dockerfile"])
def test_base_images_are_pinned(name: str) -> None:
    steps = dockerfile(name)
    args = build_args(steps)
    for instr, rest in steps:
        if instr != "FROM" or rest.split()[0] in {"build"}:
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
        if image == "build" or not ("/" in image or ":" in image):
            continue
        tag = image.split("@")[0].rsplit(":", 1)[-1]
        assert "@sha256:" in image or re.match(r"^\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned to an exact version"


def test_operator_image_installs_only_the_operator_extra_and_runs_the_cli() -> None:
    steps = dockerfile("operator.Dockerfile")
    runs = " ".join(a for i, a in steps if i == "RUN")
    copies = " ".join(a for i, a in steps if i == "COPY")
    assert '"./operator[operator]"' in runs and "./contract" in runs and "anytasktune[operator]" in runs
    assert "trainjob" not in copies and "trainjob" not in runs  # no training code in the operator image
    installed = extra("") + extra("operator") + extra("", "anytasktune-contract")
    assert extra("operator") and not HEAVY.search(" ".join(installed)), installed
    entrypoint = json.loads(next(a for i, a in steps if i == "ENTRYPOINT"))
    cmd = json.loads(next(a for i, a in steps if i == "CMD"))
    assert entrypoint == ["anytasktune"] and cmd == ["operator"]
    module, _, func = SCRIPTS["anytasktune"].partition(":")
    assert callable(getattr(importlib.import_module(module), func))
    build_parser().parse_args(cmd)  # the subcommand exists
    user = next(a for i, a in steps if i == "USER")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert user == "65532:65532" and "runAsUser: 65532" in deployment
    assert values["image"]["repository"] == "ghcr.io/anytasktune/operator"


def test_trainjob_image_runs_as_the_uid_the_renderer_sets() -> None:
    steps = dockerfile("trainjob.Dockerfile")
    assert [a for i, a in steps if i == "USER"][-1].split(":")[0] == str(RAY_UID)  # the user it runs as
    runs = " ".join(a for i, a in steps if i == "RUN")
    copies = " ".join(a for i, a in steps if i == "COPY")
    assert "/tmp/anytasktune/contract \"/tmp/anytasktune/trainjob" in runs and "operator" not in copies
    ray_version = next(d for d in extra("", "anytasktune-trainjob") if d.startswith("ray[")).split("==")[1].split(";")[0].strip()
    assert build_args(steps)["RAY_IMAGE"].split(":")[1].startswith(ray_version + "-")
    module = OperatorConfig().trainjob_module
    assert importlib.util.find_spec(f"{module}.__main__") is not None


def test_image_defaults_follow_the_release() -> None:
    chart: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = VERSION
    assert chart["appVersion"] == version
    assert DEFAULT_TRAINING_IMAGE == f"ghcr.io/anytasktune/trainjob:{version}"
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    assert '"ghcr.io/anytasktune/trainjob:%s" .Chart.AppVersion' in helpers
    base = (ROOT / "manifests/base/deployment.yaml").read_text()
    assert f"image: ghcr.io/anytasktune/operator:{version}" in base
    assert f"value: {DEFAULT_TRAINING_IMAGE}" in base
