"""The Ray Train worker: LoRA training under DeepSpeed, checkpoints, evaluation.

Runs inside each Ray Train worker (`train_loop_per_worker`). Ray Train has
already created the torch.distributed process group (gloo on CPU, nccl on GPU);
DeepSpeed joins it. Rank 0 returns a JSON-able summary (Result.return_value).
"""

from __future__ import annotations

import gc
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

from anytasktune_contract.storage import ObjectStore, StorageSettings
from anytasktune_contract.trainspec import TrainJobSpec, metrics_for

from . import encoding
from .cache import cache_root
from .metrics import lift, score
from .zero import build_deepspeed_config, lr_factor, micro_batch, plan_steps, resolve_precision

STATE_FILE = "trainer_state.json"
DS_TAG = "ds"


def setup_worker_env(use_gpu: bool) -> None:
    """Must run before deepspeed is imported."""
    if not use_gpu:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(cache_root() / "torch_extensions"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class TokenTable:
    """Ragged int32 sequences stored flat (cheap to pickle through the object store)."""

    def __init__(self, seqs: list[list[int]]) -> None:
        import numpy as np

        lengths = [len(s) for s in seqs]
        self.offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
        if seqs:
            self.offsets[1:] = np.cumsum(lengths)
        flat = [x for s in seqs for x in s]
        self.flat = np.asarray(flat, dtype=np.int32)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> list[int]:
        return self.flat[self.offsets[i]:self.offsets[i + 1]].tolist()


@contextmanager
def restored_checkpoint(checkpoint: Any) -> Iterator[Path]:
    """The checkpoint downloaded into a folder private to this worker, removed on exit.

    Not `Checkpoint.as_directory()`: it downloads into one temporary folder per node,
    shared by every worker there, and deletes it when a reader leaves, so a second
    worker on the same node can find it gone."""
    with tempfile.TemporaryDirectory(prefix="anytasktune-restore-") as private:
        yield Path(checkpoint.to_directory(private))


def _log(rank: int, msg: str) -> None:
    # sys.stdout.write, not print: Ray Train patches print() and would log it twice
    if rank == 0:
        sys.stdout.write(f"[anytasktune] {msg}\n")
        sys.stdout.flush()


def _fmt_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def train_loop_per_worker(config: dict[str, Any]) -> dict[str, Any] | None:
    spec = TrainJobSpec.from_json(config["spec"])
    use_gpu = spec.scaling.useGpu
    setup_worker_env(use_gpu)

    import deepspeed
    import ray
    import ray.train
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .models import resolve_base_model

    t_start = time.time()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local_rank = ctx.get_local_rank()
    device = torch.device("cuda", local_rank) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    training = spec.training
    precision = resolve_precision(spec.deepspeed.precision, use_gpu)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]

    data = ray.get(config["data_ref"])
    train_ids: TokenTable = data["train_ids"]
    train_labels: TokenTable = data["train_labels"]
    storage = ObjectStore(StorageSettings.from_spec(spec.storage))
    model_dir = resolve_base_model(spec.baseModel, storage).path
    t_loaded = time.time()

    torch.manual_seed(training.seed)
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    if training.gradientCheckpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    lora = LoraConfig(
        r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
        target_modules=list(spec.lora.targetModules), modules_to_save=list(spec.lora.modulesToSave) or None,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if training.gradientCheckpointing:
        model.enable_input_require_grads()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())

    plan = plan_steps(len(train_ids), world, training)
    gas = training.gradientAccumulationSteps
    ds_config = build_deepspeed_config(spec.deepspeed, training, world_size=world, use_gpu=use_gpu,
                                       total_steps=plan.total_steps)
    sched = partial(lr_factor, total_steps=plan.total_steps, warmup=plan.warmup_steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, sched),
    )
    t_ready = time.time()

    # --- resume -----------------------------------------------------------------
    start_step, tokens_done, history = 0, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with restored_checkpoint(checkpoint) as ckdir:
            state = json.loads((ckdir / STATE_FILE).read_text())
            engine.load_checkpoint(str(ckdir), tag=DS_TAG, load_module_strict=False,
                                   load_optimizer_states=True, load_lr_scheduler_states=True)
        start_step, tokens_done, history = state["step"], state["tokens"], state.get("history", [])
        _log(rank, f"resumed from checkpoint at step {start_step}/{plan.total_steps}")
    _log(rank, f"training {spec.subtask}: {len(train_ids)} records, {world} worker(s), "
               f"{plan.total_steps} steps (micro-batch {training.microBatchSize} x accumulation {gas}), "
               f"ZeRO-{spec.deepspeed.zeroStage}, {precision}, trainable {trainable:,}/{total_params:,} params")

    pad_id = int(config["pad_id"])
    ckpt_every = training.checkpointEverySteps
    fault_after = config.get("fault_after_step")
    engine.train()

    def save_checkpoint(step: int, metrics: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory(prefix="anytasktune-ckpt-") as tmp:
            engine.save_checkpoint(tmp, tag=DS_TAG, exclude_frozen_parameters=True)
            if rank == 0:
                Path(tmp, STATE_FILE).write_text(json.dumps(
                    {"step": step, "tokens": tokens_done, "history": history, "run_id": spec.run_id()}))
            has_files = any(p.is_file() for p in Path(tmp).rglob("*"))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp) if has_files else None)
        _log(rank, f"checkpoint saved at step {step}")

    step = start_step
    last_loss = float("nan")
    t_loop = time.time()
    step_times: list[float] = []
    tokens_this_run = 0
    while step < plan.total_steps:
        t0 = time.time()
        lr = float(scheduler.get_last_lr()[0]) if scheduler is not None else training.learningRate
        loss_sum, local_tokens = 0.0, 0
        for k in range(gas):
            idx = micro_batch(plan, step * gas + k, rank, training.microBatchSize, training.seed)
            batch = encoding.pad_batch([(train_ids[i], train_labels[i]) for i in idx], pad_id)
            tensors = {k2: torch.tensor(v, dtype=torch.long, device=device) for k2, v in batch.items()}
            out = engine(**tensors)
            engine.backward(out.loss)
            engine.step()
            loss_sum += float(out.loss.detach())
            local_tokens += int(tensors["attention_mask"].sum())
        step += 1
        stats = torch.tensor([loss_sum / gas, float(local_tokens)], dtype=torch.float64, device=device)
        dist.all_reduce(stats)
        last_loss = float(stats[0]) / world
        step_tokens = int(stats[1])
        tokens_done += step_tokens
        tokens_this_run += step_tokens
        step_times.append(time.time() - t0)
        elapsed = time.time() - t_loop
        tok_s = tokens_this_run / elapsed if elapsed > 0 else 0.0
        eta = (plan.total_steps - step) * (elapsed / (step - start_step))
        epoch = plan.epoch_of_step(step - 1, gas)
        history.append({"step": step, "loss": round(last_loss, 6), "lr": lr})
        metrics = {"step": step, "total_steps": plan.total_steps, "epoch": epoch, "loss": last_loss,
                   "lr": lr, "tokens_per_s": tok_s, "eta_s": eta}
        log_now = step % training.logEverySteps == 0 or step == plan.total_steps or step == start_step + 1
        if log_now:
            _log(rank, f"step {step}/{plan.total_steps} epoch {epoch} loss {last_loss:.4f} lr {lr:.3e} "
                       f"tok/s {tok_s:,.0f} eta {_fmt_eta(eta)}")
        epoch_end = ckpt_every == 0 and plan.epoch_of_step(step, gas) != epoch
        if (ckpt_every and step % ckpt_every == 0) or epoch_end or step == plan.total_steps:
            save_checkpoint(step, metrics)
        elif log_now:
            ray.train.report(metrics)  # a barrier across workers: only at log steps
        if fault_after is not None and step == int(fault_after) and start_step < step:
            raise RuntimeError(f"injected fault after step {step} (ANYTASKTUNE_FAULT_AFTER_STEP)")
    t_trained = time.time()
    train_seconds = t_trained - t_loop

    # --- save the adapter (all ranks take part under ZeRO-3) --------------------------
    adapter_dir = Path(tempfile.mkdtemp(prefix="anytasktune-adapter-"))
    module = engine.module
    params = [p for p in module.parameters() if p.requires_grad]
    gather = (deepspeed.zero.GatheredParameters(params, modifier_rank=None)
              if spec.deepspeed.zeroStage == 3 else nullcontext())
    with gather:
        if rank == 0:
            state_dict = {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}
            module.save_pretrained(str(adapter_dir), state_dict=state_dict, safe_serialization=True)
    files: list[Any] = [None]
    if rank == 0:
        _rewrite_adapter_config(adapter_dir, config["base_model_identity"])
        tok = AutoTokenizer.from_pretrained(model_dir)
        tok.save_pretrained(str(adapter_dir))
        files = [{p.name: p.read_bytes() for p in adapter_dir.iterdir() if p.is_file()}]
    dist.broadcast_object_list(files, src=0)
    for name, blob in files[0].items():
        (adapter_dir / name).write_bytes(blob)
    engine = module = model = None  # free the training state before evaluation
    params = []
    gc.collect()

    # --- evaluation: base vs adapter, same prompts, sharded over ranks ----------------
    t_eval = time.time()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    tokenizer.padding_side = "left"
    base: Any = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    base = base.to(device)
    peft_model = PeftModel.from_pretrained(base, str(adapter_dir)).to(device)
    peft_model.eval()
    ev = spec.evaluation
    held: dict[str, Any] = data["holdout"]
    mine = list(range(rank, len(held["references"]), world))
    local_rows = []
    stops = list(config["stop_ids"])
    for use_adapter in (False, True):
        cm = nullcontext() if use_adapter else peft_model.disable_adapter()
        with cm, torch.no_grad():
            loss_sum, loss_tok = 0.0, 0
            preds: dict[int, str] = {}
            for b in range(0, len(mine), ev.batchSize):
                chunk = mine[b:b + ev.batchSize]
                batch = encoding.pad_batch([(held["ids"][i], held["labels"][i]) for i in chunk], pad_id)
                tens = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in batch.items()}
                logits = peft_model(input_ids=tens["input_ids"], attention_mask=tens["attention_mask"]).logits
                shift_logits = logits[:, :-1].float()
                shift_labels = tens["labels"][:, 1:]
                ce = torch.nn.functional.cross_entropy(
                    shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                    ignore_index=encoding.IGNORE_INDEX, reduction="sum")
                loss_sum += float(ce)
                loss_tok += int((shift_labels != encoding.IGNORE_INDEX).sum())
                gen_in = encoding.left_pad([held["prompts"][i] for i in chunk], pad_id)
                gen_t = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in gen_in.items()}
                out = peft_model.generate(**gen_t, max_new_tokens=ev.maxNewTokens, do_sample=False,
                                          eos_token_id=stops, pad_token_id=pad_id)
                new = out[:, gen_t["input_ids"].shape[1]:]
                for i, seq in zip(chunk, new.tolist(), strict=True):
                    preds[i] = str(tokenizer.decode(seq, skip_special_tokens=True)).strip()
        local_rows.append({"loss_sum": loss_sum, "loss_tokens": loss_tok, "preds": preds})
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, local_rows)
    t_done = time.time()
    if rank != 0:
        return None

    refs = held["references"]
    order = range(len(refs))
    metric_names = [m.value for m in metrics_for(ev, spec.taskType)]
    results: dict[str, dict[str, float]] = {}
    predictions: dict[str, list[str]] = {}
    for which, label in ((0, "base"), (1, "adapter")):
        loss_sum = sum(g[which]["loss_sum"] for g in gathered)
        loss_tok = sum(g[which]["loss_tokens"] for g in gathered)
        merged: dict[int, str] = {}
        for g in gathered:
            merged.update(g[which]["preds"])
        preds_list = [merged[i] for i in order]
        predictions[label] = preds_list
        res = {"eval_loss": loss_sum / loss_tok if loss_tok else float("nan")}
        for m in metric_names:
            res[m] = score(m, preds_list, refs)
        results[label] = res
    samples = [{"prompt": held["prompt_text"][i][-400:], "reference": refs[i],
                "base": predictions["base"][i], "adapter": predictions["adapter"][i]} for i in list(order)[:5]]
    summary: dict[str, Any] = {
        "training": {
            "startStep": start_step, "resumedFromStep": start_step if checkpoint is not None else None,
            "steps": plan.total_steps, "stepsThisAttempt": plan.total_steps - start_step,
            "warmupSteps": plan.warmup_steps, "epochs": training.epochs,
            "microBatchSize": training.microBatchSize, "gradientAccumulationSteps": gas, "worldSize": world,
            "zeroStage": spec.deepspeed.zeroStage, "precision": precision,
            "finalLoss": last_loss if not math.isnan(last_loss) else (history[-1]["loss"] if history else None),
            "tokens": tokens_done, "tokensThisAttempt": tokens_this_run,
            "tokensPerSecond": tokens_this_run / train_seconds if train_seconds > 0 and tokens_this_run else None,
            "stepsPerSecond": ((plan.total_steps - start_step) / train_seconds
                               if train_seconds > 0 and plan.total_steps > start_step else None),
            "trainableParams": trainable, "totalParams": total_params,
            "lossHistory": history[-200:], "deepspeedConfig": ds_config,
        },
        "evaluation": {
            "samples": len(refs), "metrics": metric_names, "base": results["base"],
            "adapter": results["adapter"], "lift": lift(results["base"], results["adapter"]),
            "maxNewTokens": ev.maxNewTokens, "examples": samples,
        },
        "timings": {
            "modelDownloadSeconds": t_loaded - t_start, "setupSeconds": t_ready - t_loaded,
            "trainSeconds": train_seconds, "saveSeconds": t_eval - t_trained, "evalSeconds": t_done - t_eval,
        },
    }
    storage.upload_dir(adapter_dir, config["run_prefix"])
    summary["artifacts"] = sorted(p.name for p in adapter_dir.iterdir() if p.is_file())
    return summary


def _rewrite_adapter_config(adapter_dir: Path, identity: str) -> None:
    """PEFT records the base model as our local cache path: record its real identity."""
    path = adapter_dir / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = identity
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
