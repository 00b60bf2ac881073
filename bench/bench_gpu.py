"""Benchmark: LoRA training throughput and MFU at real model shapes, with nothing downloaded.

A Llama-shaped model is built from a config with random weights (`--shape 1b` or `8b`;
`smoke` is a CPU-sized one that `make bench` runs where there is no GPU), LoRA on the
attention and MLP projections, sequence `--seq`, SDPA attention, bf16 on a GPU (fp32 on the
CPU). Two loops, each over its own copy of the model (8B: two bf16 copies, ~32 GB), in
interleaved rounds:

  * plain PEFT: torch AdamW over the LoRA parameters;
  * DeepSpeed ZeRO-2 (the trainjob's engine, `build_deepspeed_config`).

Printed per loop: tokens/s (median of the rounds, and the spread), peak memory, and MFU:
tokens/s x FLOPs per token / the device's matmul rate measured by this script (a square
bf16 matmul on the GPU, fp32 on the CPU). FLOPs per token: N = the base model's parameters
(embeddings excluded); forward 2N and the backward's activation gradients 2N, no weight
gradients for the frozen base: ~4N without activation checkpointing, ~6N with it (the
forward runs twice); LoRA's own FLOPs and attention's seq-dependent ones are not counted, so
the MFU is a slight underestimate.

    .venv/bin/python bench/bench_gpu.py --shape 8b          # on a CUDA machine (target: >= 45% MFU, H100)
    .venv/bin/python bench/bench_gpu.py --shape smoke       # anywhere (make bench)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from typing import Any

SHAPES: dict[str, dict[str, int]] = {  # Llama 3.x shapes
    "smoke": {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 2048},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256},
}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def matmul_rate(torch: Any, device: Any, dtype: Any, n: int, repeats: int = 10) -> float:
    """FLOP/s of an n x n matmul on this device, measured (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(torch, device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(torch, device)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t)


def sync(torch: Any, device: Any) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(torch: Any, device: Any) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB, the whole process


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smoke")
    ap.add_argument("--seq", type=int, default=0, help="sequence length (default: 2048 on a GPU, 128 for smoke)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per loop and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()

    import torch

    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if gpu else "cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(k, v)
    import deepspeed
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from anytasktune_contract.trainspec import DeepSpeedConfig, TrainingConfig
    from anytasktune_trainjob.zero import build_deepspeed_config

    dtype = torch.bfloat16 if gpu else torch.float32
    seq = args.seq or (128 if args.shape == "smoke" else 2048)
    deepspeed.init_distributed(dist_backend="nccl" if gpu else "gloo")
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[args.shape], max_position_embeddings=max(seq, 2048), attn_implementation="sdpa",
                         tie_word_embeddings=False)
    def lora_model() -> Any:
        """A fresh random-weight model with LoRA: one per loop, as DeepSpeed's gradient hooks
        on its model's parameters would also fire for the other loop's backward."""
        torch.manual_seed(0)
        with device:
            base = LlamaForCausalLM(config).to(dtype)
        if args.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()
        return get_peft_model(base, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                               target_modules=LORA_TARGETS, task_type="CAUSAL_LM"))

    model = lora_model()
    n_base = sum(p.numel() for name, p in model.base_model.model.named_parameters()
                 if "embed_tokens" not in name and "lora_" not in name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    batch = {"input_ids": torch.randint(0, config.vocab_size, (args.batch, seq), device=device)}
    batch["labels"] = batch["input_ids"]

    optimizer = torch.optim.AdamW(trainable, lr=1e-4)

    def plain_step() -> None:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    training = TrainingConfig(microBatchSize=args.batch, gradientAccumulationSteps=1, learningRate=1e-4,
                              gradientCheckpointing=args.gradient_checkpointing)
    ds_config = build_deepspeed_config(DeepSpeedConfig(zeroStage=2), training, world_size=1, use_gpu=gpu,
                                       total_steps=10_000)
    ds_model = lora_model()
    engine, *_ = deepspeed.initialize(model=ds_model, config=ds_config,
                                      model_parameters=[p for p in ds_model.parameters() if p.requires_grad])

    def deepspeed_step() -> None:
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()

    loops = {"plain PEFT (torch AdamW)": plain_step, "DeepSpeed ZeRO-2 (the trainjob's engine)": deepspeed_step}
    peaks: dict[str, float] = {}
    for name, step in loops.items():  # warm-up, and each loop's own peak memory
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            step()
        sync(torch, device)
        peaks[name] = peak_memory_gib(torch, device)
    samples: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(args.rounds):
        for name, step in loops.items():
            sync(torch, device)
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(torch, device)
            samples[name].append(args.steps * args.batch * seq / (time.perf_counter() - t))

    rate = matmul_rate(torch, device, dtype, 8192 if gpu else 1024)
    flops_per_token = (6 if args.gradient_checkpointing else 4) * n_base
    where = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"\n{where}; shape {args.shape} ({n_base / 1e9:.3f} B base parameters without embeddings, "
          f"{sum(p.numel() for p in trainable) / 1e6:.2f} M LoRA r={args.lora_r}), {str(dtype).removeprefix('torch.')}, "
          f"batch {args.batch} x seq {seq}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps; measured matmul rate {rate / 1e12:.1f} TFLOP/s; "
          f"{flops_per_token / n_base:.0f}N FLOPs per token\n")
    print("| loop | tokens/s (median) | spread (min-max) | MFU | vs plain | peak memory (GiB) |")
    print("|---|---|---|---|---|---|")
    plain = statistics.median(samples[next(iter(loops))])
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"| {name} | {med:,.0f} | {min(values):,.0f}-{max(values):,.0f} | {100 * med * flops_per_token / rate:.1f}% "
              f"| {med / plain:.2f}x | {peaks[name]:.2f} |")


if __name__ == "__main__":
    main()
