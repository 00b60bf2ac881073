"""The worker's named steps, each alone: the pure ones (checkpoint schedule, progress,
score merging, summary) and, on the tiny model in this process, building the LoRA
model, saving the adapter and one evaluation pass (no Ray, no DeepSpeed)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from anytasktune_contract.trainspec import TrainingConfig, TrainJobSpec
from anytasktune_trainjob.evaluation import class_labels, examples, merge_scores, shard
from anytasktune_trainjob.summary import Clock, RunFacts, step_time_stats, summarise, timings
from anytasktune_trainjob.training import (
    TrainOutcome,
    TrainState,
    checkpoint_due,
    progress_line,
    step_metrics,
)
from anytasktune_trainjob.zero import plan_steps

MODEL_URI = "s3://bucket/models/tiny/"


def _spec(**overrides: Any) -> TrainJobSpec:
    doc: dict[str, Any] = {
        "taskFineTune": "t", "domain": "d", "subtask": "s", "instruction": "Classify",
        "taskType": "classification",
        "baseModel": {"uri": MODEL_URI},
        "dataset": {"uri": "s3://bucket/data/x.jsonl", "format": "taskfinetune"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"],
                 "modulesToSave": ["lm_head"]},
        "training": {"epochs": 2, "microBatchSize": 4, "checkpointEverySteps": 3, "maxSeqLength": 64},
        "deepspeed": {}, "evaluation": {"maxNewTokens": 3, "batchSize": 2}, "dataContract": {}, "storage": {},
        "outputPrefix": "s3://bucket/runs/t/s", "scaling": {},
    }
    doc.update(overrides)
    return TrainJobSpec.model_validate(doc)


# --- checkpoints and progress ----------------------------------------------------------
def test_checkpoint_due_every_n_steps_and_at_the_end() -> None:
    plan = plan_steps(40, 1, TrainingConfig(epochs=2, microBatchSize=4))  # 10 micro-batches per epoch, 20 steps
    assert plan.total_steps == 20
    assert [s for s in range(1, 21) if checkpoint_due(s, plan, 3, 1)] == [3, 6, 9, 12, 15, 18, 20]


def test_checkpoint_due_at_epoch_ends_when_every_is_zero() -> None:
    plan = plan_steps(40, 1, TrainingConfig(epochs=3, microBatchSize=4, gradientAccumulationSteps=2))
    assert (plan.micro_per_epoch, plan.total_steps) == (10, 15)
    assert [s for s in range(1, 16) if checkpoint_due(s, plan, 0, 2)] == [5, 10, 15]


def test_step_metrics_and_progress_line_of_a_resumed_attempt() -> None:
    plan = plan_steps(40, 1, TrainingConfig(epochs=2, microBatchSize=4))
    state = TrainState(step=12, tokens=900, start_step=10, resumed_from=10)
    m = step_metrics(state, plan, 1, 1.25, 2e-4, TrainOutcome(1.25, 300, 0.0), elapsed=4.0)
    assert m == {"step": 12, "total_steps": 20, "epoch": 1, "loss": 1.25, "lr": 2e-4,
                 "tokens_per_s": 75.0, "eta_s": 16.0}  # 2 steps in 4 s, 8 to go
    assert progress_line(m) == "step 12/20 epoch 1 loss 1.2500 lr 2.000e-04 tok/s 75 eta 0:00:16"


def test_train_state_round_trips_through_the_checkpoint_json() -> None:
    state = TrainState(step=10, tokens=1234, history=[{"step": 1, "loss": 2.0, "lr": 0.1}])
    doc = json.loads(json.dumps(state.to_json("run-1")))
    assert doc["run_id"] == "run-1"
    restored = TrainState.from_json(doc)
    assert (restored.step, restored.tokens, restored.history) == (10, 1234, state.history)
    assert restored.start_step == restored.resumed_from == 10  # a restored attempt starts where it stopped


# --- evaluation scores ---------------------------------------------------------------------
def _rows(preds_base: dict[int, str], preds_adapter: dict[int, str], loss: tuple[float, float], tokens: int) -> list:
    return [{"loss_sum": loss[0], "loss_tokens": tokens, "preds": preds_base},
            {"loss_sum": loss[1], "loss_tokens": tokens, "preds": preds_adapter}]


def test_merge_scores_puts_every_rank_back_in_record_order() -> None:
    refs = ["positive", "negative", "positive", "negative", "positive"]
    assert shard(5, 0, 2) == [0, 2, 4] and shard(5, 1, 2) == [1, 3]
    gathered = [
        _rows({0: "negative", 2: "negative", 4: "negative"}, {0: "positive", 2: "positive", 4: "Positive."},
              (6.0, 3.0), 3),
        _rows({1: "negative", 3: "positive"}, {1: "negative", 3: "negative"}, (4.0, 1.0), 2),
    ]
    results, predictions, records = merge_scores(gathered, refs, ["accuracy", "exact_match"])
    assert records["accuracy"]["base"] == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert predictions["adapter"] == ["positive", "negative", "positive", "negative", "Positive."]
    assert predictions["base"] == ["negative", "negative", "negative", "positive", "negative"]
    assert results["base"] == {"eval_loss": 2.0, "accuracy": 0.2, "exact_match": 0.2}
    assert results["adapter"] == {"eval_loss": 0.8, "accuracy": 1.0, "exact_match": 1.0}


def test_merge_scores_reads_labels_from_free_form_answers_of_both_passes() -> None:
    refs = ["high", "low"]
    gathered = [_rows({0: "The risk is high.", 1: "Risk: medium"}, {0: "high", 1: "low"}, (2.0, 1.0), 2)]
    results, _, records = merge_scores(gathered, refs, ["accuracy"], ["high", "medium", "low"])
    assert records["accuracy"] == {"base": [1.0, 0.0], "adapter": [1.0, 1.0]}
    assert results["base"]["accuracy"] == 0.5 and results["adapter"]["accuracy"] == 1.0


def test_class_labels_come_from_training_answers_of_accuracy_scored_subtasks() -> None:
    answers = ["high", "Low", "medium", "high.", "低", "高", "中", "low"] * 2
    assert set(class_labels(_spec(taskType="classification"), answers)) == {"high", "low", "medium", "低", "高", "中"}
    assert class_labels(_spec(taskType="generation"), answers) == []


def test_merge_scores_without_answer_tokens_has_nan_loss() -> None:
    results, _, _ = merge_scores([_rows({0: "a"}, {0: "a"}, (0.0, 0.0), 0)], ["a"], ["exact_match"])
    assert math.isnan(results["base"]["eval_loss"]) and results["adapter"]["exact_match"] == 1.0


# --- the summary ---------------------------------------------------------------------------
def _held(n: int) -> dict[str, Any]:
    return {"references": ["positive"] * n, "prompt_text": ["x" * 500 + f" review {i}" for i in range(n)]}


def _facts(spec: TrainJobSpec) -> RunFacts:
    return RunFacts(plan_steps(40, 2, spec.training), {"zero_optimization": {"stage": 2}}, 100, 1000, "fp32", 2)


def test_summarise_a_resumed_attempt() -> None:
    spec = _spec()
    facts = _facts(spec)  # 40 records on 2 ranks, micro-batch 4: 5 steps per epoch, 10 steps
    state = TrainState(step=10, tokens=5000, history=[{"step": s, "loss": 1.0 / s, "lr": 0.1} for s in range(1, 11)],
                       start_step=6, resumed_from=6)
    gathered = [_rows({i: "negative" for i in range(6)}, {i: "positive" for i in range(6)}, (12.0, 3.0), 6)]
    clock = Clock({"start": 0.0, "loaded": 1.0, "model": 2.5, "ready": 3.0, "trained": 10.0, "saved": 10.5, "evaluated": 12.0})
    outcome = TrainOutcome(0.1, 2000, 4.0, [1.5, 0.5, 0.75, 0.5], 812.0, None)
    summary = summarise(spec, facts, state, outcome, gathered, _held(6), clock)
    t = summary["training"]
    assert (t["startStep"], t["resumedFromStep"], t["steps"], t["stepsThisAttempt"]) == (6, 6, 10, 4)
    assert (t["tokens"], t["tokensThisAttempt"], t["tokensPerSecond"], t["stepsPerSecond"]) == (5000, 2000, 500.0, 1.0)
    assert (t["worldSize"], t["zeroStage"], t["precision"], t["finalLoss"]) == (2, 2, "fp32", 0.1)
    assert (t["trainableParams"], t["totalParams"]) == (100, 1000)
    assert t["stepSeconds"] == {"first": 1.5, "median": 0.5, "p10": 0.5, "p90": 0.75, "steadySteps": 3}
    assert (t["peakHostMemoryMiB"], t["peakGpuMemoryMiB"]) == (812.0, None)
    assert len(t["lossHistory"]) == 10
    ev = summary["evaluation"]
    assert ev["metrics"] == ["accuracy"] and ev["samples"] == 6
    assert ev["base"] == {"eval_loss": 2.0, "accuracy": 0.0} and ev["adapter"] == {"eval_loss": 0.5, "accuracy": 1.0}
    assert ev["lift"] == {"eval_loss": -1.5, "accuracy": 1.0}
    assert len(ev["examples"]) == 5 and len(ev["examples"][0]["prompt"]) == 400
    # 6 records, each 0 -> 1: the paired lift is certain, the verdict says so
    assert ev["intervals"]["accuracy"] == {"base": [0.0, 0.0], "adapter": [1.0, 1.0], "lift": [1.0, 1.0]}
    assert ev["verdict"] == "adapter wins" and ev["verdictRule"]["threshold"] == 0.0
    assert ev["bootstrap"]["paired"] is True and ev["perRecord"]["accuracy"]["base"] == [0.0] * 6
    assert summary["timings"] == {"modelDownloadSeconds": 1.0, "setupSeconds": 2.0, "modelLoadSeconds": 1.5,
                                  "deepspeedInitSeconds": 0.5, "trainSeconds": 4.0, "saveSeconds": 0.5,
                                  "evalSeconds": 1.5}


def test_a_small_mixed_lift_is_inconclusive_and_min_lift_raises_the_bar() -> None:
    spec = _spec()
    base = {i: ("positive" if i < 3 else "negative") for i in range(8)}  # right on 0, 1, 2
    adapter = {i: ("positive" if 2 <= i < 6 else "negative") for i in range(8)}  # right on 2, 3, 4, 5
    gathered = [_rows(base, adapter, (8.0, 8.0), 8)]
    held = {"references": ["positive"] * 8, "prompt_text": ["p"] * 8}
    ev = summarise(spec, _facts(spec), TrainState(step=1), TrainOutcome(), gathered, held,
                   Clock({k: 0.0 for k in ("start", "loaded", "model", "ready", "trained", "saved", "evaluated")}))["evaluation"]
    assert ev["lift"]["accuracy"] == pytest.approx(0.125)  # a lift of +0.125 on 8 records …
    lo, hi = ev["intervals"]["accuracy"]["lift"]
    assert lo < 0.0 < 0.125 < hi and ev["verdict"] == "inconclusive"  # … that the held-out set cannot confirm
    strict = _spec(evaluation={"minLift": 0.3})
    assert strict.evaluation.verdict_threshold() == 0.3


def test_summarise_an_attempt_that_had_nothing_left_to_train() -> None:
    """A rerun after the final checkpoint: no step this attempt, the loss from the history."""
    spec = _spec()
    state = TrainState(step=10, tokens=5000, history=[{"step": 10, "loss": 0.25, "lr": 0.0}], start_step=10,
                       resumed_from=10)
    t = summarise(spec, _facts(spec), state, TrainOutcome(), [_rows({0: "a"}, {0: "a"}, (1.0, 1.0), 1)],
                  _held(1), Clock({k: 0.0 for k in ("start", "loaded", "model", "ready", "trained", "saved", "evaluated")}))
    assert t["training"]["finalLoss"] == 0.25
    assert t["training"]["stepsThisAttempt"] == 0
    assert t["training"]["tokensPerSecond"] is None and t["training"]["stepsPerSecond"] is None
    assert t["training"]["stepSeconds"] is None
    assert examples(_held(1), {"base": ["a"], "adapter": ["a"]})[0]["reference"] == "positive"
    assert timings(Clock({"start": 0.0, "loaded": 2.0, "model": 2.0, "ready": 2.0, "trained": 2.0, "saved": 2.0,
                          "evaluated": 2.0}), TrainOutcome())["modelDownloadSeconds"] == 2.0


@pytest.mark.parametrize(("seconds", "expected"), [
    ([], None),
    ([2.0], {"first": 2.0, "median": 2.0, "p10": 2.0, "p90": 2.0, "steadySteps": 0}),
    ([9.0, 1.0, 3.0], {"first": 9.0, "median": 2.0, "p10": 1.0, "p90": 3.0, "steadySteps": 2}),
    # the first step (warm-up) never counts in the steady state, however slow
    ([60.0] + [1.0] * 9 + [5.0], {"first": 60.0, "median": 1.0, "p10": 1.0, "p90": 5.0, "steadySteps": 10}),
])
def test_step_time_stats(seconds: list[float], expected: dict[str, float] | None) -> None:
    assert step_time_stats(seconds) == expected


# --- the tiny model: LoRA, adapter files, one evaluation pass ------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tinymodel

    records = tinymodel.sentiment_records(24, seed=3)
    return tinymodel.save_tiny_model(tmp_path_factory.mktemp("tiny"), tinymodel.training_texts(records, "Classify"))


@pytest.fixture(scope="module")
def cpu_context() -> Any:
    import torch

    from anytasktune_trainjob.worker import WorkerContext

    return WorkerContext(rank=0, world=1, device=torch.device("cpu"), precision="fp32", dtype=torch.float32)


def test_build_lora_model_trains_only_lora_and_modules_to_save(tiny_model_dir: Path) -> None:
    import torch

    from anytasktune_trainjob.training import build_lora_model

    lora = build_lora_model(_spec(), str(tiny_model_dir), torch.float32)
    names = [n for n, p in lora.model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n or "modules_to_save" in n for n in names)
    assert any("q_proj.lora_A" in n for n in names) and any("v_proj.lora_B" in n for n in names)
    assert 0 < lora.trainable < lora.total


def test_save_adapter_writes_peft_files_naming_the_base_model(tiny_model_dir: Path, cpu_context: Any) -> None:
    import torch
    from safetensors.torch import load_file

    from anytasktune_trainjob.adapter import ADAPTER_FILES, save_adapter
    from anytasktune_trainjob.training import build_lora_model

    lora = build_lora_model(_spec(), str(tiny_model_dir), torch.float32)
    folder = save_adapter(lora.model, _spec(), cpu_context, str(tiny_model_dir), MODEL_URI)
    files = {p.name for p in folder.iterdir()}
    assert set(ADAPTER_FILES) <= files
    assert {"tokenizer.json", "tokenizer_config.json"} <= files
    assert not {"model.safetensors", "config.json"} & files  # the base model's weights stay out
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == MODEL_URI
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in tensors) and any("lm_head" in k for k in tensors)
    assert all("q_proj.weight" not in k for k in tensors)
    shutil.rmtree(folder)


def test_one_evaluation_pass_answers_every_record_of_the_shard(tiny_model_dir: Path, cpu_context: Any) -> None:
    import tinymodel
    import torch

    from anytasktune_trainjob import encoding
    from anytasktune_trainjob.adapter import save_adapter
    from anytasktune_trainjob.evaluation import evaluate_pass, load_models
    from anytasktune_trainjob.training import build_lora_model

    spec = _spec()
    folder = save_adapter(build_lora_model(spec, str(tiny_model_dir), torch.float32).model, spec, cpu_context,
                          str(tiny_model_dir), MODEL_URI)
    model, tokenizer = load_models(str(tiny_model_dir), folder, cpu_context)
    turns = [(("user", f"Classify\n\n{r['input']}"), ("assistant", r["output"]))
             for r in tinymodel.sentiment_records(5, seed=4)]
    encoded = [encoding.encode(tokenizer, t, 64) for t in turns]
    held = {"ids": encoding.TokenTable([e.input_ids for e in encoded]),
            "labels": encoding.TokenTable([e.labels for e in encoded]),
            "prompts": [encoding.generation_prompt(tokenizer, t, 60) for t in turns]}
    with torch.no_grad():
        row = evaluate_pass(model, tokenizer, held, [0, 2, 4], spec.evaluation, tokenizer.pad_token_id,
                            encoding.stop_token_ids(tokenizer), cpu_context.device)
    assert sorted(row["preds"]) == [0, 2, 4] and all(isinstance(p, str) for p in row["preds"].values())
    assert row["loss_tokens"] == sum(encoded[i].answer_tokens for i in (0, 2, 4))
    assert row["loss_sum"] > 0
    shutil.rmtree(folder)


# --- training.fusedKernels: Liger-Kernel patched into the model (the kernels need a GPU) -----


@pytest.fixture
def qwen2_module_restored() -> Any:
    """Later CPU tests must get the plain Qwen2 classes back."""
    import tinymodel

    with tinymodel.liger_patches_undone():
        yield


def test_fused_kernels_are_patched_into_the_instance_under_lora(tiny_model_dir: Path, qwen2_module_restored: Any) -> None:
    import torch
    from liger_kernel.transformers.rms_norm import LigerRMSNorm
    from liger_kernel.transformers.swiglu import LigerSwiGLUMLP

    from anytasktune_trainjob.training import build_lora_model

    spec = _spec(training={"maxSeqLength": 64, "fusedKernels": True}, scaling={"useGpu": True},
                 lora={"r": 4, "alpha": 8, "targetModules": ["q_proj", "gate_proj", "up_proj"]})
    lora = build_lora_model(spec, str(tiny_model_dir), torch.float32)
    causal_lm = lora.model.base_model.model
    layer = causal_lm.model.layers[0]
    assert layer.mlp.forward.__func__ is LigerSwiGLUMLP.forward
    assert layer.input_layernorm.forward.__func__ is LigerRMSNorm.forward
    assert causal_lm.model.norm.forward.__func__ is LigerRMSNorm.forward
    assert causal_lm.forward.__func__.__module__.startswith("liger_kernel")  # the fused linear cross-entropy
    # LoRA wraps the projections the fused MLP calls, and only LoRA trains
    assert hasattr(layer.mlp.gate_proj, "lora_A") and hasattr(layer.mlp.up_proj, "lora_A")
    assert all("lora_" in n for n, p in lora.model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("use_gpu, hide_liger, message", [
    (False, False, "training.fusedKernels needs GPUs (spec.cluster.gpusPerWorker > 0)"),
    (True, True, "training.fusedKernels needs liger-kernel in the trainjob image"),
])
def test_fused_kernels_refuse_what_cannot_run_them(use_gpu: bool, hide_liger: bool, message: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from anytasktune_contract.failures import InvalidSpecError
    from anytasktune_trainjob.training import apply_fused_kernels

    if hide_liger:
        monkeypatch.setitem(sys.modules, "liger_kernel.transformers.monkey_patch", None)  # import fails
    with pytest.raises(InvalidSpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_fused_kernels(object(), use_gpu=use_gpu)


def test_fused_kernels_name_the_unsupported_model_type() -> None:
    from types import SimpleNamespace

    from anytasktune_contract.failures import InvalidSpecError
    from anytasktune_trainjob.training import apply_fused_kernels

    with pytest.raises(InvalidSpecError, match="no kernels for model type 'gpt2'; it supports .*llama"):
        apply_fused_kernels(SimpleNamespace(config=SimpleNamespace(model_type="gpt2")), use_gpu=True)


def test_deepspeed_on_cpu_skips_its_shared_memory_inference_op() -> None:
    """DeepSpeed's communication backend JIT-builds a C++ op at its first start on CPU (~40 s
    on an idle 2-core machine; again in every new virtualenv, since the build names its
    path) that only inference_all_reduce uses; training's collectives are torch.distributed's.
    Without the skip this test would build it and get a module back."""
    from deepspeed.comm.torch import build_shm_op

    from anytasktune_trainjob.training import skip_unused_cpu_comm_op

    skip_unused_cpu_comm_op()
    assert build_shm_op() is None
