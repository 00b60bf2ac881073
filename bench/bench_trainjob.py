"""Benchmark: LoRA training throughput on the tiny test model, plain torch vs
DeepSpeed ZeRO stage 0 / 2 / 3 and ZeRO-0 without its all-reduce on one rank (as the trainjob
builds it), all in one process (CPU, gloo, world size 1),
as ratios against ZeRO-0; variants are timed in interleaved rounds, the order reversed every
other round, so load from other processes hits them alike; each variant's ratio is taken within
each round and printed as the median with the rounds' range (on this machine a single figure
moved from 1.88x to 1.06x with the load). Also measures the DeepSpeed C++ op JIT build (cold: an
empty TORCH_EXTENSIONS_DIR; warm: the cached build).

    .venv/bin/python bench/bench_trainjob.py [--steps 100] [--hidden 64] [--layers 2] [--no-build-timing]
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ratios import median_range

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dist_env() -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(_free_port())}.items():
        os.environ.setdefault(k, v)


BUILD_SNIPPET = (
    "import time, os; os.environ.setdefault('DS_ACCELERATOR','cpu'); t=time.time(); "
    "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder; ShareMemCommBuilder().load(verbose=False); "
    "print(f'BUILD {time.time()-t:.2f}')"
)


def build_timing() -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as ext:
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": ext, "DS_ACCELERATOR": "cpu"}
        out = []
        for _ in range(2):
            proc = subprocess.run([sys.executable, "-c", BUILD_SNIPPET], capture_output=True, text=True, env=env)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("BUILD ")]
            out.append(float(line[-1].split()[1]) if line else float("nan"))
        return out[0], out[1]


def table(samples: dict[str, list[tuple[float, float]]], reference: str) -> str:
    """Markdown rows: each variant's median steps/s and tokens/s, and its speed against the
    reference taken within each round (the same load on both), as the median and the range."""
    ref = [steps for steps, _ in samples[reference]]
    rows = ["| variant | steps/s (median) | tokens/s (median) | vs " + reference.split()[-1] + ", median (range of rounds) |",
            "|---|---|---|---|"]
    for name, runs in samples.items():
        ratios = [steps / ref_steps for (steps, _), ref_steps in zip(runs, ref, strict=True)]
        rows.append(f"| {name} | {statistics.median(x for x, _ in runs):.2f} | {statistics.median(t for _, t in runs):,.0f} | "
                    f"{median_range(ratios)} |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100)  # ~3 s a round: 20 spread the rounds wider
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--no-build-timing", action="store_true")
    args = ap.parse_args()

    build = None if args.no_build_timing else build_timing()
    _dist_env()
    import deepspeed
    import tinymodel
    import torch
    from peft import LoraConfig, get_peft_model

    from anytasktune_contract.trainspec import DeepSpeedConfig, TrainingConfig
    from anytasktune_trainjob import encoding
    from anytasktune_trainjob.data import parse_record
    from anytasktune_trainjob.training import skip_single_rank_allreduce
    from anytasktune_trainjob.zero import build_deepspeed_config

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    deepspeed.init_distributed(dist_backend="gloo")
    records = tinymodel.sentiment_records(256, seed=3)
    instruction = "Classify the sentiment of the review as positive or negative."
    tok = tinymodel.build_tokenizer(tinymodel.training_texts(records, instruction))
    encoded = [encoding.encode(tok, parse_record(r, "taskfinetune", instruction), 128) for r in records]
    batches = []
    for i in range(0, len(encoded), args.batch):
        chunk = encoded[i:i + args.batch]
        b = encoding.pad_batch([(e.input_ids, e.labels) for e in chunk], tok.pad_token_id)
        batches.append({k: torch.tensor(v) for k, v in b.items()})
    training = TrainingConfig(microBatchSize=args.batch, gradientAccumulationSteps=1, learningRate=1e-3)

    def fresh_model() -> torch.nn.Module:
        base = tinymodel.build_model(len(tok), hidden=args.hidden, layers=args.layers)
        return get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                               target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))

    def timed(step_fn, offset: int) -> tuple[float, float]:  # noqa: ANN001
        tokens = 0
        t = time.perf_counter()
        for i in range(args.steps):
            b = batches[(i + offset) % len(batches)]
            step_fn(b)
            tokens += int(b["attention_mask"].sum())
        dt = time.perf_counter() - t
        return args.steps / dt, tokens / dt

    variants: list[tuple[str, Callable[[Any], Any]]] = []
    model = fresh_model()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def torch_step(b: dict, model=model) -> None:  # noqa: ANN001
        loss = model(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    variants.append(("plain torch (no DeepSpeed)", torch_step))
    for stage in (0, 2, 3):
        m = fresh_model()
        cfg = build_deepspeed_config(DeepSpeedConfig(zeroStage=stage), training, world_size=1, use_gpu=False,
                                     total_steps=10_000)
        engine, *_ = deepspeed.initialize(model=m, config=cfg,
                                          model_parameters=[p for p in m.parameters() if p.requires_grad])

        def ds_step(b: dict, engine=engine) -> None:  # noqa: ANN001
            loss = engine(**b).loss
            engine.backward(loss)
            engine.step()

        variants.append((f"DeepSpeed ZeRO-{stage}", ds_step))
        if stage == 0:  # as the trainjob builds it on one rank (training.build_engine's rule): no all-reduce
            m = fresh_model()
            solo, *_ = deepspeed.initialize(model=m, config=cfg,
                                            model_parameters=[p for p in m.parameters() if p.requires_grad])
            skip_single_rank_allreduce(solo, world=1, zero_stage=0)
            variants.append(("DeepSpeed ZeRO-0, no all-reduce on one rank (the trainjob's)",
                             functools.partial(ds_step, engine=solo)))

    for _, fn in variants:  # warm up every variant
        for i in range(args.warmup):
            fn(batches[i % len(batches)])
    # interleaved rounds, the order reversed every other round
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in variants}
    for r in range(args.rounds):
        for name, fn in (variants if r % 2 == 0 else variants[::-1]):
            samples[name].append(timed(fn, r * args.steps))

    print()
    print(f"tiny Qwen2 (hidden {args.hidden}, {args.layers} layers, vocab {len(tok)}), LoRA r=8 q/v, "
          f"micro-batch {args.batch}, fp32, CPU x{torch.get_num_threads()} threads, {args.rounds} interleaved rounds "
          f"of {args.steps} steps (the order reversed every other round)")
    print()
    print(table(samples, "DeepSpeed ZeRO-0"))
    if build is not None:
        print(f"\nDeepSpeed shm comm op JIT build: cold {build[0]:.1f}s, warm (cached) {build[1]:.1f}s")


if __name__ == "__main__":
    main()
