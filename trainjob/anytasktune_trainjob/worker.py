"""The Ray Train worker: one sequence of named steps.

`train_loop_per_worker` runs inside each Ray Train worker. Ray Train has already
created the torch.distributed process group (gloo on CPU, nccl on GPU); DeepSpeed
joins it. The steps, each a function of its own module:

    build_lora_model   training.py    base model + PEFT LoRA
    build_engine       training.py    DeepSpeed engine, LR schedule, step plan
    restore            training.py    the latest checkpoint, if any (private folder per worker)
    train              training.py    the loop; save_checkpoint every checkpointEverySteps
    save_adapter       adapter.py     ZeRO-3 gather, rank 0 writes, files broadcast to all ranks
    evaluate           evaluation.py  base vs adapter on the held-out shard, gathered to all ranks
    summarise          summary.py     rank 0's JSON-able summary (Result.return_value)
    publish_adapter    adapter.py     rank 0 uploads the adapter files
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any

from anytasktune_contract.storage import StorageSettings
from anytasktune_contract.trainspec import TrainJobSpec

from .cache import cache_root
from .store import open_store
from .zero import resolve_precision

DIVERGED = "diverged"  # rank 0's only summary key when the loss went nan or inf: the driver fails the run


def setup_worker_env(use_gpu: bool) -> None:
    """Must run before deepspeed is imported."""
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@dataclass(frozen=True)
class WorkerContext:
    """Where this worker stands: its rank, the world, its device and precision."""

    rank: int
    world: int
    device: Any  # torch.device
    precision: str  # bf16 | fp16 | fp32
    dtype: Any  # torch dtype of `precision`

    def log(self, msg: str) -> None:
        """Rank 0 only. sys.stdout.write, not print: Ray Train patches print() and would log it twice."""
        if self.rank == 0:
            sys.stdout.write(f"[anytasktune] {msg}\n")
            sys.stdout.flush()


def worker_context(spec: TrainJobSpec, rank: int, world: int, local_rank: int) -> WorkerContext:
    import torch

    use_gpu = spec.scaling.useGpu
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    precision = resolve_precision(spec.deepspeed.precision, use_gpu)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]
    return WorkerContext(rank, world, device, precision, dtype)


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    spec = TrainJobSpec.from_json(config["spec"])
    setup_worker_env(spec.scaling.useGpu)

    import ray
    import ray.train

    from .adapter import publish_adapter, save_adapter
    from .checkpointfs import pyarrow_filesystem
    from .checkpoints import CheckpointFolder
    from .evaluation import evaluate
    from .models import resolve_base_model
    from .summary import Clock, RunFacts, summarise
    from .training import build_engine, build_lora_model, restore, train

    clock = Clock()
    rc = ray.train.get_context()
    ctx = worker_context(spec, rc.get_world_rank(), rc.get_world_size(), rc.get_local_rank())
    data = ray.get(config["data_ref"])
    storage = open_store(StorageSettings.from_spec(spec.storage), float(config["retry_budget_s"]))
    model_dir = resolve_base_model(spec.baseModel, storage).path
    clock.mark("loaded")

    lora = build_lora_model(spec, model_dir, ctx.dtype)
    clock.mark("model")
    run = build_engine(lora.model, spec, ctx.world, len(data["train_ids"]))
    facts = RunFacts(run.plan, run.ds_config, lora.trainable, lora.total, ctx.precision, ctx.world)
    clock.mark("ready")
    checkpoints = CheckpointFolder(config["checkpoints_uri"], storage)
    filesystem = pyarrow_filesystem(storage.settings, float(config["retry_budget_s"]))
    state = restore(run.engine, ray.train.get_checkpoint(), ctx, run.plan.total_steps, checkpoints, filesystem)
    ctx.log(f"training {spec.subtask}: {len(data['train_ids'])} records, {ctx.world} worker(s), "
            f"{run.plan.total_steps} steps (micro-batch {spec.training.microBatchSize} x accumulation "
            f"{spec.training.gradientAccumulationSteps}), ZeRO-{spec.deepspeed.zeroStage}, {ctx.precision}, "
            f"trainable {lora.trainable:,}/{lora.total:,} params")
    outcome = train(run, state, data, spec, ctx, pad_id=int(config["pad_id"]), checkpoints=checkpoints,
                    fault_after_step=config.get("fault_after_step"))
    if outcome.diverged:  # returned, not raised: Ray Train would retry an error, and a retry diverges again
        return {DIVERGED: outcome.diverged} if ctx.rank == 0 else None
    clock.mark("trained")

    adapter_dir = save_adapter(run.engine.module, spec, ctx, model_dir, config["base_model_identity"])
    try:
        del run, lora  # free the training state before evaluation
        gc.collect()
        clock.mark("saved")
        gathered = evaluate(spec, ctx, model_dir, adapter_dir, data["holdout"], int(config["pad_id"]),
                            list(config["stop_ids"]))
        clock.mark("evaluated")
        if ctx.rank != 0:
            return None
        summary = summarise(spec, facts, state, outcome, gathered, data["holdout"], clock)
        digests = publish_adapter(storage, adapter_dir, config["run_prefix"])
        summary["artifacts"] = sorted(digests)
        summary["artifactDigests"] = digests
        return summary
    finally:
        shutil.rmtree(adapter_dir, ignore_errors=True)
