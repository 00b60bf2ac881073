"""Packed adapters (packed.py) on the tiny model: an exported adapter loads in PEFT and
answers as the packed model does; an adapter gets no gradient from other sub-tasks' rows;
two adapters trained packed equal two trained alone with PEFT on the same batches."""

from __future__ import annotations

import copy
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from anytasktune_contract.trainspec import LoraConfig, TrainingConfig
from anytasktune_trainjob import encoding
from anytasktune_trainjob.data import parse_record
from anytasktune_trainjob.packed import PackedLoraModel, PackedTrainer, SubTask, packed_loss
from anytasktune_trainjob.zero import lr_factor, micro_batch, plan_steps

LORA = LoraConfig(r=4, alpha=8, dropout=0.0, targetModules=["q_proj", "v_proj"])
# Packed and separate runs differ only in float rounding (wider padded batches, other matmul
# shapes): ~1e-7 on these weights after the steps below, while a wrong gradient (another
# sub-task's rows, a loss averaged over the whole batch, another schedule) moves them by
# ~1e-3 (the lr). One exception is allowed for: rounding can flip the sign of a gradient
# element that is almost exactly zero, and Adam's first steps turn that into a full step of
# the other sign (once in ~200k elements after 4 steps at the bench-packed shape), so up to
# MAX_FLIPPED of each tensor's elements may lie outside WEIGHT_TOL.
WEIGHT_TOL = {"rtol": 1e-4, "atol": 2e-6}
MAX_FLIPPED = 0.005


def _subtask(name: str, records: list[dict[str, str]], tokenizer: Any, instruction: str, **training: Any) -> SubTask:
    turns = [parse_record(r, "taskfinetune", instruction) for r in records]
    encoded = [encoding.encode(tokenizer, t, 64) for t in turns]
    return SubTask(name, LORA, TrainingConfig(**training), [e.input_ids for e in encoded], [e.labels for e in encoded])


@pytest.fixture(scope="module")
def subtasks(chat_tokenizer: Any) -> list[SubTask]:
    """Two sub-tasks unlike in answers (one token vs several), batch size, lr, seed, steps
    and accumulation: so a gradient or schedule taken from the wrong sub-task shows."""
    import tinymodel

    records = tinymodel.sentiment_records(24, seed=5)
    sentiment = [{"input": r["input"], "output": r["output"]} for r in records[:12]]
    language = [{"input": r["input"], "output": "english text" if r["input"].isascii() else "chinese text"}
                for r in records[12:]]
    common = {"warmupRatio": 0.25, "maxGradNorm": 1.0, "weightDecay": 0.01, "epochs": 1}
    return [
        _subtask("sentiment", sentiment, chat_tokenizer, "Classify", microBatchSize=3, learningRate=1e-2, seed=11,
                 maxSteps=4, **common),
        _subtask("language", language, chat_tokenizer, "Which language", microBatchSize=2, learningRate=5e-3, seed=12,
                 maxSteps=3, gradientAccumulationSteps=2, **common),
    ]


@pytest.fixture(scope="module")
def base_model(chat_tokenizer: Any) -> Any:
    import tinymodel

    model = tinymodel.build_model(len(chat_tokenizer), seed=0)
    model.eval()
    return model


def _batch(task: SubTask, rows: list[int], pad_id: int) -> dict[str, Any]:
    import torch

    batch = encoding.pad_batch([(task.train_ids[i], task.train_labels[i]) for i in rows], pad_id)
    return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def _packed(base_model: Any, subtasks: list[SubTask]) -> PackedLoraModel:
    packed = PackedLoraModel(copy.deepcopy(base_model), LORA.targetModules)
    for t in subtasks:
        packed.add_adapter(t.name, t.lora, t.training.seed)
    return packed


def _randomise_b(packed: PackedLoraModel, seed: int = 0) -> None:
    """B starts at zero, where A's gradient is zero whatever the rows: make both count."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in packed.layers.values():
            for b in layer.lora_B:
                b.weight.copy_(torch.randn(b.weight.shape, generator=gen) * 0.1)


# --- (a) the exported adapter in PEFT -------------------------------------------------------
def test_an_exported_adapter_loads_in_peft_and_gives_the_packed_models_logits(
        base_model: Any, subtasks: list[SubTask], chat_tokenizer: Any) -> None:
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model
    from peft.utils import get_peft_model_state_dict

    packed = _packed(base_model, subtasks)
    _randomise_b(packed)
    pad = chat_tokenizer.pad_token_id
    own = _batch(subtasks[1], [0, 1, 2], pad)
    mixed_rows = [(subtasks[0].train_ids[i], subtasks[0].train_labels[i]) for i in (0, 1)] + \
                 [(subtasks[1].train_ids[i], subtasks[1].train_labels[i]) for i in (0, 1, 2)]
    mixed = {k: torch.tensor(v) for k, v in encoding.pad_batch(mixed_rows, pad).items()}
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="anytasktune-test-packed-") as tmp:
        folder = packed.export_adapter(1, Path(tmp) / "language", "s3://bucket/models/tiny/")
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base_model), str(folder))
        peft_model.eval()
        expected = peft_model(input_ids=own["input_ids"], attention_mask=own["attention_mask"]).logits
        reference_keys = set(get_peft_model_state_dict(get_peft_model(
            copy.deepcopy(base_model), PeftLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                      task_type="CAUSAL_LM"))))
    assert set(packed.peft_state_dict(1)) == reference_keys  # PEFT would only warn about a key it does not know
    with torch.no_grad(), packed.routed([(1, 0, 3)]):
        alone = packed.model(input_ids=own["input_ids"], attention_mask=own["attention_mask"]).logits
    # the same operations in the same order as PEFT's LoRA layer
    torch.testing.assert_close(alone, expected, rtol=1e-6, atol=1e-6)
    with torch.no_grad(), packed.routed([(0, 0, 2), (1, 2, 5)]):
        in_mix = packed.model(input_ids=mixed["input_ids"], attention_mask=mixed["attention_mask"]).logits[2:]
    width = own["input_ids"].shape[1]
    real = own["attention_mask"].bool()  # the mixed batch is padded wider: compare the real tokens
    torch.testing.assert_close(in_mix[:, :width][real], expected[real], rtol=1e-5, atol=1e-5)
    with torch.no_grad(), packed.routed([(0, 0, 3)]):
        other = packed.model(input_ids=own["input_ids"], attention_mask=own["attention_mask"]).logits
    assert (other - expected).abs().max() > 1e-3  # the other adapter answers differently: the check can fail


# --- (b) each adapter's gradients come from its own rows only ---------------------------------
def _grads(packed: PackedLoraModel, k: int) -> list[Any]:
    return [p.grad for p in packed.adapter_parameters(k)]


def test_a_batch_without_a_subtasks_records_leaves_its_adapter_without_gradient(
        base_model: Any, subtasks: list[SubTask], chat_tokenizer: Any) -> None:
    packed = _packed(base_model, subtasks)
    _randomise_b(packed)
    batch = _batch(subtasks[0], [0, 1, 2], chat_tokenizer.pad_token_id)
    with packed.routed([(0, 0, 3)]):
        logits = packed.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    packed_loss(logits, batch["labels"], [(0, 0, 3)])[0].backward()
    assert all(g is None or not g.any() for g in _grads(packed, 1))
    assert all(g is not None and g.abs().max() > 0 for g in _grads(packed, 0))


def test_in_a_mixed_batch_an_adapters_gradient_is_the_one_of_its_rows_alone(
        base_model: Any, subtasks: list[SubTask], chat_tokenizer: Any) -> None:
    """The loss is a mean per sub-task: sub-task 1's rows (other lengths, other answer
    token counts) change neither the size nor the direction of adapter 0's gradient."""
    import torch

    pad = chat_tokenizer.pad_token_id
    rows0 = [(subtasks[0].train_ids[i], subtasks[0].train_labels[i]) for i in (0, 1, 2)]
    rows1 = [(subtasks[1].train_ids[i], subtasks[1].train_labels[i]) for i in (3, 4)]
    grads = []
    for rows, segments in ((rows0, [(0, 0, 3)]), (rows0 + rows1, [(0, 0, 3), (1, 3, 5)])):
        packed = _packed(base_model, subtasks)
        _randomise_b(packed)
        batch = {k: torch.tensor(v) for k, v in encoding.pad_batch(rows, pad).items()}
        with packed.routed(segments):
            logits = packed.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        packed_loss(logits, batch["labels"], segments)[0].backward()
        grads.append(_grads(packed, 0))
    for alone, mixed in zip(*grads, strict=True):
        torch.testing.assert_close(mixed, alone, rtol=1e-4, atol=1e-7)


def test_routing_must_cover_the_batch_in_order_and_targets_must_match(base_model: Any, subtasks: list[SubTask]) -> None:
    packed = _packed(base_model, subtasks)
    for bad in ([(0, 1, 3)], [(0, 0, 2), (1, 3, 4)], [(2, 0, 2)], [(0, 0, 0)]):
        with pytest.raises(ValueError, match="segments"), packed.routed(bad):
            pass
    with pytest.raises(ValueError, match="targetModules"):
        packed.add_adapter("mlp", LoraConfig(targetModules=["up_proj"]), 0)
    with pytest.raises(ValueError, match="modulesToSave"):
        packed.add_adapter("head", LoraConfig(targetModules=["q_proj", "v_proj"], modulesToSave=["lm_head"]), 0)


# --- (c) packed training = separate PEFT trainings ---------------------------------------------
def _train_alone_with_peft(base_model: Any, task: SubTask, pad_id: int) -> dict[str, Any]:
    """What the trainjob does for one sub-task (PEFT LoRA seeded by training.seed, AdamW,
    warmup + cosine, clipping, accumulation), in a plain loop: the reference."""
    import torch
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from peft.utils import get_peft_model_state_dict

    tr = task.training
    torch.manual_seed(tr.seed)
    model = get_peft_model(copy.deepcopy(base_model), PeftLoraConfig(
        r=task.lora.r, lora_alpha=task.lora.alpha, lora_dropout=task.lora.dropout,
        target_modules=list(task.lora.targetModules), task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tr.learningRate, betas=(0.9, 0.999), eps=1e-8, weight_decay=tr.weightDecay)
    plan = plan_steps(len(task.train_ids), 1, tr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, total_steps=plan.total_steps,
                                                                     warmup=plan.warmup_steps))
    model.train()
    gas = tr.gradientAccumulationSteps
    for step in range(plan.total_steps):
        for micro in range(gas):
            idx = micro_batch(plan, step * gas + micro, 0, tr.microBatchSize, tr.seed)
            (model(**_batch(task, idx, pad_id)).loss / gas).backward()
        torch.nn.utils.clip_grad_norm_(params, tr.maxGradNorm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def test_two_adapters_trained_packed_equal_two_trained_alone_with_peft(
        base_model: Any, subtasks: list[SubTask], chat_tokenizer: Any) -> None:
    import torch

    pad = chat_tokenizer.pad_token_id
    packed = PackedLoraModel(copy.deepcopy(base_model), LORA.targetModules)
    trainer = PackedTrainer(packed, subtasks, pad_id=pad, device=torch.device("cpu"))
    outcome = trainer.train()
    # 4 steps for one, 3 for the other: the last step packs sub-task 0 alone
    assert outcome.steps == 4 and [sorted(h) for h in outcome.history] == [["language", "sentiment"]] * 3 + [["sentiment"]]
    worst = 0.0
    for k, task in enumerate(subtasks):
        alone = _train_alone_with_peft(base_model, task, pad)
        together = packed.peft_state_dict(k)
        assert set(together) == set(alone)
        for key, weight in alone.items():
            outside = int((~torch.isclose(together[key], weight, **WEIGHT_TOL)).sum())
            assert outside <= MAX_FLIPPED * weight.numel(), f"{key}: {outside} of {weight.numel()} elements beyond {WEIGHT_TOL}"
            worst = max(worst, float((together[key] - weight).abs().max()))
        moved = max(float(w.abs().max()) for key, w in alone.items() if "lora_B" in key)
        assert moved > 1000 * WEIGHT_TOL["atol"]  # trained far beyond the tolerance: equality means something
    print(f"largest packed-vs-alone weight difference {worst:.2e}")
