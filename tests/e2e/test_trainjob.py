"""End to end: real S3 (SeaweedFS), real Ray (local), real DeepSpeed and PEFT on a
tiny model. The main run is a crash-and-rerun: the first attempt dies after its
step-10 checkpoint, the rerun of the same spec resumes from it and publishes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import BUCKET, make_spec

from anytasktune_contract.failures import FAILURE_MARKER
from anytasktune_contract.trainspec import TrainJobSpec

pytestmark = pytest.mark.timeout(1800)  # the fixture trains twice (~2 min idle); see PROGRESS_WAIT_S
FAULT_STEP = 10


def _settled(spec: TrainJobSpec, s3_server: Any) -> TrainJobSpec:
    """The spec with its run identity looked up, as the trainjob does first."""
    from anytasktune_contract.storage import ObjectStore, StorageSettings
    from anytasktune_trainjob.identity import settle

    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        return settle(spec, ObjectStore(StorageSettings(s3_server.endpoint, "us-east-1", "path")))


def _keys(client: Any, uri: str) -> list[str]:
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"][len(prefix):] for o in page.get("Contents", []) or []]
    return out


def _get_json(client: Any, uri: str) -> Any:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.fixture(scope="module")
def resumed_run(ray_session: None, s3_server: Any, tiny_model_uri: str, dataset_uri: str) -> dict[str, Any]:
    from anytasktune_trainjob import run

    spec = _settled(make_spec(model_uri=tiny_model_uri, dataset_uri=dataset_uri, endpoint=s3_server.endpoint), s3_server)
    with pytest.raises(Exception) as crashed:
        run(spec, max_failures=0, fault_after_step=FAULT_STEP)
    checkpoints_after_crash = _keys(s3_server.client(), spec.checkpoint_prefix())
    manifest_after_crash = "manifest.json" in _keys(s3_server.client(), spec.run_prefix())
    result = run(spec, max_failures=0)
    return {"spec": spec, "crash": crashed.value, "checkpoints_after_crash": checkpoints_after_crash,
            "manifest_after_crash": manifest_after_crash, "result": result}


def test_crashed_attempt_left_a_checkpoint_and_no_manifest(resumed_run: dict[str, Any]) -> None:
    from anytasktune_contract.failures import classify

    assert "injected fault" in str(resumed_run["crash"])
    assert classify(resumed_run["crash"])[0].value == "Unknown"  # retryable
    assert any("trainer_state.json" in k for k in resumed_run["checkpoints_after_crash"])
    assert not resumed_run["manifest_after_crash"]


def test_rerun_resumes_from_checkpoint(resumed_run: dict[str, Any]) -> None:
    result = resumed_run["result"]
    assert result.resumed_from_step == FAULT_STEP > 0
    training = result.manifest["training"]
    assert training["startStep"] == FAULT_STEP
    assert training["steps"] == 30
    assert training["stepsThisAttempt"] == 30 - FAULT_STEP
    assert training["lossHistory"][0]["step"] == 1  # the history survived the restart


def test_adapter_and_manifest_published(resumed_run: dict[str, Any], s3_server: Any, tiny_model_uri: str,
                                        dataset_uri: str) -> None:
    spec: TrainJobSpec = resumed_run["spec"]
    client = s3_server.client()
    keys = set(_keys(client, spec.run_prefix()))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "manifest.json"} <= keys
    manifest = _get_json(client, spec.run_prefix() + "manifest.json")
    assert manifest == json.loads(json.dumps(resumed_run["result"].manifest))
    assert manifest["runId"] == spec.run_id()
    assert manifest["spec"] == spec.model_dump(mode="json")
    assert manifest["baseModel"]["identity"] == tiny_model_uri
    assert "model.safetensors" in manifest["baseModel"]["files"]
    ds = manifest["dataset"]
    assert ds["uri"] == dataset_uri and len(ds["sha256"]) == 64 and ds["etag"]
    assert ds["records"]["total"] == 96
    assert ds["records"]["train"] + ds["records"]["holdout"] == 96
    assert manifest["dataContract"]["passed"] is True
    ev = manifest["evaluation"]
    assert ev["metrics"] == ["accuracy"]
    assert set(ev["base"]) == set(ev["adapter"]) == set(ev["lift"]) == {"eval_loss", "accuracy"}
    assert ev["adapter"]["eval_loss"] < ev["base"]["eval_loss"]
    assert ev["lift"]["accuracy"] == pytest.approx(ev["adapter"]["accuracy"] - ev["base"]["accuracy"])
    assert ev["adapter"]["accuracy"] > ev["base"]["accuracy"]
    assert manifest["versions"]["deepspeed"] and manifest["versions"]["peft"]
    assert manifest["checkpoint"]["storagePath"].startswith(spec.checkpoint_prefix().rstrip("/"))
    assert manifest["training"]["zeroStage"] == 2 and manifest["training"]["worldSize"] == 2
    adapter_cfg = _get_json(client, spec.run_prefix() + "adapter_config.json")
    assert adapter_cfg["base_model_name_or_path"] == tiny_model_uri


def test_adapter_reloads_with_peft(resumed_run: dict[str, Any], s3_server: Any, tiny_model_uri: str,
                                   tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec: TrainJobSpec = resumed_run["spec"]
    client = s3_server.client()
    for folder, uri in ((tmp_path / "base", tiny_model_uri), (tmp_path / "adapter", spec.run_prefix())):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        for key in _keys(client, uri):
            (folder / key).parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, prefix + key, str(folder / key))
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    model = PeftModel.from_pretrained(base, tmp_path / "adapter")
    tok = AutoTokenizer.from_pretrained(tmp_path / "adapter")
    ids = tok.apply_chat_template([{"role": "user", "content": "这个手机很好，真的很好。"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(float(p.abs().sum()) > 0 for p in lora_b)  # trained, not the zero init


def test_zero3_with_gradient_checkpointing_saves_gathered_adapter(ray_session: None, s3_server: Any, tiny_model_uri: str,
                                                 dataset_uri: str) -> None:
    from anytasktune_trainjob import run

    spec = make_spec(model_uri=tiny_model_uri, dataset_uri=dataset_uri, endpoint=s3_server.endpoint,
                     subtask="sentiment-z3", deepspeed={"zeroStage": 3},
                     training={"maxSteps": 4, "checkpointEverySteps": 0, "gradientCheckpointing": True}, evaluation={"maxSamples": 4})
    result = run(spec, max_failures=0)
    assert result.manifest["training"]["zeroStage"] == 3
    tensors = _published_adapter(result, s3_server)
    assert tensors and all(t.numel() > 0 for t in tensors.values())  # gathered, not empty partitions


def test_bf16_at_zero1_on_two_workers_checkpoints_and_publishes(ray_session: None, s3_server: Any, tiny_model_uri: str,
                                                                 dataset_uri: str) -> None:
    """The GPU's precision on the CPU: bf16 at ZeRO-1 takes DeepSpeed's BF16_Optimizer (fp32
    gradients, `zero.py`), here with its fp32 state partitioned over two ranks, a checkpoint
    from each, and the adapter gathered and published."""
    import math

    from anytasktune_trainjob import run

    spec = _settled(make_spec(model_uri=tiny_model_uri, dataset_uri=dataset_uri, endpoint=s3_server.endpoint,
                              subtask="sentiment-z1-bf16", deepspeed={"zeroStage": 1, "precision": "bf16"},
                              training={"maxSteps": 4, "checkpointEverySteps": 2}, evaluation={"maxSamples": 4}),
                    s3_server)
    result = run(spec, max_failures=0)
    trained = result.manifest["training"]
    assert (trained["zeroStage"], trained["precision"], trained["worldSize"]) == (1, "bf16", 2)
    assert trained["deepspeedConfig"]["data_types"] == {"grad_accum_dtype": "fp32"}
    assert math.isfinite(trained["finalLoss"])
    checkpoints = _keys(s3_server.client(), spec.checkpoint_prefix())
    assert any("bf16_zero_pp_rank_1" in key for key in checkpoints), checkpoints  # rank 1's part of the fp32 state
    tensors = _published_adapter(result, s3_server)
    assert tensors and all(t.numel() > 0 for t in tensors.values())


def _published_adapter(result: Any, s3_server: Any) -> dict[str, Any]:
    """The published adapter's tensors, read back from S3."""
    from safetensors.torch import load

    bucket, _, key = (result.run_prefix + "adapter_model.safetensors").removeprefix("s3://").partition("/")
    return load(s3_server.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def _cli(spec: TrainJobSpec, tmp_path: Path, s3_server: Any) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "spec.json"
    path.write_text(spec.to_json(), encoding="utf-8")
    env = {**os.environ, **s3_server.env()}
    return subprocess.run([sys.executable, "-m", "anytasktune_trainjob", "--spec", str(path)],
                          capture_output=True, text=True, env=env, timeout=300)


def test_broken_dataset_fails_with_data_contract_exit_code(s3_server: Any, tiny_model_uri: str,
                                                           tmp_path: Path) -> None:
    good = [{"input": f"review {i} 很好", "output": "positive"} for i in range(20)]
    lines = [json.dumps(r, ensure_ascii=False) for r in good]
    lines[2] = json.dumps({"input": "没有答案"}, ensure_ascii=False)  # line 3: missing output
    lines[4] = '{"input": "broken json", "output": '  # line 5: invalid JSON
    s3_server.client().put_object(Bucket=BUCKET, Key="data/broken.jsonl", Body="\n".join(lines).encode())
    spec = make_spec(model_uri=tiny_model_uri, dataset_uri=f"s3://{BUCKET}/data/broken.jsonl",
                     endpoint=s3_server.endpoint, subtask="broken")
    proc = _cli(spec, tmp_path, s3_server)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{FAILURE_MARKER} class=DataContract: ")
    assert "broken.jsonl:3" in last and "missing field 'output'" in last
    assert "broken.jsonl:5" in last and "invalid JSON" in last
    assert "manifest.json" not in _keys(s3_server.client(), _settled(spec, s3_server).run_prefix())


def test_missing_dataset_object_is_invalid_spec(s3_server: Any, tiny_model_uri: str, tmp_path: Path) -> None:
    spec = make_spec(model_uri=tiny_model_uri, dataset_uri=f"s3://{BUCKET}/data/does-not-exist.jsonl",
                     endpoint=s3_server.endpoint, subtask="missing")
    proc = _cli(spec, tmp_path, s3_server)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith(f"{FAILURE_MARKER} class=InvalidSpec: ")
    assert f"bucket='{BUCKET}'" in last and "key='data/does-not-exist.jsonl'" in last
    assert s3_server.secret_key not in proc.stdout + proc.stderr
