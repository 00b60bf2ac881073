"""The DeepSpeed config generated from the spec: a pure function, unit-tested."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from anytasktune_contract.trainspec import DeepSpeedConfig, Precision, TrainingConfig


def resolve_precision(precision: Precision | str, use_gpu: bool) -> str:
    """auto = bf16 on GPU, fp32 on CPU (bf16 was measured slower on CPU)."""
    p = Precision(precision)
    if p is Precision.auto:
        return "bf16" if use_gpu else "fp32"
    return p.value


def warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    return int(round(total_steps * warmup_ratio))


def build_deepspeed_config(
    ds: DeepSpeedConfig,
    training: TrainingConfig,
    *,
    world_size: int,
    use_gpu: bool,
    total_steps: int,
) -> dict[str, Any]:
    """A complete DeepSpeed config (ZeRO stage, offload, precision, batch sizes,
    clipping, AdamW) for LoRA training. The warmup + cosine schedule is `lr_factor`,
    handed to DeepSpeed as a client LambdaLR: DeepSpeed's WarmupCosineLR forces at
    least two warmup steps and starts at lr 0."""
    if world_size < 1:
        raise ValueError("world_size must be >= 1")
    if total_steps < 1:
        raise ValueError("total_steps must be >= 1")
    precision = resolve_precision(ds.precision, use_gpu)
    offload = ds.offloadOptimizer and ds.zeroStage >= 1
    zero: dict[str, Any] = {"stage": ds.zeroStage}
    if ds.zeroStage >= 1:
        # overlap_comm overlaps the gradient reduction with the backward: with one rank there is
        # none, and its per-tensor stream handoffs only cost host time (measured, bench/RESULTS.md)
        zero.update(contiguous_gradients=True, overlap_comm=use_gpu and world_size > 1, reduce_scatter=True,
                    allgather_bucket_size=int(5e8), reduce_bucket_size=int(5e8))
    if ds.zeroStage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True,
                    stage3_param_persistence_threshold=int(1e5),
                    stage3_prefetch_bucket_size=int(5e7))
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    optimizer_params: dict[str, Any] = {
        "lr": training.learningRate,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": training.weightDecay,
    }
    if not offload:
        # torch's AdamW: no JIT-compiled op; with offload DeepSpeedCPUAdam is required.
        optimizer_params["torch_adam"] = True
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": training.microBatchSize,
        "gradient_accumulation_steps": training.gradientAccumulationSteps,
        "train_batch_size": training.microBatchSize * training.gradientAccumulationSteps * world_size,
        "gradient_clipping": float(training.maxGradNorm),
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "loss_scale": 0, "initial_scale_power": 16},
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if precision == "bf16" and ds.zeroStage == 1 and not offload:
        # Gradients accumulated in fp32 select DeepSpeed's BF16_Optimizer: flat fp32 master weights
        # and gradients, no per-tensor inf/nan check with a host sync (bf16 has no loss scale to
        # protect; `training.divergence` stops a nan loss). Counted: fewer kernels a step than plain
        # PEFT, where bf16 at ZeRO-0 runs 1.35x (bench/RESULTS.md).
        config["data_types"] = {"grad_accum_dtype": "fp32"}
    return config


def lr_factor(step: int, total_steps: int, warmup: int) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based):
    linear warmup to 1 over `warmup` steps, then cosine decay towards 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / decay_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class StepPlan:
    """How the training records become optimizer steps.

    Micro-batches form one deterministic stream across epochs (epoch e shuffles
    with seed + e); optimizer step s consumes micro-batches [s*gas, (s+1)*gas).
    So a resumed run at step s continues exactly where the failed one stopped."""

    records: int
    world_size: int
    per_rank: int  # records per rank per epoch (the tail that does not divide is dropped)
    micro_per_epoch: int
    total_steps: int
    warmup_steps: int

    def epoch_of_step(self, step: int, gas: int) -> int:
        return (step * gas) // self.micro_per_epoch


def plan_steps(records: int, world_size: int, training: TrainingConfig) -> StepPlan:
    if records < 1:
        raise ValueError("no training records")
    per_rank = max(1, records // world_size)
    micro_per_epoch = math.ceil(per_rank / training.microBatchSize)
    epoch_steps = max(1, (micro_per_epoch * training.epochs) // training.gradientAccumulationSteps)
    total = min(training.maxSteps, epoch_steps) if training.maxSteps else epoch_steps
    return StepPlan(records, world_size, per_rank, micro_per_epoch, total, warmup_steps(total, training.warmupRatio))


def rank_indices(records: int, world_size: int, rank: int, per_rank: int, seed: int, epoch: int) -> list[int]:
    """The record indices rank `rank` sees in `epoch` (deterministic shuffle)."""
    import random

    order = list(range(records))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[(rank + world_size * k) % records] for k in range(per_rank)]


def micro_batch(plan: StepPlan, micro_index: int, rank: int, micro_batch_size: int, seed: int) -> list[int]:
    """Record indices of global micro-batch `micro_index` on `rank`."""
    epoch, j = divmod(micro_index, plan.micro_per_epoch)
    idx = rank_indices(plan.records, plan.world_size, rank, plan.per_rank, seed, epoch)
    return idx[j * micro_batch_size:(j + 1) * micro_batch_size]
