"""Retraining only what changed, end to end through `anytasktune run` (real Ray,
DeepSpeed, PEFT, SeaweedFS; a tiny model): the run identity covers the dataset's
content, so

1. the first run trains both sub-tasks;
2. the same YAML again trains nothing (both reused, in seconds);
3. one dataset file replaced at the same path retrains exactly its sub-task;
4. one sub-task's spec edited retrains exactly that sub-task;
5. pinning a sub-task to its first run rolls it back without training;

and the adapter registry (index.json) lists every run, the active one first, each
of which loads with PEFT onto the base model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

import tinymodel  # noqa: E402
from chatserver import ChatServer, TinyModelAnswerer  # noqa: E402

pytestmark = pytest.mark.timeout(2400)  # the first fixture runs 2 pools; CI on a slow day: 738 s
INSTRUCTION = "Classify the sentiment of the review as positive or negative."
KEY = "sk-local-general"


def _pool(tmp: Path, pins: dict[str, str] | None = None, lora_a: int = 4) -> Path:
    general = {"endpoint": (tmp / "general.url").read_text(), "model": "tiny-general",
               "apiKeySecret": {"name": "general", "key": "api-key"}, "timeoutSeconds": 30}
    spec: dict[str, Any] = {
        "domain": "reviews",
        "baseModel": {"uri": "tiny-model"},
        "storage": {"output": "s3://local-e2e/adapters/"},
        "defaults": {
            "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]},
            "training": {"epochs": 1, "maxSteps": 2, "microBatchSize": 4, "maxSeqLength": 96, "learningRate": 0.005,
                         "checkpointEverySteps": 0, "logEverySteps": 1},
            "deepspeed": {"zeroStage": 0},
            "evaluation": {"holdout": 0.2, "maxNewTokens": 3, "maxSamples": 4, "batchSize": 4, "compareWith": general},
        },
        "subtasks": [
            {"name": "a", "taskType": "classification", "instruction": INSTRUCTION, "dataset": {"uri": "data/a.jsonl"},
             "lora": {"r": lora_a}},
            {"name": "b", "taskType": "classification", "instruction": INSTRUCTION, "dataset": {"uri": "data/b.jsonl"}},
        ],
        "cluster": {"workers": 1, "gpusPerWorker": 0},
        "maxParallelSubtasks": 1,
        "backoffLimit": 0,
    }
    for sub in spec["subtasks"]:
        if pins and sub["name"] in pins:
            sub["pin"] = pins[sub["name"]]
    path = tmp / "pool.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "anytasktune.io/v1alpha1", "kind": "TaskFineTune",
                                    "metadata": {"name": "identity"}, "spec": spec}))
    return path


def _run(tmp: Path, path: Path) -> dict[str, dict[str, Any]]:
    env = {**os.environ, "ANYTASKTUNE_COMPARE_API_KEY": KEY}  # local mode: the key from the environment
    proc = subprocess.run([sys.executable, "-m", "anytasktune.cli", "run", str(path), "--workdir", str(tmp / "out"),
                           "--no-progress"], capture_output=True, text=True, timeout=900, cwd=tmp, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    status = json.loads((tmp / "out" / "identity" / "status.json").read_text())
    return {s["name"]: {**s, "table": proc.stdout} for s in status["subtasks"]}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("identity")
    records = tinymodel.sentiment_records(48, seed=5)
    tinymodel.save_tiny_model(tmp / "tiny-model", tinymodel.training_texts(records, INSTRUCTION))
    (tmp / "data").mkdir()
    (tmp / "data" / "a.jsonl").write_text(tinymodel.to_jsonl(records[:40]), encoding="utf-8")
    (tmp / "data" / "b.jsonl").write_text(tinymodel.to_jsonl(records[8:]), encoding="utf-8")
    with ChatServer(TinyModelAnswerer(tmp / "tiny-model"), api_key=KEY) as general:
        (tmp / "general.url").write_text(general.url)
        out = _history(tmp, records)
        out["general_requests"] = len(general.requests)
    return out


def _history(tmp: Path, records: list[dict[str, str]]) -> dict[str, Any]:
    out: dict[str, Any] = {"tmp": tmp, "first": _run(tmp, _pool(tmp))}
    out["again"] = _run(tmp, _pool(tmp))
    (tmp / "data" / "b.jsonl").write_text(tinymodel.to_jsonl(records[4:44]), encoding="utf-8")  # replaced in place
    out["replaced"] = _run(tmp, _pool(tmp))
    out["edited"] = _run(tmp, _pool(tmp, lora_a=8))
    out["pinned"] = _run(tmp, _pool(tmp, pins={"b": out["first"]["b"]["runId"]}, lora_a=8))
    out["registry"] = json.loads((tmp / "out" / "identity" / "index.json").read_text())
    return out


def _outcomes(run: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: s["outcome"] for name, s in run.items()}


def test_the_first_run_trains_every_subtask(history: dict[str, Any]) -> None:
    first = history["first"]
    assert _outcomes(first) == {"a": "Trained", "b": "Trained"}
    assert first["a"]["outcomeReason"] == "first run of this sub-task"
    assert first["a"]["adapter"].endswith(f"/identity/a/runs/{first['a']['runId']}/")
    # the general model answered the same held-out prompts, scored by the same metric
    for name in ("a", "b"):
        metrics = first[name]["metrics"]
        assert metrics["comparison"] == "Succeeded" and metrics["generalModel"] == "tiny-general"
        assert "accuracy" in metrics["general"] and "liftOverGeneral" in metrics["intervals"]["accuracy"]
    assert "adapter vs general model tiny-general" in first["a"]["table"]
    assert history["general_requests"] >= 2  # two trainings (a, b) asked it; reuses did not ask again


def test_the_same_yaml_again_trains_nothing(history: dict[str, Any]) -> None:
    again = history["again"]
    assert _outcomes(again) == {"a": "Reused", "b": "Reused"}
    assert {n: s["runId"] for n, s in again.items()} == {n: s["runId"] for n, s in history["first"].items()}
    assert "already published" in again["a"]["outcomeReason"]
    assert "Trained 0 of 2 sub-tasks: nothing changed" in again["a"]["table"]


def test_a_replaced_dataset_object_retrains_exactly_its_subtask(history: dict[str, Any]) -> None:
    replaced = history["replaced"]
    assert _outcomes(replaced) == {"a": "Reused", "b": "Trained"}
    assert replaced["b"]["outcomeReason"].startswith("dataset content changed (")
    assert replaced["b"]["runId"] != history["first"]["b"]["runId"]
    assert replaced["b"]["specId"] == history["first"]["b"]["specId"]  # same spec, new content


def test_an_edited_subtask_retrains_exactly_that_subtask(history: dict[str, Any]) -> None:
    edited = history["edited"]
    assert _outcomes(edited) == {"a": "Trained", "b": "Reused"}
    assert edited["a"]["outcomeReason"] == "spec changed: lora.r"


def test_pinning_rolls_a_subtask_back_without_training(history: dict[str, Any]) -> None:
    pinned = history["pinned"]
    assert _outcomes(pinned) == {"a": "Reused", "b": "Pinned"}
    assert pinned["b"]["runId"] == history["first"]["b"]["runId"]


def test_the_registry_keeps_every_run_addressable(history: dict[str, Any]) -> None:
    registry = history["registry"]
    assert registry["kind"] == "AdapterRegistry" and set(registry["subtasks"]) == {"a", "b"}
    b = registry["subtasks"]["b"]
    assert b["active"]["runId"] == history["first"]["b"]["runId"] and b["active"]["reason"] == "Pinned"
    assert {r["runId"] for r in b["runs"]} == {history["first"]["b"]["runId"], history["replaced"]["b"]["runId"]}
    a = registry["subtasks"]["a"]
    assert a["active"]["runId"] == history["edited"]["a"]["runId"] and len(a["runs"]) == 2
    for entry in (a["active"], b["active"]):
        assert entry["adapter"].startswith("s3://local-e2e/adapters/identity/") and entry["loraRank"] in (4, 8)
        assert entry["metric"] == "accuracy" and "lift" in entry["intervals"] and entry["since"]


def test_serve_config_lists_the_active_adapters_and_each_loads_with_peft(history: dict[str, Any]) -> None:
    """What `anytasktune serve-config` tells vLLM/LoRAX to load is what the registry calls
    active, and every one of those adapters loads with PEFT onto the base model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    tmp: Path = history["tmp"]
    proc = subprocess.run([sys.executable, "-m", "anytasktune.cli", "serve-config", "identity", "--workdir",
                           str(tmp / "out"), "--base-model", str(tmp / "tiny-model"), "-o", "json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    active = {name: e["active"]["adapter"] for name, e in history["registry"]["subtasks"].items()}
    assert {a["name"]: a["adapter"] for a in config["adapters"]} == active
    assert config["vllm"]["args"][config["vllm"]["args"].index("--lora-modules") + 1:] == [
        f"{name}=/adapters/{name}" for name in sorted(active)]
    status = history["pinned"]  # the last run: its local copies are the active adapters
    for name, uri in active.items():
        assert status[name]["adapter"] == uri
        folder = tmp / "out" / "identity" / "adapters" / name
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tmp / "tiny-model"), folder)
        assert any("lora_A" in n for n, _ in model.named_parameters())
