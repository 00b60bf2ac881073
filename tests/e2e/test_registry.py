"""Run identity, reuse, pinning and the adapter registry on a real S3 server
(SeaweedFS), without training: what the trainjob does before and after Ray."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from conftest import BUCKET, make_spec

from anytasktune_contract.failures import InvalidSpecError
from anytasktune_contract.storage import ObjectStore, StorageSettings
from anytasktune_trainjob import publish, registry
from anytasktune_trainjob.identity import settle


@pytest.fixture()
def store(s3_env: dict[str, str], s3_server: Any) -> ObjectStore:
    return ObjectStore(StorageSettings(s3_server.endpoint, "us-east-1", "path"))


def _put(s3_server: Any, key: str, body: bytes) -> str:
    s3_server.client().put_object(Bucket=BUCKET, Key=key, Body=body)
    return f"s3://{BUCKET}/{key}"


def _spec(s3_server: Any, data: str, tiny_model_uri: str, prefix: str, subtask: str = "kw", **kw: Any) -> Any:
    return make_spec(model_uri=tiny_model_uri, dataset_uri=data, endpoint=s3_server.endpoint, subtask=subtask,
                     outputPrefix=f"s3://{BUCKET}/{prefix}/pool/{subtask}", taskFineTune="pool", **kw)


def _publish_fake_run(store: ObjectStore, spec: Any, lift_interval: list[float] | None = None) -> dict[str, Any]:
    """What a finished training leaves under runs/<run id>/ (the manifest is all reuse reads)."""
    manifest = {"runId": spec.run_id(), "specId": spec.spec_id(), "createdAt": "2026-11-25T10:00:00Z",
                "spec": spec.model_dump(mode="json"), "baseModel": {"identity": spec.baseModel.identity()},
                "evaluation": {"metrics": ["accuracy"], "samples": 16, "base": {"accuracy": 0.3},
                               "adapter": {"accuracy": 0.8}, "lift": {"accuracy": 0.5},
                               "intervals": {"accuracy": {"lift": lift_interval or [0.25, 0.75]}},
                               "perRecord": {"accuracy": {"base": [0.0], "adapter": [1.0]}}}}
    store.put_json(spec.run_prefix() + "manifest.json", manifest)
    return manifest


def test_run_identity_follows_the_dataset_content_not_the_upload(store: ObjectStore, s3_server: Any,
                                                                 tiny_model_uri: str) -> None:
    data = _put(s3_server, "id/data.jsonl", b'{"input": "a", "output": "b"}\n')
    first = settle(_spec(s3_server, data, tiny_model_uri, "id"), store)
    assert first.inputs is not None and first.inputs.dataset.startswith("etag:")
    assert first.inputs.baseModel.startswith(tiny_model_uri + "@") and first.inputs.trainjob
    _put(s3_server, "id/data.jsonl", b'{"input": "a", "output": "b"}\n')  # the same bytes again
    assert settle(_spec(s3_server, data, tiny_model_uri, "id"), store).run_id() == first.run_id()
    _put(s3_server, "id/data.jsonl", b'{"input": "a", "output": "c"}\n')  # replaced in place
    changed = settle(_spec(s3_server, data, tiny_model_uri, "id"), store)
    assert changed.spec_id() == first.spec_id() and changed.run_id() != first.run_id()
    # what decides only the attempt (gate, revision, pin) never changes the run identity
    gated = settle(_spec(s3_server, data, tiny_model_uri, "id", evaluation={"minLift": 0.2},
                         dataset={"uri": data, "format": "taskfinetune", "revision": "2"}), store)
    assert gated.spec_id() != changed.spec_id() and gated.run_id() == changed.run_id()


def test_a_published_identity_is_reused_and_recorded(store: ObjectStore, s3_server: Any, tiny_model_uri: str) -> None:
    data = _put(s3_server, "reuse/data.jsonl", b"x\n")
    spec = settle(_spec(s3_server, data, tiny_model_uri, "reuse"), store)
    assert publish.without_training(spec, store, log=lambda _: None) is None  # nothing published: train
    assert publish.why_trained(spec, store) == "first run of this sub-task"
    manifest = _publish_fake_run(store, spec)
    publish.record_outcome(spec, store, spec.run_id(), manifest, "Trained", "first run of this sub-task", log=lambda _: None)

    kept = publish.without_training(spec, store, log=lambda _: None)
    assert kept is not None and kept.run_id == spec.run_id() and kept.run_prefix.endswith(f"/runs/{spec.run_id()}/")
    record = publish.read_json(store, spec.spec_prefix() + "manifest.json")
    assert record is not None and record["outcome"] == "Reused" and record["runId"] == spec.run_id()
    assert "already published" in record["reason"] and record["runPrefix"] == spec.run_prefix()
    assert "perRecord" not in record["evaluation"]  # the record stays small
    doc, _ = registry.read(store, spec.registry_uri())
    assert doc is not None and doc["subtasks"]["kw"]["active"]["runId"] == spec.run_id()
    assert [r["runId"] for r in doc["subtasks"]["kw"]["runs"]] == [spec.run_id()]  # reused, not listed twice


def test_why_a_run_trains_names_what_changed(store: ObjectStore, s3_server: Any, tiny_model_uri: str) -> None:
    data = _put(s3_server, "why/data.jsonl", b"one\n")
    spec = settle(_spec(s3_server, data, tiny_model_uri, "why"), store)
    publish.record_outcome(spec, store, spec.run_id(), _publish_fake_run(store, spec), "Trained", "first", log=lambda _: None)
    _put(s3_server, "why/data.jsonl", b"two\n")
    changed = settle(_spec(s3_server, data, tiny_model_uri, "why", lora={"r": 4}), store)
    why = publish.why_trained(changed, store)
    assert why.startswith(f"dataset content changed ({spec.inputs.dataset} -> ") and "spec changed: lora.r" in why


def test_pinning_rolls_back_and_an_unknown_pin_is_refused(store: ObjectStore, s3_server: Any,
                                                          tiny_model_uri: str) -> None:
    data = _put(s3_server, "pin/data.jsonl", b"v1\n")
    v1 = settle(_spec(s3_server, data, tiny_model_uri, "pin"), store)
    publish.record_outcome(v1, store, v1.run_id(), _publish_fake_run(store, v1), "Trained", "first", log=lambda _: None)
    _put(s3_server, "pin/data.jsonl", b"v2\n")
    v2 = settle(_spec(s3_server, data, tiny_model_uri, "pin"), store)
    publish.record_outcome(v2, store, v2.run_id(), _publish_fake_run(store, v2), "Trained", "data", log=lambda _: None)
    doc, _ = registry.read(store, v2.registry_uri())
    assert doc is not None and doc["subtasks"]["kw"]["active"]["runId"] == v2.run_id()

    pinned = settle(_spec(s3_server, data, tiny_model_uri, "pin", pin=v1.run_id()), store)
    kept = publish.without_training(pinned, store, log=lambda _: None)
    assert kept is not None and kept.run_id == v1.run_id()
    doc, _ = registry.read(store, v2.registry_uri())
    assert doc is not None
    entry = doc["subtasks"]["kw"]
    assert entry["active"]["runId"] == v1.run_id() and entry["active"]["reason"] == "Pinned"
    assert {r["runId"] for r in entry["runs"]} == {v1.run_id(), v2.run_id()}  # the later run stays addressable
    with pytest.raises(InvalidSpecError, match="not published"):
        publish.without_training(_spec(s3_server, data, tiny_model_uri, "pin", pin="0123456789"), store)


def test_two_subtasks_finishing_at_once_both_land_in_the_registry(store: ObjectStore) -> None:
    """Compare-and-swap on the real server: 8 sub-tasks x 3 runs written from 8 threads
    at once, every one of the 24 runs is in the document afterwards (no lost update)."""
    uri = f"s3://{BUCKET}/race/pool/index.json"
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def finish(sub: str) -> None:
        try:
            start.wait()
            for n in range(3):
                run = {"runId": f"{sub}-{n}", "adapter": f"s3://x/{sub}/runs/{n}/"}
                registry.update(store, uri, sub, lambda e, run=run: registry.add_run(e, run, activate=True, reason="Promoted"),
                                lambda: registry.empty("pool", "ns", "d"))
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=finish, args=(f"s{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    doc, _ = registry.read(store, uri)
    assert doc is not None and sorted(doc["subtasks"]) == [f"s{i}" for i in range(8)]
    for i in range(8):
        entry = doc["subtasks"][f"s{i}"]
        assert [r["runId"] for r in entry["runs"]] == [f"s{i}-2", f"s{i}-1", f"s{i}-0"]
        assert entry["active"]["runId"] == f"s{i}-2"


def test_a_stale_write_is_refused_by_the_server(store: ObjectStore, s3_server: Any) -> None:
    """The primitive the registry relies on: SeaweedFS answers 412 to a stale If-Match
    and to If-None-Match on an existing object."""
    uri = f"s3://{BUCKET}/cas/index.json"
    assert registry._write(store, uri, {"v": 1}, None)
    assert not registry._write(store, uri, {"v": 2}, None)
    _, etag = registry.read(store, uri)
    assert registry._write(store, uri, {"v": 3}, etag)
    assert not registry._write(store, uri, {"v": 4}, etag)
    body = s3_server.client().get_object(Bucket=BUCKET, Key="cas/index.json")["Body"].read()
    assert json.loads(body) == {"v": 3}
