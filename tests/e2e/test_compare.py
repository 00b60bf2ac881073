"""The general-model comparison against a real HTTP server on loopback that speaks the
documented `/v1/chat/completions` shape and answers with the tiny local model:
same prompts, same metric, paired intervals; 429, 5xx and timeouts retried a bounded
number of times; a failed comparison recorded, never raised; a reused run compared
without retraining."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tinymodel
from chatserver import ChatServer, TinyModelAnswerer
from conftest import BUCKET, INSTRUCTION, make_spec

from anytasktune_contract.storage import ObjectStore, StorageSettings
from anytasktune_trainjob import publish
from anytasktune_trainjob.compare import compared, comparison_inputs
from anytasktune_trainjob.data import parse_dataset
from anytasktune_trainjob.identity import settle

KEY = "sk-test-general"


@pytest.fixture(scope="module")
def answerer(sentiment_data: list[dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> TinyModelAnswerer:
    folder = tinymodel.save_tiny_model(tmp_path_factory.mktemp("general"), tinymodel.training_texts(sentiment_data, INSTRUCTION))
    return TinyModelAnswerer(folder)


@pytest.fixture()
def server(answerer: TinyModelAnswerer, monkeypatch: pytest.MonkeyPatch) -> Iterator[ChatServer]:
    monkeypatch.setenv("ANYTASKTUNE_COMPARE_API_KEY", KEY)
    with ChatServer(answerer, api_key=KEY) as s:
        yield s


def _held(records: list[dict[str, str]]) -> dict[str, Any]:
    examples = parse_dataset(tinymodel.to_jsonl(records), "taskfinetune", instruction=INSTRUCTION).examples
    return {**comparison_inputs(examples), "references": [ex.answer for ex in examples]}


def _evaluation(n: int) -> dict[str, Any]:
    return {"metrics": ["accuracy"], "samples": n, "base": {"accuracy": 0.5}, "adapter": {"accuracy": 1.0},
            "classLabels": ["positive", "negative"],
            "perRecord": {"accuracy": {"base": [float(i % 2) for i in range(n)], "adapter": [1.0] * n}}}


def _spec(s3_server: Any, tiny_model_uri: str, url: str, **compare: Any) -> Any:
    cfg = {"endpoint": url, "model": "tiny-general", "apiKeySecret": {"name": "general", "key": "api-key"},
           "timeoutSeconds": 2, "maxRetries": 2, "concurrency": 2, **compare}
    return make_spec(model_uri=tiny_model_uri, dataset_uri=f"s3://{BUCKET}/x.jsonl", endpoint=s3_server.endpoint,
                     evaluation={"maxNewTokens": 3, "compareWith": cfg})


def test_the_general_model_answers_the_same_prompts_scored_the_same_way(
        server: ChatServer, s3_server: Any, tiny_model_uri: str, sentiment_data: list[dict[str, str]]) -> None:
    held = _held(sentiment_data[:6])
    # Time enough that no request is retried: each prompt is then sent exactly once, even when
    # the tiny model answers slowly beside the other lanes (at 2 s, two were sent twice in CI).
    # The retries have their own test below.
    ev = compared(_spec(s3_server, tiny_model_uri, server.url, timeoutSeconds=60), _evaluation(6), held, log=lambda _: None)
    assert ev["generalModel"]["status"] == "Succeeded" and ev["generalModel"]["model"] == "tiny-general"
    assert set(ev["general"]) == {"accuracy"} and len(ev["perRecord"]["accuracy"]["general"]) == 6
    assert ev["general"]["accuracy"] == sum(ev["perRecord"]["accuracy"]["general"]) / 6
    assert set(ev["intervals"]["accuracy"]) == {"base", "adapter", "general", "lift", "liftOverGeneral"}
    assert ev["versusGeneral"] in ("adapter wins", "inconclusive", "adapter worse") and len(ev["answers"]["general"]) == 6
    sent = [r["body"] for r in server.requests]
    assert sorted(str(b["messages"]) for b in sent) == sorted(str(m) for m in held["messages"])  # the same prompts
    assert all(b["model"] == "tiny-general" and b["temperature"] == 0 and b["max_tokens"] == 3 for b in sent)
    assert {r["auth"] for r in server.requests} == {f"Bearer {KEY}"}  # the key from the pod's secretKeyRef variable


def test_rate_limits_server_errors_and_timeouts_are_retried(
        server: ChatServer, s3_server: Any, tiny_model_uri: str, sentiment_data: list[dict[str, str]]) -> None:
    server.fail(429, times=2, retry_after=0)
    server.fail(503)
    server.stall(3.0)  # longer than timeoutSeconds: 2
    ev = compared(_spec(s3_server, tiny_model_uri, server.url, concurrency=1, maxRetries=4), _evaluation(2),
                  _held(sentiment_data[:2]), log=lambda _: None)
    info = ev["generalModel"]
    assert info["status"] == "Succeeded" and info["retries"] == 4 and info["rateLimited"] == 2
    assert info["requests"] == 6  # 2 prompts + 4 retries


@pytest.mark.parametrize(("fault", "expected"), [("500", "HTTP 500"), ("401", "HTTP 401")])
def test_a_failed_comparison_is_recorded_not_raised(
        fault: str, expected: str, server: ChatServer, s3_server: Any, tiny_model_uri: str, sentiment_data: list[dict[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    if fault == "500":
        server.fail(500, times=100)
    else:
        monkeypatch.setenv("ANYTASKTUNE_COMPARE_API_KEY", "sk-wrong")
    ev = compared(_spec(s3_server, tiny_model_uri, server.url, concurrency=1), _evaluation(3),
                  _held(sentiment_data[:3]), log=lambda _: None)
    assert ev["generalModel"]["status"] == "Failed" and expected in ev["generalModel"]["message"]
    assert ev["general"] == {} and "liftOverGeneral" not in ev.get("intervals", {}).get("accuracy", {})
    if fault == "500":
        assert len(server.requests) == 3 and "after 3 attempts" in ev["generalModel"]["message"]  # maxRetries 2
    else:
        assert len(server.requests) == 1 and "not retried" in ev["generalModel"]["message"]  # 401 is final


def test_a_reused_run_is_compared_without_training(
        server: ChatServer, s3_server: Any, s3_env: dict[str, str], tiny_model_uri: str,
        sentiment_data: list[dict[str, str]], tmp_path: Path) -> None:
    """compareWith added to a trained sub-task: a new attempt reuses the run (same run id)
    and records the general model's scores for its held-out records."""
    s3_server.client().put_object(Bucket=BUCKET, Key="compare/data.jsonl", Body=tinymodel.to_jsonl(sentiment_data).encode())
    store = ObjectStore(StorageSettings(s3_server.endpoint, "us-east-1", "path"))
    base = make_spec(model_uri=tiny_model_uri, dataset_uri=f"s3://{BUCKET}/compare/data.jsonl", endpoint=s3_server.endpoint,
                     subtask="compare", outputPrefix=f"s3://{BUCKET}/compare/pool/compare", evaluation={"maxNewTokens": 3})
    spec = settle(base, store)
    held = _held(sentiment_data[:4])
    manifest = {"runId": spec.run_id(), "spec": spec.model_dump(mode="json"),
                "evaluation": {**_evaluation(4), "recordKeys": held["keys"]}}
    store.put_json(spec.run_prefix() + "manifest.json", manifest)
    with_general = settle(base.model_copy(update={"evaluation": base.evaluation.model_copy(
        update={"compareWith": _spec(s3_server, tiny_model_uri, server.url).evaluation.compareWith})}), store)
    assert with_general.run_id() == spec.run_id() and with_general.spec_id() != spec.spec_id()
    kept = publish.without_training(with_general, store, log=lambda _: None)
    assert kept is not None
    record = publish.read_json(store, with_general.spec_prefix() + "manifest.json")
    assert record is not None and record["outcome"] == "Reused"
    assert record["evaluation"]["generalModel"]["status"] == "Succeeded" and "accuracy" in record["evaluation"]["general"]
    assert len(server.requests) == 4
