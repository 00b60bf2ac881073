"""Session fixtures for the trainjob e2e tests: a real S3 server (SeaweedFS),
a tiny model + tokenizer and a generated dataset uploaded to it, and one local
Ray session shared by the tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

import tinymodel  # noqa: E402

BUCKET = "anytasktune-e2e"
INSTRUCTION = "Classify the sentiment of the review as positive or negative."
# Steps of at least half a second (the trainjob sleeps after each, tests only), so that a
# fault injected after seeing one checkpoint lands before the next one, on a fast machine
# too (the tiny model's steps take ~0.05 s).
PACED = {"ANYTASKTUNE_TEST_STEP_PAUSE_S": "0.5"}
# How long a test waits on a real training's progress (Ray start, imports, model load, steps)
# before calling it hung. An idle 2-core machine needs 60-110 s for what these waits cover;
# CI's four lanes on a slow day took 5x that (stop 26: a 112 s fixture ran past 600 s, a first
# checkpoint past 300 s). A hang still fails: the waits and the tests' timeouts are bounded.
PROGRESS_WAIT_S = 900


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3 server for the whole session (it changes no environment variable)."""
    from anytasktune.s3server import EmbeddedS3

    server = EmbeddedS3(tmp_path_factory.mktemp("s3"), buckets=[BUCKET]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_env(s3_server: Any) -> Iterator[dict[str, str]]:
    """AWS_* variables pointing at the server, for one test module (boto3's and
    pyarrow's standard credential chain, and the Ray workers started inside)."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        yield s3_server.env()


@pytest.fixture(scope="session")
def sentiment_data() -> list[dict[str, str]]:
    return tinymodel.sentiment_records(96, seed=1)


@pytest.fixture(scope="session")
def tiny_model_uri(s3_server: Any, sentiment_data: list[dict[str, str]],
                   tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tinymodel.save_tiny_model(tmp_path_factory.mktemp("tiny-model"),
                                       tinymodel.training_texts(sentiment_data, INSTRUCTION))
    tinymodel.upload_folder(s3_server.client(), folder, BUCKET, "models/tiny-qwen2")
    return f"s3://{BUCKET}/models/tiny-qwen2/"


@pytest.fixture(scope="session")
def dataset_uri(s3_server: Any, sentiment_data: list[dict[str, str]]) -> str:
    s3_server.client().put_object(Bucket=BUCKET, Key="data/sentiment.jsonl",
                                  Body=tinymodel.to_jsonl(sentiment_data).encode("utf-8"))
    return f"s3://{BUCKET}/data/sentiment.jsonl"


@pytest.fixture(scope="module")
def ray_session(s3_env: dict[str, str]) -> Iterator[None]:
    """One local Ray for a test module, started after the S3 variables are set so
    that its workers inherit them. The model cache and the DeepSpeed op build dir
    stay in $ANYTASKTUNE_CACHE (default ~/.cache/anytasktune): the op is built once
    per machine."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray process on loopback
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    yield
    ray.shutdown()


def make_spec(*, model_uri: str, dataset_uri: str, endpoint: str, subtask: str = "sentiment",
              **overrides: Any) -> Any:
    from anytasktune_contract.trainspec import TrainJobSpec

    doc: dict[str, Any] = {
        "taskFineTune": "e2e-reviews",
        "domain": "reviews",
        "subtask": subtask,
        "instruction": INSTRUCTION,
        "taskType": "classification",
        "baseModel": {"uri": model_uri},
        "dataset": {"uri": dataset_uri, "format": "taskfinetune"},
        # LoRA alone barely moves a randomly initialised model; a trainable lm_head copy
        # (modulesToSave) lets it learn the labels in a few dozen steps.
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"],
                 "modulesToSave": ["lm_head"]},
        "training": {"epochs": 10, "maxSteps": 30, "learningRate": 1e-2, "microBatchSize": 8,
                     "gradientAccumulationSteps": 1, "maxSeqLength": 96, "warmupRatio": 0.1,
                     "checkpointEverySteps": 10, "logEverySteps": 5, "seed": 7},
        "deepspeed": {"zeroStage": 2, "offloadOptimizer": False, "precision": "auto"},
        "evaluation": {"holdout": 0.15, "maxNewTokens": 4, "batchSize": 8},
        "dataContract": {"minSamples": 10, "maxTruncatedFraction": 0.05, "maxDuplicateFraction": 0.0},
        "storage": {"endpoint": endpoint, "region": "us-east-1", "addressingStyle": "path"},
        "outputPrefix": f"s3://{BUCKET}/runs/e2e-reviews/{subtask}",
        "scaling": {"numWorkers": 2, "useGpu": False, "cpusPerWorker": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            doc[key] = {**doc[key], **value}
        else:
            doc[key] = value
    return TrainJobSpec.model_validate(doc)
