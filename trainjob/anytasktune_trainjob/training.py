"""Training steps of a Ray Train worker: the LoRA model, the DeepSpeed engine,
restoring a checkpoint, the loop and its checkpoints.

Heavy libraries (torch, DeepSpeed, PEFT, Ray) are imported inside the functions:
the driver imports this module's types without them."""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anytasktune_contract.failures import InvalidSpecError
from anytasktune_contract.trainspec import FUSED_KERNELS_NEED_GPUS, TrainJobSpec

from . import encoding
from .checkpoints import CheckpointFolder, dir_name
from .zero import StepPlan, build_deepspeed_config, lr_factor, micro_batch, plan_steps

if TYPE_CHECKING:
    from .worker import WorkerContext

STATE_FILE = "trainer_state.json"
DS_TAG = "ds"


@dataclass
class LoraModel:
    model: Any  # peft.PeftModel
    trainable: int  # trainable parameters (LoRA + modulesToSave)
    total: int


def build_lora_model(spec: TrainJobSpec, model_dir: str, dtype: Any) -> LoraModel:
    """The base model with PEFT LoRA applied (seeded: every rank starts alike)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(spec.training.seed)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if spec.training.fusedKernels:
        apply_fused_kernels(model, use_gpu=spec.scaling.useGpu)
    if spec.training.gradientCheckpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    lora = LoraConfig(
        r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
        target_modules=list(spec.lora.targetModules), modules_to_save=list(spec.lora.modulesToSave) or None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if spec.training.gradientCheckpointing:
        model.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return LoraModel(model, trainable, sum(p.numel() for p in model.parameters()))


def apply_fused_kernels(model: Any, *, use_gpu: bool) -> None:
    """training.fusedKernels: Liger-Kernel's Triton kernels in place of the base model's RMSNorm,
    SwiGLU MLP and rotary embedding, and a cross-entropy fused with the output projection
    (the logits are never materialised: 2 GiB less at 8B, batch 4). Patched into this instance
    before LoRA wraps its projections (the fused MLP calls the wrapped ones). Liger also swaps the
    modeling module's norm and MLP classes and its rotary function, so a later model of the same
    type in this process (the evaluation's) runs them too, without the fused loss (its forward
    is patched on this instance only). Measured in bench/RESULTS.md ("GPU shapes")."""
    if not use_gpu:
        raise InvalidSpecError(FUSED_KERNELS_NEED_GPUS)
    try:
        from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN, _apply_liger_kernel_to_instance
    except ImportError as err:
        raise InvalidSpecError("training.fusedKernels needs liger-kernel in the trainjob image "
                               "(pip install 'anytasktune-trainjob[fused]'; the GPU image has it)") from err
    model_type = getattr(model.config, "model_type", "")
    if model_type not in MODEL_TYPE_TO_APPLY_LIGER_FN:
        raise InvalidSpecError(f"training.fusedKernels: Liger-Kernel has no kernels for model type {model_type!r}; "
                               f"it supports {', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}")
    _apply_liger_kernel_to_instance(model=model, rope=True, rms_norm=True, swiglu=True,
                                    fused_linear_cross_entropy=True, cross_entropy=False)


@dataclass
class Engine:
    engine: Any  # deepspeed.DeepSpeedEngine
    scheduler: Any  # LambdaLR or None
    plan: StepPlan
    ds_config: dict[str, Any]


def skip_unused_cpu_comm_op() -> None:
    """On CPU, DeepSpeed's communication backend JIT-compiles its shared-memory all-reduce op
    when it starts (~40 s of two compilers on 2 idle cores, minutes under load; again in
    every new virtualenv or image, since the build names its paths). Only its
    inference_all_reduce uses that op; training's collectives are torch.distributed's (gloo).
    DeepSpeed skips an op its compatibility table marks off; the table is a module-level
    dict that DeepSpeed builds once and keeps, so the mark holds for the process."""
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False


def build_engine(model: Any, spec: TrainJobSpec, world: int, records: int) -> Engine:
    """DeepSpeed around the LoRA model: config from `zero.build_deepspeed_config`,
    linear warmup + cosine schedule, trainable parameters only."""
    import deepspeed
    import torch

    if not spec.scaling.useGpu:
        skip_unused_cpu_comm_op()

    plan = plan_steps(records, world, spec.training)
    ds_config = build_deepspeed_config(spec.deepspeed, spec.training, world_size=world,
                                       use_gpu=spec.scaling.useGpu, total_steps=plan.total_steps)
    sched = partial(lr_factor, total_steps=plan.total_steps, warmup=plan.warmup_steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, sched),
    )
    skip_single_rank_allreduce(engine, world, spec.deepspeed.zeroStage)
    return Engine(engine, scheduler, plan, ds_config)


def skip_single_rank_allreduce(engine: Any, world: int, zero_stage: int) -> None:
    """ZeRO-0 all-reduces every gradient after the backward: with one rank that averages each
    over itself, yet costs a walk of all parameters, a flatten and a copy back each step (host
    time a small model's GPU step waits on; bench/RESULTS.md). ZeRO-1/2/3 keep theirs: their
    reduction also moves gradients into the optimizer's partitions."""
    if world == 1 and zero_stage == 0:
        engine.enable_backward_allreduce = False


# --- checkpoints ----------------------------------------------------------------------
@dataclass
class TrainState:
    """What a checkpoint carries besides DeepSpeed's state; `train` advances it."""

    step: int = 0
    tokens: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    start_step: int = 0  # the step this attempt started at
    resumed_from: int | None = None  # the checkpoint's step, when restored from one

    def to_json(self, run_id: str) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "history": self.history, "run_id": run_id}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> TrainState:
        step = int(doc["step"])
        return cls(step, int(doc["tokens"]), list(doc.get("history", [])), step, step)


@contextmanager
def restored_checkpoint(checkpoint: Any) -> Iterator[Path]:
    """The checkpoint downloaded into a folder private to this worker, removed on exit.

    Not `Checkpoint.as_directory()`: it downloads into one temporary folder per node,
    shared by every worker there, and deletes it when a reader leaves, so a second
    worker on the same node can find it gone."""
    with tempfile.TemporaryDirectory(prefix="anytasktune-restore-") as private:
        yield Path(checkpoint.to_directory(private))


def write_checkpoint(engine: Any, folder: Path, state: TrainState, rank: int, run_id: str) -> bool:
    """DeepSpeed's state of the trainable parameters (all ranks) + the trainer state
    (rank 0) into `folder`; False when this rank wrote no file."""
    engine.save_checkpoint(str(folder), tag=DS_TAG, exclude_frozen_parameters=True)
    if rank == 0:
        (folder / STATE_FILE).write_text(json.dumps(state.to_json(run_id)))
    return any(p.is_file() for p in folder.rglob("*"))


def load_checkpoint(engine: Any, folder: Path) -> TrainState:
    state = TrainState.from_json(json.loads((folder / STATE_FILE).read_text()))
    engine.load_checkpoint(str(folder), tag=DS_TAG, load_module_strict=False,
                           load_optimizer_states=True, load_lr_scheduler_states=True)
    return state


def restore(engine: Any, registered: Any, ctx: WorkerContext, total_steps: int, checkpoints: CheckpointFolder,
            filesystem: Any) -> TrainState:
    """The state to start from: the newest checkpoint (a retried worker, a rerun of the
    same spec) — Ray Train's, or a newer one it had not registered yet — restored into
    a private folder; else a fresh start."""
    checkpoint, ours = checkpoints.newest(registered, filesystem)
    if checkpoint is None:
        return TrainState()
    with restored_checkpoint(checkpoint) as folder:
        state = load_checkpoint(engine, folder)
    note = " (complete in storage, not yet registered by Ray Train)" if ours else ""
    ctx.log(f"resumed from checkpoint at step {state.step}/{total_steps}{note}")
    return state


def save_checkpoint(engine: Any, state: TrainState, metrics: dict[str, Any], ctx: WorkerContext,
                    run_id: str, checkpoints: CheckpointFolder) -> None:
    """Write a checkpoint and hand it to Ray Train, which uploads each rank's files to
    the run's storage path; once every rank is past its upload, mark it complete."""
    import ray.train
    import torch.distributed as dist

    with tempfile.TemporaryDirectory(prefix="anytasktune-ckpt-") as tmp:
        has_files = write_checkpoint(engine, Path(tmp), state, ctx.rank, run_id)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if has_files else None,
                         checkpoint_dir_name=dir_name(state.step))
    dist.barrier()
    if ctx.rank == 0:
        checkpoints.mark_complete(state.step)
    ctx.log(f"checkpoint saved at step {state.step}")


def checkpoint_due(step: int, plan: StepPlan, every: int, gas: int) -> bool:
    """After optimizer step `step` (1-based): every `every` steps, at epoch ends when
    `every` is 0, and always after the last step."""
    epoch_end = every == 0 and plan.epoch_of_step(step, gas) != plan.epoch_of_step(step - 1, gas)
    return bool(every and step % every == 0) or epoch_end or step == plan.total_steps


# --- the loop ---------------------------------------------------------------------------
@dataclass
class TrainOutcome:
    last_loss: float = float("nan")
    tokens_this_run: int = 0
    seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=list)  # each train_step alone (no checkpoint, no log)
    peak_host_mib: float | None = None  # this process's peak resident memory, at the loop's end
    peak_gpu_mib: float | None = None  # torch's peak allocation on this worker's GPU
    diverged: str | None = None  # why the loop stopped early: the loss was nan or inf (nothing to publish)


def divergence(step: int, loss: float, lr: float) -> str | None:
    """What to tell the user when a step's loss is not finite, else None. The weights are
    ruined by then; a retry from the last checkpoint meets the same loss, so it is no
    transient failure."""
    if math.isfinite(loss):
        return None
    return (f"training diverged at step {step}: the loss is {loss} (learning rate {lr:.3g}); nothing of this run "
            "is published and the last checkpoint is before this step; lower training.learningRate or raise "
            "training.warmupRatio, then apply again")


def peak_memory_mib(device: Any) -> tuple[float, float | None]:
    """(host peak RSS, GPU peak allocation) of this process, in MiB."""
    import resource

    import torch

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if getattr(device, "type", "") == "cuda" else None
    return host, gpu


def train_step(run: Engine, data: dict[str, Any], step: int, spec: TrainJobSpec, ctx: WorkerContext,
               pad_id: int) -> tuple[float, int]:
    """One optimizer step (gradientAccumulationSteps micro-batches); returns the loss
    averaged over the world and the tokens of all ranks."""
    import torch
    import torch.distributed as dist

    training = spec.training
    gas = training.gradientAccumulationSteps
    ids, labels = data["train_ids"], data["train_labels"]
    loss_sum, local_tokens = 0.0, 0
    for k in range(gas):
        idx = micro_batch(run.plan, step * gas + k, ctx.rank, training.microBatchSize, training.seed)
        batch = encoding.pad_batch([(ids[i], labels[i]) for i in idx], pad_id)
        tensors = {name: torch.tensor(v, dtype=torch.long, device=ctx.device) for name, v in batch.items()}
        out = run.engine(**tensors)
        run.engine.backward(out.loss)
        run.engine.step()
        loss_sum += float(out.loss.detach())
        local_tokens += int(tensors["attention_mask"].sum())
    stats = torch.tensor([loss_sum / gas, float(local_tokens)], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(stats)
    return float(stats[0]) / ctx.world, int(stats[1])


def step_metrics(state: TrainState, plan: StepPlan, gas: int, loss: float, lr: float,
                 outcome: TrainOutcome, elapsed: float) -> dict[str, Any]:
    """What `ray.train.report` and the progress line show after a step."""
    tok_s = outcome.tokens_this_run / elapsed if elapsed > 0 else 0.0
    eta = (plan.total_steps - state.step) * (elapsed / (state.step - state.start_step))
    return {"step": state.step, "total_steps": plan.total_steps, "epoch": plan.epoch_of_step(state.step - 1, gas),
            "loss": loss, "lr": lr, "tokens_per_s": tok_s, "eta_s": eta}


def progress_line(m: dict[str, Any]) -> str:
    eta = max(0, int(m["eta_s"]))
    return (f"step {m['step']}/{m['total_steps']} epoch {m['epoch']} loss {m['loss']:.4f} lr {m['lr']:.3e} "
            f"tok/s {m['tokens_per_s']:,.0f} eta {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}")


def train(run: Engine, state: TrainState, data: dict[str, Any], spec: TrainJobSpec, ctx: WorkerContext, *,
          pad_id: int, checkpoints: CheckpointFolder, fault_after_step: int | None = None) -> TrainOutcome:
    """Optimizer steps from `state.step` to the plan's end, advancing `state`;
    checkpoints when due, a progress line every logEverySteps; stops, before that step's
    checkpoint, at a loss that is nan or inf (`outcome.diverged`). Ray Train hears only of
    checkpoints: its report() blocks until the controller has polled the previous one
    (every 2 s), so a metrics-only report per log step capped fast steps at that rate.
    `fault_after_step` (tests) fails once, after that step's checkpoint;
    ANYTASKTUNE_TEST_STEP_PAUSE_S (tests) slows each step, to widen a window to act in."""
    pause_s = float(os.environ.get("ANYTASKTUNE_TEST_STEP_PAUSE_S") or 0)
    training, plan = spec.training, run.plan
    gas = training.gradientAccumulationSteps
    outcome = TrainOutcome()
    run.engine.train()
    t_loop = time.time()
    while state.step < plan.total_steps:
        lr = float(run.scheduler.get_last_lr()[0]) if run.scheduler is not None else training.learningRate
        t_step = time.perf_counter()
        loss, tokens = train_step(run, data, state.step, spec, ctx, pad_id)
        outcome.step_seconds.append(time.perf_counter() - t_step)
        outcome.diverged = divergence(state.step + 1, loss, lr)  # the world's mean loss: every rank stops alike
        if outcome.diverged:
            ctx.log(outcome.diverged)
            break
        if pause_s:
            time.sleep(pause_s)
        state.step += 1
        state.tokens += tokens
        state.history.append({"step": state.step, "loss": round(loss, 6), "lr": lr})
        outcome.last_loss, outcome.tokens_this_run = loss, outcome.tokens_this_run + tokens
        metrics = step_metrics(state, plan, gas, loss, lr, outcome, time.time() - t_loop)
        log_now = (state.step % training.logEverySteps == 0 or state.step == plan.total_steps
                   or state.step == state.start_step + 1)
        if log_now:
            ctx.log(progress_line(metrics))
        if checkpoint_due(state.step, plan, training.checkpointEverySteps, gas):
            save_checkpoint(run.engine, state, metrics, ctx, spec.run_id(), checkpoints)
        if fault_after_step is not None and state.step == int(fault_after_step) and state.start_step < state.step:
            raise RuntimeError(f"injected fault after step {state.step} (ANYTASKTUNE_FAULT_AFTER_STEP)")
    outcome.seconds = time.time() - t_loop
    outcome.peak_host_mib, outcome.peak_gpu_mib = peak_memory_mib(ctx.device)
    return outcome
