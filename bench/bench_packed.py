"""Benchmark (issue 12 §4): K sub-task LoRA adapters trained packed — one process, one
frozen copy of the base model, batches mixing the sub-tasks (anytasktune_trainjob.packed) —
against K separate runs, at K = 2 and 4.

The base is a Llama-shaped model built from a config (random weights, nothing downloaded;
hidden 512, 8 layers, ~24M parameters) with a BPE tokenizer trained on the records. Four
synthetic classification sub-tasks (sentiment, topic, price mentioned, length) go through
the trainjob's own data path (`runner.prepare_data`: parse, held-out split, chat template,
answer-only labels). Every run trains each of its sub-tasks on the same records in the same
order for the same steps, with the same seeds, learning rate schedule and clipping:

    packed K    PackedTrainer over sub-tasks 0..K-1 (torch AdamW, a param group per adapter)
    separate k  sub-task k alone: PEFT LoRA + torch AdamW, the trainjob's schedule

Each run is a fresh process (so its peak RSS is its own: K separate runs on one node need
the sum of theirs side by side, the max one after another). The four separate runs serve
both K (sub-tasks 0-1 for K = 2, 0-3 for K = 4). Runs go in interleaved rounds, the order
reversed every other round, so load from other processes hits every variant alike.
Throughput: each run's median step time after its first step; per round, the speedup of
packed K is the sum of the K separate runs' step times over the packed step time (the same
records per step); the median and range over rounds are printed. Quality: every adapter
is exported in PEFT's format, loaded by the trainjob's evaluation (`evaluation.load_models`,
`evaluate_pass`) and scored on its sub-task's held-out records (answer-token loss, accuracy),
packed against separate, within LOSS_TOL and ACCURACY_TOL_RECORDS. Their weights are
compared too, but are no criterion: a packed batch is padded to its longest record of any
sub-task, so rounding differs; where it flips the sign of an almost-zero gradient element,
Adam turns that into a full step the other way, and over the steps the trajectories drift
apart (up to ~lr per element) as much as two separate runs padded differently do.

    .venv/bin/python bench/bench_packed.py [--rounds 3] [--steps 32] [--batch 4] [--records 120]
    python3 bench/bench_packed.py --device cuda [--dtype bf16] [--shape 135m]   # on a CUDA machine

On a GPU every step ends with the losses read back (as the trainjob's loop reads them), so a
step's time is its GPU work; memory is the GPU's peak allocation (each separate run also holds
its own CUDA context, ~0.5 GiB, which that figure leaves out).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SUBTASKS = ("sentiment", "topic", "price", "length")
KS = (2, 4)
LORA: dict[str, Any] = {"r": 16, "alpha": 32, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]}
SHAPES: dict[str, dict[str, Any]] = {  # Llama-shaped bases built from a config (random weights; the vocabulary is the bench's own BPE)
    "small": {"hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 8, "num_attention_heads": 8,
              "num_key_value_heads": 4},
    # SmolLM2-135M's layers (the demo's model), for a GPU: one sub-task's micro-batch leaves it idle.
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3},
}
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
# nats. fp32: float rounding moves it ~1e-6; a gradient from the wrong rows moves it ~1e-1. bf16 keeps
# 8 bits of mantissa (relative 4e-3 a rounding) and a packed batch rounds differently from a
# separate one (its padding), so its bound is 2e-2, still 5x below a wrong-rows gradient.
LOSS_TOL = {"fp32": 1e-3, "bf16": 2e-2}
ACCURACY_TOL_RECORDS = 1  # a greedy answer on a near-tie may flip with float rounding
WEIGHT_ATOL = 1e-5  # reported, not a criterion: see "weights" in report()
FILLER = ("the service was quick and friendly but the room felt small and the view over the old harbour "
          "made up for the noise from the street below while breakfast came late every single morning").split()
POSITIVE, NEGATIVE = ["great", "wonderful", "excellent", "lovely"], ["terrible", "awful", "horrible", "poor"]
DEVICES, PLACES = ["phone", "laptop", "camera", "tablet"], ["hotel", "restaurant", "museum", "station"]
INSTRUCTIONS = {
    "sentiment": "Is the review positive or negative?",
    "topic": "Is the review about a device or a place?",
    "price": "Does the review mention a price? Answer yes or no.",
    "length": "Is the review short or long?",
}


# --- data ------------------------------------------------------------------------------------------
def review(rng: random.Random, words: int) -> list[str]:
    return [rng.choice(FILLER) for _ in range(words)]


def records(subtask: str, n: int, seed: int) -> list[dict[str, str]]:
    """`n` {"input", "output"} records whose label follows one rule per sub-task."""
    rng = random.Random(f"{subtask}-{seed}")
    out = []
    for _ in range(n):
        words = review(rng, rng.randint(25, 55))
        at = rng.randrange(len(words))
        if subtask == "sentiment":
            label = rng.choice(["positive", "negative"])
            words.insert(at, "it was " + rng.choice(POSITIVE if label == "positive" else NEGATIVE))
        elif subtask == "topic":
            label = rng.choice(["device", "place"])
            words.insert(at, "the " + rng.choice(DEVICES if label == "device" else PLACES))
        elif subtask == "price":
            label = rng.choice(["yes", "no"])
            if label == "yes":
                words.insert(at, f"it cost {rng.randint(5, 500)} dollars")
        else:
            label = rng.choice(["short", "long"])
            words = words[:rng.randint(10, 20)] if label == "short" else words + review(rng, 15)
        out.append({"input": " ".join(words), "output": label})
    return out


def spec_doc(args: argparse.Namespace, subtask: str, dataset: Path, model_dir: Path, seed: int) -> dict[str, Any]:
    return {
        "taskFineTune": "bench-packed", "domain": "reviews", "subtask": subtask,
        "instruction": INSTRUCTIONS[subtask], "taskType": "classification",
        "baseModel": {"uri": str(model_dir)},
        "dataset": {"uri": str(dataset), "format": "taskfinetune"},
        "lora": LORA,
        "training": {"epochs": 2, "maxSteps": args.steps, "learningRate": args.lr, "microBatchSize": args.batch,
                     "gradientAccumulationSteps": 1, "maxSeqLength": 160, "warmupRatio": 0.1, "weightDecay": 0.0,
                     "maxGradNorm": 1.0, "seed": seed},
        "deepspeed": {}, "evaluation": {"holdout": 0.2, "maxNewTokens": 3, "batchSize": 8, "maxSamples": 24},
        "dataContract": {"minSamples": 10, "maxTruncatedFraction": 1.0, "maxDuplicateFraction": 0.0},
        "storage": {}, "outputPrefix": f"s3://bench/runs/{subtask}", "scaling": {"numWorkers": 1, "useGpu": False},
    }


def prepare(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The model folder (config, random weights, tokenizer) and each sub-task's spec and
    payload from the trainjob's own prepare_data."""
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import tinymodel
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from anytasktune_contract.trainspec import TrainJobSpec
    from anytasktune_trainjob.runner import prepare_data

    data = {name: records(name, args.records, seed=1) for name in SUBTASKS}
    texts = [INSTRUCTIONS[n] for n in SUBTASKS] + [r[f] for rs in data.values() for r in rs for f in ("input", "output")]
    tokenizer = tinymodel.build_tokenizer(texts + ["system", "user", "assistant"], vocab_size=1024)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=512, tie_word_embeddings=True,
                                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                         bos_token_id=None, **SHAPES[args.shape]))
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model_dir = workdir / "model"
    model.save_pretrained(model_dir, safe_serialization=True)
    tokenizer.save_pretrained(model_dir)
    tasks = []
    for i, name in enumerate(SUBTASKS):
        dataset = workdir / f"{name}.jsonl"
        dataset.write_text(tinymodel.to_jsonl(data[name]))
        spec = TrainJobSpec.model_validate(spec_doc(args, name, dataset, model_dir, seed=100 + i))
        prepared = prepare_data(spec, None, log=lambda _m: None)  # type: ignore[arg-type]  # local files: no store
        tasks.append({"spec": spec.to_json(), "payload": prepared.payload, "pad_id": prepared.pad_id,
                      "stop_ids": prepared.stop_ids})
    return {"model_dir": str(model_dir), "tasks": tasks, "device": args.device, "dtype": args.dtype,
            "params": sum(p.numel() for p in model.parameters()), "vocab": len(tokenizer)}


def placement(job: dict[str, Any]) -> tuple[Any, Any]:
    """(torch device, torch dtype) the job's runs train and evaluate on."""
    import torch

    return torch.device(job["device"]), getattr(torch, DTYPES[job["dtype"]])


def peak_mib(device: Any) -> float:
    """The run's peak memory: host RSS on a CPU, the GPU's peak allocation on a GPU."""
    from anytasktune_trainjob.training import peak_memory_mib

    host, gpu = peak_memory_mib(device)
    return gpu if gpu is not None else host


# --- the children: one run each, a RESULT line on stdout ---------------------------------------------
def evaluate_adapter(job: dict[str, Any], task: dict[str, Any], folder: Path) -> dict[str, float]:
    """The adapter folder scored by the trainjob's evaluation on its sub-task's held-out records."""
    import torch
    from transformers import AutoTokenizer

    from anytasktune_contract.trainspec import TrainJobSpec
    from anytasktune_trainjob.evaluation import evaluate_pass, load_models
    from anytasktune_trainjob.metrics import per_record
    from anytasktune_trainjob.worker import WorkerContext

    AutoTokenizer.from_pretrained(job["model_dir"]).save_pretrained(str(folder))  # load_models reads it there
    device, dtype = placement(job)
    ctx = WorkerContext(rank=0, world=1, device=device, precision=job["dtype"], dtype=dtype)
    model, tokenizer = load_models(job["model_dir"], folder, ctx)
    held = task["payload"]["holdout"]
    with torch.no_grad():
        row = evaluate_pass(model, tokenizer, held, list(range(len(held["references"]))),
                            TrainJobSpec.from_json(task["spec"]).evaluation, task["pad_id"], task["stop_ids"], ctx.device)
    preds = [row["preds"][i] for i in range(len(held["references"]))]
    accuracy = per_record("accuracy", preds, held["references"], held["classLabels"])
    return {"eval_loss": row["loss_sum"] / row["loss_tokens"], "accuracy": sum(accuracy) / len(accuracy),
            "records": len(accuracy)}


def child_packed(job: dict[str, Any], k: int, out: Path) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM

    from anytasktune_contract.trainspec import TrainJobSpec
    from anytasktune_trainjob.packed import PackedLoraModel, PackedTrainer, SubTask
    from anytasktune_trainjob.summary import step_time_stats

    tasks = job["tasks"][:k]
    subtasks = [SubTask.from_spec(TrainJobSpec.from_json(t["spec"]), t["payload"]) for t in tasks]
    device, dtype = placement(job)
    base: Any = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=dtype).to(device)
    trainer = PackedTrainer(PackedLoraModel(base, LORA["targetModules"]), subtasks, pad_id=tasks[0]["pad_id"],
                            device=device)
    outcome = trainer.train()  # each step reads its losses back: on a GPU, a step's time is its GPU work
    peak = peak_mib(device)  # before evaluation loads another copy of the base
    padded = sum(trainer.micro_batch(s, 0)[0]["input_ids"].numel() for s in range(outcome.steps))
    folders = trainer.export(out, job["model_dir"])
    return {"step_stats": step_time_stats(outcome.step_seconds), "steps": outcome.steps, "tokens": outcome.tokens,
            "padded": padded, "peak_mib": peak,
            "eval": {s.name: evaluate_adapter(job, t, folders[s.name]) for s, t in zip(subtasks, tasks, strict=True)}}


def child_separate(job: dict[str, Any], k: int, out: Path) -> dict[str, Any]:
    """Sub-task k alone, as the trainjob trains it (PEFT LoRA seeded by training.seed, AdamW,
    warmup + cosine, clipping) in a plain loop; DeepSpeed left out as in the packed run
    (bench-overhead: the trainjob's ZeRO-2 loop runs within 1% of this loop)."""
    from functools import partial

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from anytasktune_contract.trainspec import TrainJobSpec
    from anytasktune_trainjob import encoding
    from anytasktune_trainjob.adapter import write_adapter
    from anytasktune_trainjob.summary import step_time_stats
    from anytasktune_trainjob.zero import lr_factor, micro_batch, plan_steps

    task = job["tasks"][k]
    spec = TrainJobSpec.from_json(task["spec"])
    tr, ids, labels = spec.training, task["payload"]["train_ids"], task["payload"]["train_labels"]
    device, dtype = placement(job)
    torch.manual_seed(tr.seed)
    base: Any = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=dtype).to(device)
    model = get_peft_model(base, LoraConfig(r=spec.lora.r, lora_alpha=spec.lora.alpha, lora_dropout=spec.lora.dropout,
                                            target_modules=list(spec.lora.targetModules), task_type="CAUSAL_LM"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=tr.learningRate, betas=(0.9, 0.999), eps=1e-8, weight_decay=tr.weightDecay)
    plan = plan_steps(len(ids), 1, tr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(lr_factor, total_steps=plan.total_steps,
                                                                     warmup=plan.warmup_steps))
    model.train()
    seconds, tokens, padded = [], 0, 0
    for step in range(plan.total_steps):
        t = time.perf_counter()
        idx = micro_batch(plan, step, 0, tr.microBatchSize, tr.seed)
        batch = encoding.pad_batch([(ids[i], labels[i]) for i in idx], task["pad_id"])
        tensors = {name: torch.tensor(v, dtype=torch.long, device=device) for name, v in batch.items()}
        loss = model(**tensors).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tr.maxGradNorm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        float(loss.detach())  # read back, as the trainjob's and the packed loop read their losses
        seconds.append(time.perf_counter() - t)
        tokens += int(tensors["attention_mask"].sum())
        padded += tensors["input_ids"].numel()
    peak = peak_mib(device)
    folder = out / spec.subtask
    write_adapter(model, folder)  # the trainjob's own adapter writer
    return {"step_stats": step_time_stats(seconds), "steps": plan.total_steps, "tokens": tokens, "padded": padded,
            "peak_mib": peak, "eval": {spec.subtask: evaluate_adapter(job, task, folder)}}


# --- the parent ----------------------------------------------------------------------------------
def run_child(variant: str, job_file: Path, out: Path, threads: int, device: str) -> dict[str, Any]:
    kind, _, number = variant.partition("-")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **({"DS_ACCELERATOR": "cpu"} if device == "cpu" else {})}
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--k", number, "--job", str(job_file),
                           "--out", str(out), "--threads", str(threads)], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1][len("RESULT "):]))


def weight_diff(a: Path, b: Path) -> tuple[float, int, int]:
    """Two PEFT adapter folders' tensors: (largest absolute difference, elements that differ
    by more than WEIGHT_ATOL, elements)."""
    from safetensors.torch import load_file

    ta, tb = load_file(str(a / "adapter_model.safetensors")), load_file(str(b / "adapter_model.safetensors"))
    if set(ta) != set(tb):
        raise RuntimeError(f"adapter keys differ: {sorted(set(ta) ^ set(tb))[:4]}")
    return (max(float((ta[k] - tb[k]).abs().max()) for k in ta),
            sum(int(((ta[k] - tb[k]).abs() > WEIGHT_ATOL).sum()) for k in ta), sum(ta[k].numel() for k in ta))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--records", type=int, default=120)
    ap.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="the base model's (adapters stay fp32, as PEFT keeps them)")
    ap.add_argument("--shape", choices=tuple(SHAPES), default="small")
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--child", choices=("packed", "separate"))
    ap.add_argument("--k", type=int)
    ap.add_argument("--job")
    ap.add_argument("--out")
    args = ap.parse_args()

    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        with open(args.job, "rb") as f:
            job = pickle.load(f)
        child = child_packed if args.child == "packed" else child_separate
        print("RESULT " + json.dumps(child(job, args.k, Path(args.out))), flush=True)
        return

    variants = [f"packed-{KS[0]}", "separate-0", "separate-1", f"packed-{KS[1]}", "separate-2", "separate-3"]
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    loads = [os.getloadavg()[0]]  # the 1-minute load average before the benchmark and before each run
    with tempfile.TemporaryDirectory(prefix="anytasktune-bench-packed-") as tmp:
        workdir = Path(tmp)
        job = prepare(args, workdir)
        job_file = workdir / "job.pickle"
        job_file.write_bytes(pickle.dumps(job))
        for n in range(1, args.rounds + 1):
            order = variants if n % 2 else list(reversed(variants))  # no variant always goes first
            for variant in order:
                out = workdir / f"round{n}" / variant
                loads.append(os.getloadavg()[0])
                r = run_child(variant, job_file, out, args.threads, args.device)
                r["folders"] = {name: str(out / name) for name in r["eval"]}
                results[variant].append(r)
                s = r["step_stats"]
                print(f"round {n} {variant:10s}: steady step {s['median'] * 1000:7.1f} ms (p10 {s['p10'] * 1000:.1f}, "
                      f"p90 {s['p90'] * 1000:.1f}), load {loads[-1]:.1f}, {r['tokens']} tokens, peak {r['peak_mib']:.0f} MiB, "
                      + ", ".join(f"{name} loss {e['eval_loss']:.4f} acc {e['accuracy']:.3f}" for name, e in r["eval"].items()),
                      flush=True)
        diffs = {(k, n, name): weight_diff(Path(results[f"packed-{k}"][n]["folders"][name]),
                                           Path(results[f"separate-{i}"][n]["folders"][name]))
                 for k in KS for n in range(args.rounds) for i, name in enumerate(SUBTASKS[:k])}
    report(args, job, results, diffs, loads)


def report(args: argparse.Namespace, job: dict[str, Any], results: dict[str, list[dict[str, Any]]],
           diffs: dict[tuple[int, int, str], tuple[float, int, int]], loads: list[float]) -> None:
    import torch

    def med(r: dict[str, Any]) -> float:
        return float(r["step_stats"]["median"])

    def spread(xs: list[float], fmt: str = ".2f") -> str:
        return f"{statistics.median(xs):{fmt}} ({min(xs):{fmt}}-{max(xs):{fmt}})"

    rounds = range(args.rounds)

    def weights(k: int, name: str) -> str:
        # The same in every round (the runs are deterministic): the worst round is shown.
        worst, outside, total = max(diffs[(k, n, name)] for n in rounds)
        return f"{worst:.1e} ({outside:,} of {total:,})"
    where = (f"{args.dtype} on {torch.cuda.get_device_name(0)}" if args.device == "cuda"
             else f"{args.dtype} on CPU, {args.threads} threads")
    memory = "peak GPU allocation" if args.device == "cuda" else "peak RSS"
    print(f"\nLlama-shaped base from a config ({args.shape}: {job['params'] / 1e6:.1f}M parameters, vocab {job['vocab']}), "
          f"LoRA r={LORA['r']} on {'/'.join(LORA['targetModules'])} (fp32 adapters), {where}; micro-batch {args.batch} per sub-task, "
          f"{args.steps} steps, {args.rounds} interleaved rounds; torch {torch.__version__}; "
          f"1-minute load average {loads[0]:.2f} before, {max(loads[1:]):.2f} at most before a run, {os.getloadavg()[0]:.2f} after")
    print("\n| K | packed step (ms) | K separate steps, summed (ms) | speedup packed vs K separate, median (range) | "
          f"tokens/s packed | tokens/s separate | padding packed / separate | {memory} packed (MiB) | "
          "separate: sum / max (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in KS:
        packed = results[f"packed-{k}"]
        separate = [results[f"separate-{i}"] for i in range(k)]
        speedups = [sum(med(s[n]) for s in separate) / med(packed[n]) for n in rounds]
        packed_ms = statistics.median(med(r) for r in packed) * 1000
        separate_ms = statistics.median(sum(med(s[n]) for s in separate) for n in rounds) * 1000
        tokens_per_step = packed[0]["tokens"] / packed[0]["steps"]
        pad_packed = 1 - packed[0]["tokens"] / packed[0]["padded"]
        pad_separate = 1 - sum(s[0]["tokens"] for s in separate) / sum(s[0]["padded"] for s in separate)
        peaks = [statistics.median(r["peak_mib"] for r in s) for s in separate]
        print(f"| {k} | {packed_ms:.0f} | {separate_ms:.0f} | {spread(speedups)}x | {tokens_per_step / packed_ms * 1000:,.0f} | "
              f"{tokens_per_step / separate_ms * 1000:,.0f} | {pad_packed:.0%} / {pad_separate:.0%} | "
              f"{statistics.median(r['peak_mib'] for r in packed):,.0f} | {sum(peaks):,.0f} / {max(peaks):,.0f} |")

    print("\n| K | sub-task | held-out loss packed | separate | accuracy packed | separate | held-out records | "
          "weights: max difference (elements > 1e-5 apart) |")
    print("|---|---|---|---|---|---|---|---|")
    worst_loss, worst_flips = 0.0, 0.0
    for k in KS:
        for i, name in enumerate(SUBTASKS[:k]):
            p = [r["eval"][name] for r in results[f"packed-{k}"]]
            s = [r["eval"][name] for r in results[f"separate-{i}"]]
            worst_loss = max([worst_loss] + [abs(a["eval_loss"] - b["eval_loss"]) for a, b in zip(p, s, strict=True)])
            worst_flips = max([worst_flips] + [abs(a["accuracy"] - b["accuracy"]) * a["records"] for a, b in zip(p, s, strict=True)])
            print(f"| {k} | {name} | {p[0]['eval_loss']:.4f} | {s[0]['eval_loss']:.4f} | {p[0]['accuracy']:.3f} | "
                  f"{s[0]['accuracy']:.3f} | {p[0]['records']} | {weights(k, name)} |")
    loss_tol = LOSS_TOL[args.dtype]
    verdict = "within" if worst_loss <= loss_tol and round(worst_flips) <= ACCURACY_TOL_RECORDS else "OUTSIDE"
    print(f"\nPacked vs separate, every sub-task and round: max |held-out loss difference| {worst_loss:.1e} "
          f"(tolerance {loss_tol:g}), max accuracy difference {round(worst_flips)} held-out records "
          f"(tolerance {ACCURACY_TOL_RECORDS}): {verdict} tolerance")


if __name__ == "__main__":
    main()
