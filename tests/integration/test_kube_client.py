"""KubeClient's own requests against the real API server (no operator running)."""

from __future__ import annotations

import uuid

import pytest

from anytasktune import informer, kube
from tests.integration.helpers import Kubectl, taskfinetune


def test_the_resync_list_pages_through_metadata_only(k: Kubectl, kube_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The resync's LIST asks for metadata only and follows `continue` tokens: every
    TaskFineTune is found, namespaced and cluster-wide, and no spec or status travels."""
    a, b = k.namespace(f"resync-a-{uuid.uuid4().hex[:6]}"), k.namespace(f"resync-b-{uuid.uuid4().hex[:6]}")
    for i in range(5):
        k.apply(taskfinetune(f"pool{i}", ["alpha"]), a)
    k.apply(taskfinetune("other", ["alpha"]), b)
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", kube_env["KUBECONFIG"])  # read at import
    monkeypatch.setattr(informer, "PAGE", 2)  # three pages in namespace a
    client = kube.KubeClient()
    seen: list[dict[str, object]] = []
    list_page = client.custom.list_namespaced_custom_object

    def spy(*args: object, **kwargs: object) -> object:
        page = list_page(*args, **kwargs)
        seen.extend(page["items"])  # type: ignore[index]
        return page

    monkeypatch.setattr(client.custom, "list_namespaced_custom_object", spy)

    assert sorted(client.list_tfts((a, b))) == sorted([(a, f"pool{i}") for i in range(5)] + [(b, "other")])
    assert len(seen) == 6 and all(item.keys() <= {"apiVersion", "kind", "metadata"} for item in seen)  # metadata only
    assert all(item["kind"] == "PartialObjectMetadata" for item in seen)
    everywhere = client.list_tfts(())
    assert {(a, f"pool{i}") for i in range(5)} | {(b, "other")} <= set(everywhere)
