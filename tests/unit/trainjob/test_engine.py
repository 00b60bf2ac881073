"""The trainjob's DeepSpeed engine on one rank: at ZeRO-0 it skips DeepSpeed's gradient
all-reduce (an average over one rank), and the weights it trains are those DeepSpeed's own
reduction gives; ZeRO-2 keeps its reduction (it fills the optimizer's partitions). bf16 at
ZeRO-1 runs DeepSpeed's BF16_Optimizer, and its checkpoint resumes exactly. A loss
that goes nan or inf stops the loop before that step's checkpoint, and the driver fails the
run as InvalidSpec without publishing."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anytasktune_contract.trainspec import RunInputs, TrainJobSpec
from anytasktune_trainjob import encoding, training
from anytasktune_trainjob.data import parse_record
from anytasktune_trainjob.worker import worker_context


def _spec(stage: int, precision: str = "fp32", **training: Any) -> TrainJobSpec:
    return TrainJobSpec.model_validate({
        "taskFineTune": "t", "domain": "d", "subtask": "s", "instruction": "Classify", "taskType": "classification",
        "baseModel": {"uri": "s3://b/m/"}, "dataset": {"uri": "s3://b/d.jsonl"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
        "training": {"maxSteps": 3, "microBatchSize": 2, "learningRate": 1e-2, "maxSeqLength": 64, "seed": 3,
                     "warmupRatio": 0.0, **training},
        "deepspeed": {"zeroStage": stage, "precision": precision},
        "evaluation": {"holdout": 0.15, "maxNewTokens": 2, "batchSize": 8, "maxSamples": 8},
        "dataContract": {"minSamples": 10, "maxTruncatedFraction": 1.0, "maxDuplicateFraction": 0.0},
        "storage": {"endpoint": "http://127.0.0.1:1", "region": "us-east-1", "addressingStyle": "path"},
        "outputPrefix": "s3://b/out/", "scaling": {"numWorkers": 1, "useGpu": False},
    })


@pytest.fixture(scope="module")
def one_rank() -> Iterator[None]:
    """A one-rank gloo group, as Ray Train's TorchConfig makes for a one-worker job."""
    import torch.distributed as dist

    from anytasktune.ports import free_ports

    with pytest.MonkeyPatch.context() as env:  # the variables go when the module's tests are done
        for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                            "MASTER_PORT": str(free_ports(1)[0]), "DS_ACCELERATOR": "cpu"}.items():
            env.setenv(name, value)
        dist.init_process_group("gloo", rank=0, world_size=1)
        yield
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, chat_tokenizer: Any) -> Path:
    import tinymodel

    folder = tmp_path_factory.mktemp("tiny")
    model = tinymodel.build_model(len(chat_tokenizer), seed=1)
    model.save_pretrained(folder)
    chat_tokenizer.save_pretrained(folder)
    return folder


def _engine(spec: TrainJobSpec, model_dir: Path, tokenizer: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(the LoRA model, the engine, the encoded records) for 12 sentiment records."""
    import tinymodel

    lora = training.build_lora_model(spec, str(model_dir), worker_context(spec, 0, 1, 0).dtype)
    turns = [parse_record(r, "taskfinetune", "Classify") for r in tinymodel.sentiment_records(12, seed=4)]
    encoded = [encoding.encode(tokenizer, t, 64) for t in turns]
    data = {"train_ids": [e.input_ids for e in encoded], "train_labels": [e.labels for e in encoded]}
    return lora, training.build_engine(lora.model, spec, 1, len(encoded)), data


def _trained(spec: TrainJobSpec, model_dir: Path, tokenizer: Any, *, ds_reduction: bool | None) -> tuple[bool, dict[str, Any]]:
    """The engine's all-reduce switch as built, and the LoRA weights after 3 steps
    (`ds_reduction` set: DeepSpeed's reduction forced on or off, for comparison)."""
    lora, run, data = _engine(spec, model_dir, tokenizer)
    built = bool(run.engine.enable_backward_allreduce)
    if ds_reduction is not None:
        run.engine.enable_backward_allreduce = ds_reduction
    ctx = worker_context(spec, 0, 1, 0)
    for step in range(3):
        training.train_step(run, data, step, spec, ctx, tokenizer.pad_token_id)
    return built, _trainable_weights(lora.model)


def _trainable_weights(model: Any) -> dict[str, Any]:
    """A copy of the model's trained parameters, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_zero0_on_one_rank_skips_the_reduction_and_trains_the_same_weights(one_rank: None, model_dir: Path,
                                                                             chat_tokenizer: Any) -> None:
    import torch

    spec = _spec(0)
    built, skipped = _trained(spec, model_dir, chat_tokenizer, ds_reduction=None)
    assert built is False
    _, reduced = _trained(spec, model_dir, chat_tokenizer, ds_reduction=True)
    _, untrained = _trained(spec.model_copy(update={"training": spec.training.model_copy(update={"learningRate": 0.0})}),
                            model_dir, chat_tokenizer, ds_reduction=None)
    assert skipped.keys() == reduced.keys() and skipped
    for name in skipped:
        torch.testing.assert_close(skipped[name], reduced[name], rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(skipped[n], untrained[n]) for n in skipped if "lora_B" in n)  # the steps trained


def test_zero2_keeps_its_reduction(one_rank: None, model_dir: Path, chat_tokenizer: Any) -> None:
    import torch

    lora = training.build_lora_model(_spec(2), str(model_dir), torch.float32)
    assert training.build_engine(lora.model, _spec(2), 1, 12).engine.enable_backward_allreduce is True


def test_bf16_at_zero1_runs_the_bf16_optimizer_and_its_checkpoint_resumes_exactly(
        one_rank: None, model_dir: Path, chat_tokenizer: Any, tmp_path: Path) -> None:
    """Gradients accumulated in fp32 (`zero.py`) give DeepSpeed's BF16_Optimizer: fp32 master
    weights the module's bf16 weights are copied from. Its checkpoint must carry them: 2 steps,
    a checkpoint, a new engine restored from it and 1 more step train the same weights, to the
    bit, as 3 steps without a stop (on the CPU, where bf16 runs too)."""
    import torch

    spec = _spec(1, "bf16")
    ctx = worker_context(spec, 0, 1, 0)
    pad = chat_tokenizer.pad_token_id
    lora, run, data = _engine(spec, model_dir, chat_tokenizer)
    assert type(run.engine.optimizer).__name__ == "BF16_Optimizer"
    assert {p.dtype for p in lora.model.parameters() if p.requires_grad} == {torch.bfloat16}
    before = _trainable_weights(lora.model)
    for step in range(3):
        training.train_step(run, data, step, spec, ctx, pad)
    straight = _trainable_weights(lora.model)

    lora, run, data = _engine(spec, model_dir, chat_tokenizer)
    for step in range(2):
        training.train_step(run, data, step, spec, ctx, pad)
    assert training.write_checkpoint(run.engine, tmp_path, training.TrainState(step=2), 0, "run")
    lora, run, data = _engine(spec, model_dir, chat_tokenizer)
    assert training.load_checkpoint(run.engine, tmp_path).step == 2
    training.train_step(run, data, 2, spec, ctx, pad)
    resumed = _trainable_weights(lora.model)

    assert straight.keys() == resumed.keys() and straight
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert any(not torch.equal(straight[n], before[n]) for n in straight if "lora_B" in n)  # the steps trained


def test_a_bf16_zero1_checkpoint_of_the_earlier_build_resumes_into_the_bf16_optimizer(
        one_rank: None, model_dir: Path, chat_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run checkpointed by the build before fp32 gradient accumulation (bf16 at ZeRO-1 then
    ran DeepSpeed's ZeRO optimizer) and resumed after an upgrade: the run id is the same (the
    trainjob's version did not change), so the new BF16_Optimizer must restore that checkpoint's
    fp32 master weights and Adam state, to the bit, not start its optimizer again."""
    import torch

    spec = _spec(1, "bf16")
    ctx = worker_context(spec, 0, 1, 0)
    pad = chat_tokenizer.pad_token_id
    this_build = training.build_deepspeed_config

    def earlier_build(*args: Any, **kwargs: Any) -> dict[str, Any]:
        config = this_build(*args, **kwargs)
        config.pop("data_types")  # all that commit 5cef9b8 added
        return config

    monkeypatch.setattr(training, "build_deepspeed_config", earlier_build)
    _, run, data = _engine(spec, model_dir, chat_tokenizer)
    assert type(run.engine.optimizer).__name__ == "DeepSpeedZeroOptimizer"
    for step in range(2):
        training.train_step(run, data, step, spec, ctx, pad)
    assert training.write_checkpoint(run.engine, tmp_path, training.TrainState(step=2), 0, "run")
    master = run.engine.optimizer.single_partition_of_fp32_groups[0].detach().clone()
    adam = {k: torch.as_tensor(v).clone() for k, v in next(iter(run.engine.optimizer.optimizer.state.values())).items()}

    monkeypatch.setattr(training, "build_deepspeed_config", this_build)
    _, run, _ = _engine(spec, model_dir, chat_tokenizer)
    assert type(run.engine.optimizer).__name__ == "BF16_Optimizer"
    assert training.load_checkpoint(run.engine, tmp_path).step == 2
    assert torch.equal(run.engine.optimizer.fp32_groups_flat_partition[0], master)
    restored = next(iter(run.engine.optimizer.optimizer.state.values()))
    assert adam.keys() == restored.keys() >= {"step", "exp_avg", "exp_avg_sq"}
    for key, value in adam.items():
        assert torch.equal(torch.as_tensor(restored[key]), value), key
    assert float(adam["exp_avg"].abs().sum()) > 0  # two steps' moments, not a fresh optimizer's zeros


@pytest.mark.parametrize("loss, expected", [
    (2.5, None), (0.0, None),
    (math.nan, "training diverged at step 7: the loss is nan (learning rate 0.001)"),
    (math.inf, "training diverged at step 7: the loss is inf"),
    (-math.inf, "training diverged at step 7: the loss is -inf"),
])
def test_divergence_names_the_step_and_the_loss(loss: float, expected: str | None) -> None:
    found = training.divergence(7, loss, 1e-3)
    assert found == expected if expected is None else (found or "").startswith(expected)


def test_a_diverging_loss_stops_the_loop_before_that_steps_checkpoint(one_rank: None, model_dir: Path,
                                                                      chat_tokenizer: Any, monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A real divergence: AdamW's first update moves each trained weight by ~the learning rate;
    at 1e30 (past the schema's bound of 1, set without validation: a tiny fp32 model does not
    overflow at any rate the schema allows) the trained lm_head's logits overflow at step 3.
    Steps 1 and 2 are finite and checkpointed; the loop stops at step 3, before its
    checkpoint, and says why."""
    spec = _spec(0, maxSteps=6, checkpointEverySteps=1)
    spec = spec.model_copy(update={"training": spec.training.model_copy(update={"learningRate": 1e30}),
                                   "lora": spec.lora.model_copy(update={"modulesToSave": ["lm_head"]}),
                                   "inputs": RunInputs(dataset="d", baseModel="m", trainjob="t")})
    _, run, data = _engine(spec, model_dir, chat_tokenizer)
    saved: list[int] = []
    monkeypatch.setattr(training, "save_checkpoint", lambda engine, state, *a, **k: saved.append(state.step))
    ctx = worker_context(spec, 0, 1, 0)
    state = training.TrainState()
    outcome = training.train(run, state, data, spec, ctx, pad_id=chat_tokenizer.pad_token_id,
                             checkpoints=None)  # type: ignore[arg-type]  # save_checkpoint is replaced
    assert outcome.diverged is not None and outcome.diverged.startswith("training diverged at step 3: the loss is nan")
    assert (state.step, saved, [h["step"] for h in state.history]) == (2, [1, 2], [1, 2])
    assert capsys.readouterr().out.splitlines()[-1] == f"[anytasktune] {outcome.diverged}"


def test_a_run_whose_workers_diverged_fails_as_invalid_spec() -> None:
    """Rank 0 returns the reason instead of raising it (Ray Train would retry an error, and
    diverge again): the driver fails the run with it, a class the operator does not retry."""
    from types import SimpleNamespace

    from anytasktune_contract.failures import FailureClass, InvalidSpecError
    from anytasktune_trainjob.runner import fit
    from anytasktune_trainjob.worker import DIVERGED

    result = SimpleNamespace(error=None, return_value={DIVERGED: "training diverged at step 2: the loss is nan"},
                             checkpoint=None)
    with pytest.raises(InvalidSpecError, match="diverged at step 2") as raised:
        fit(SimpleNamespace(fit=lambda: result))
    assert raised.value.failure_class is FailureClass.InvalidSpec
