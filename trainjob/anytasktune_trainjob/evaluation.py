"""Evaluation: the base model and the adapter answer the same held-out prompts.

Each rank evaluates its shard (records rank, rank + world, ...) twice — with the
adapter disabled (the base model) and enabled — measuring the loss on answer tokens
and generating greedily; the rows of all ranks are gathered and `merge_scores`
(pure) turns them into metrics."""

from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anytasktune_contract.trainspec import EvaluationConfig, Metric, TrainJobSpec, metrics_for

from . import encoding
from .metrics import learn_labels, per_record

if TYPE_CHECKING:
    from .worker import WorkerContext

PASSES = ("base", "adapter")  # the order of the rows each rank produces
EXAMPLES = 5


def class_labels(spec: TrainJobSpec, train_answers: list[str]) -> list[str]:
    """The label set accuracy reads answers with: learned from the training answers
    (empty when the sub-task is not scored by accuracy or its answers are not labels)."""
    if Metric.accuracy not in metrics_for(spec.evaluation, spec.taskType):
        return []
    return learn_labels(train_answers)


def shard(count: int, rank: int, world: int) -> list[int]:
    """The held-out indices this rank evaluates."""
    return list(range(rank, count, world))


def load_models(model_dir: str, adapter_dir: Path, ctx: WorkerContext) -> tuple[Any, Any]:
    """(PeftModel in eval mode on the worker's device, left-padding tokenizer)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    tokenizer.padding_side = "left"
    base: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=ctx.dtype).to(ctx.device)
    model = PeftModel.from_pretrained(base, str(adapter_dir)).to(ctx.device)
    model.eval()
    return model, tokenizer


def answer_loss(model: Any, batch: dict[str, Any]) -> tuple[float, int]:
    """Summed cross-entropy over the answer tokens of a padded batch, and their count."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift_logits = logits[:, :-1].float()
    shift_labels = batch["labels"][:, 1:]
    ce = torch.nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
        ignore_index=encoding.IGNORE_INDEX, reduction="sum")
    return float(ce), int((shift_labels != encoding.IGNORE_INDEX).sum())


def generate(model: Any, tokenizer: Any, prompts: list[list[int]], ev: EvaluationConfig, pad_id: int,
             stops: list[int], device: Any) -> list[str]:
    """Greedy answers (left padding, at most maxNewTokens, stops at EOS / end-of-turn)."""
    import torch

    gen_in = encoding.left_pad(prompts, pad_id)
    tensors = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in gen_in.items()}
    out = model.generate(**tensors, max_new_tokens=ev.maxNewTokens, do_sample=False,
                         eos_token_id=stops, pad_token_id=pad_id)
    new = out[:, tensors["input_ids"].shape[1]:]
    return [str(tokenizer.decode(seq, skip_special_tokens=True)).strip() for seq in new.tolist()]


def evaluate_pass(model: Any, tokenizer: Any, held: dict[str, Any], indices: list[int], ev: EvaluationConfig,
                  pad_id: int, stops: list[int], device: Any) -> dict[str, Any]:
    """One model variant over this rank's records: {loss_sum, loss_tokens, preds {index: text}}."""
    import torch

    loss_sum, loss_tokens = 0.0, 0
    preds: dict[int, str] = {}
    for b in range(0, len(indices), ev.batchSize):
        chunk = indices[b:b + ev.batchSize]
        batch = encoding.pad_batch([(held["ids"][i], held["labels"][i]) for i in chunk], pad_id)
        tensors = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in batch.items()}
        ce, n = answer_loss(model, tensors)
        loss_sum, loss_tokens = loss_sum + ce, loss_tokens + n
        answers = generate(model, tokenizer, [held["prompts"][i] for i in chunk], ev, pad_id, stops, device)
        preds.update(zip(chunk, answers, strict=True))
    return {"loss_sum": loss_sum, "loss_tokens": loss_tokens, "preds": preds}


def evaluate(spec: TrainJobSpec, ctx: WorkerContext, model_dir: str, adapter_dir: Path, held: dict[str, Any],
             pad_id: int, stops: list[int]) -> list[list[dict[str, Any]]]:
    """All ranks: this rank's rows for the base model and the adapter, gathered from
    every rank (index = rank; each a list in the order of PASSES)."""
    import torch
    import torch.distributed as dist

    model, tokenizer = load_models(model_dir, adapter_dir, ctx)
    mine = shard(len(held["references"]), ctx.rank, ctx.world)
    rows = []
    for which in PASSES:
        disabled = model.disable_adapter() if which == "base" else nullcontext()
        with disabled, torch.no_grad():
            rows.append(evaluate_pass(model, tokenizer, held, mine, spec.evaluation, pad_id, stops, ctx.device))
    gathered: list[Any] = [None] * ctx.world
    dist.all_gather_object(gathered, rows)
    return gathered


def merge_scores(gathered: list[list[dict[str, Any]]], references: list[str], metric_names: list[str],
                 class_labels: list[str] | None = None) -> tuple[dict[str, dict[str, float]], dict[str, list[str]],
                                                            dict[str, dict[str, list[float]]]]:
    """The rows of every rank → ({pass: {eval_loss, metric...}}, {pass: predictions in record order},
    {metric: {pass: per-record scores}}). Both passes are scored by the same functions."""
    results: dict[str, dict[str, float]] = {}
    predictions: dict[str, list[str]] = {}
    records: dict[str, dict[str, list[float]]] = {m: {} for m in metric_names}
    for which, label in enumerate(PASSES):
        loss_sum = sum(rows[which]["loss_sum"] for rows in gathered)
        loss_tokens = sum(rows[which]["loss_tokens"] for rows in gathered)
        merged: dict[int, str] = {}
        for rows in gathered:
            merged.update(rows[which]["preds"])
        preds = [merged[i] for i in range(len(references))]
        predictions[label] = preds
        res = {"eval_loss": loss_sum / loss_tokens if loss_tokens else math.nan}
        for m in metric_names:
            values = per_record(m, preds, references, class_labels or ())
            records[m][label] = values
            res[m] = sum(values) / len(values) if values else 0.0
        results[label] = res
    return results, predictions, records


def examples(held: dict[str, Any], predictions: dict[str, list[str]], n: int = EXAMPLES) -> list[dict[str, str]]:
    """The first `n` held-out records with the reference and both answers (prompt tail only)."""
    refs = held["references"]
    return [{"prompt": held["prompt_text"][i][-400:], "reference": refs[i],
             "base": predictions["base"][i], "adapter": predictions["adapter"][i]} for i in range(min(n, len(refs)))]
