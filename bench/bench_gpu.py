"""Benchmark: LoRA training throughput and MFU at real model shapes, with nothing downloaded.

A Llama-shaped model is built from a config with random weights, in bf16 on a GPU (fp32 on
the CPU): `--shape 8b` or `1b` (Llama 3.x), `135m` (SmolLM2-135M, the demo's model), or
`smoke`, a CPU-sized one that `make bench` runs where there is no GPU. LoRA r=16 on the
attention and MLP projections, sequence `--seq` (2048 by default), SDPA attention. The loops
(`--engines`, the first the baseline), each over its own copy of the model, in interleaved
rounds, the order reversed every other round:

  * plain: torch AdamW over the LoRA parameters, gradients clipped as the trainjob clips them;
    PEFT's default fp32 adapters over the bf16 base (every adapter input is cast);
  * plain-bf16: the same, adapters in the model's dtype;
  * zero2: DeepSpeed ZeRO-2 as the trainjob configures it (`build_deepspeed_config`);
  * zero0, zero2-overlap: DeepSpeed ZeRO-0; ZeRO-2 with overlap_comm on, as the trainjob ran it
    on one GPU before 2026-11-26 (it now turns it on only with more than one rank);
  * zero2-liger, plain-bf16-liger: the same loops over a model with Liger-Kernel's fused Triton
    kernels (RMSNorm, SwiGLU, and a cross-entropy fused with the output projection that never
    materialises the logits), patched into that model instance only; on a GPU, with
    `liger-kernel` installed. Liger's rotary embedding is patched module-wide (every loop in the
    process gets it), so only with `--liger-rope`, and then best with one loop.

Printed per loop: tokens/s (median of the rounds, and the spread), the speed against the first
loop taken within each round (median and range), step time, the loop's own
peak memory (its model, optimizer state and activations; the other loops' models excluded), and
MFU: tokens/s x FLOPs per token / the device's matmul rate measured by this script (an
8192^3 bf16 matmul on the GPU, fp32 on the CPU). FLOPs per token: N = the base's matmul
parameters (embeddings excluded, the output projection included); forward 2N and the
backward's activation gradients 2N, no weight gradients for the frozen base: ~4N without
activation checkpointing, ~6N with it (the forward runs twice); LoRA's own FLOPs are not
counted. "MFU with attention" adds PaLM's 12 x layers x hidden x seq per token (16 with
checkpointing), which a causal kernel does about half of. `--profile STEPS` prints the top
operators by device time.

    .venv/bin/python bench/bench_gpu.py --shape 8b --batch 4   # on a CUDA machine (target: >= 45% MFU, H100)
    .venv/bin/python bench/bench_gpu.py --shape smoke          # anywhere (make bench)
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
from typing import Any

from ratios import median_range

SHAPES: dict[str, dict[str, Any]] = {  # Llama 3.x shapes, and the demo's SmolLM2-135M
    "smoke": {"hidden_size": 128, "intermediate_size": 344, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 2048},
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256},
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256},
}
ENGINES = {  # --engines name: the loop's label in the table
    "plain": "plain PEFT (torch AdamW; PEFT's default fp32 adapters)",
    "plain-bf16": "plain PEFT (torch AdamW; adapters in the model's dtype)",
    "zero0": "DeepSpeed ZeRO-0",
    "zero2": "DeepSpeed ZeRO-2 (the trainjob's engine)",
    "zero2-overlap": "DeepSpeed ZeRO-2, overlap_comm on",
    "zero2-liger": "DeepSpeed ZeRO-2, Liger kernels",
    "plain-bf16-liger": "plain PEFT (adapters in the model's dtype), Liger kernels",
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


def allocated(torch: Any, device: Any) -> int:
    return torch.cuda.memory_allocated() if device.type == "cuda" else 0


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
    ap.add_argument("--engines", default="plain,zero2",
                    help=f"comma-separated loops, the first the baseline of 'vs': {', '.join(ENGINES)}")
    ap.add_argument("--liger-rope", action="store_true",
                    help="the -liger loops also get Liger's rotary embedding: patched module-wide, so every loop does")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="also profile STEPS steps of each loop and print the top operators by device time")
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
    config = LlamaConfig(**{"tie_word_embeddings": False, **SHAPES[args.shape]},  # type: ignore[call-arg]
                         max_position_embeddings=max(seq, 2048), attn_implementation="sdpa")  # a PretrainedConfig kwarg
    counts: dict[str, int] = {}

    def lora_model(autocast_adapter_dtype: bool, liger: bool = False) -> Any:
        """A fresh random-weight model with LoRA: one per loop, as DeepSpeed's gradient hooks
        on its model's parameters would also fire for another loop's backward.
        autocast_adapter_dtype: PEFT's default, adapters in fp32 over a bf16 base (each input cast).
        liger: Liger-Kernel's fused kernels patched into this instance (before LoRA wraps the
        projections: the fused SwiGLU calls the wrapped gate and up projections)."""
        torch.manual_seed(0)
        default_dtype = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # built in bf16: an fp32 copy of 8B first would need 32 GB more
        try:
            with device:
                base = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(default_dtype)
        if liger:
            import sys

            from liger_kernel.transformers.monkey_patch import _apply_liger_kernel_to_instance

            module = sys.modules[type(base).__module__]  # Liger also swaps this module's classes:
            saved = dict(vars(module))  # put them back, so later loops' models are plain
            _apply_liger_kernel_to_instance(model=base, rope=args.liger_rope, rms_norm=True, swiglu=True,
                                            fused_linear_cross_entropy=True)
            for name, value in saved.items():
                if not (args.liger_rope and name == "apply_rotary_pos_emb"):
                    setattr(module, name, value)
        if args.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            base.enable_input_require_grads()
        # N: the base's matmul parameters; the output projection counts even when tied to the embeddings
        counts["base"] = sum(p.numel() for name, p in base.named_parameters() if "embed_tokens" not in name)
        if config.tie_word_embeddings:
            counts["base"] += config.vocab_size * config.hidden_size
        model = get_peft_model(base, LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                                                target_modules=LORA_TARGETS, task_type="CAUSAL_LM"),
                               autocast_adapter_dtype=autocast_adapter_dtype)
        counts["lora"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model

    batch = {"input_ids": torch.randint(0, config.vocab_size, (args.batch, seq), device=device)}
    batch["labels"] = batch["input_ids"]
    training = TrainingConfig(microBatchSize=args.batch, gradientAccumulationSteps=1, learningRate=1e-4,
                              gradientCheckpointing=args.gradient_checkpointing)

    def make_loop(engine_name: str) -> Any:
        """One engine's training step, over its own model."""
        liger = engine_name.endswith("-liger")
        engine_name = engine_name.removesuffix("-liger")
        if engine_name.startswith("plain"):
            model = lora_model(autocast_adapter_dtype=engine_name == "plain", liger=liger)
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=training.learningRate)

            def plain_step() -> None:
                loss = model(**batch).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, training.maxGradNorm)  # as the trainjob clips
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return plain_step
        stage = int(engine_name[len("zero")])
        ds_config = build_deepspeed_config(DeepSpeedConfig(zeroStage=stage), training, world_size=1, use_gpu=gpu,
                                           total_steps=10_000)
        if engine_name.endswith("-overlap"):
            ds_config["zero_optimization"]["overlap_comm"] = gpu  # DeepSpeed overlaps on GPUs only
        ds_model = lora_model(autocast_adapter_dtype=True, liger=liger)  # DeepSpeed's bf16 mode casts the adapters
        engine, *_ = deepspeed.initialize(model=ds_model, config=ds_config,
                                          model_parameters=[p for p in ds_model.parameters() if p.requires_grad])

        def deepspeed_step() -> None:
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
        return deepspeed_step

    loops: dict[str, Any] = {}
    own_bytes: dict[str, int] = {}  # each loop's model, on the GPU
    for engine_name in args.engines.split(","):
        before = allocated(torch, device)
        loops[ENGINES[engine_name]] = make_loop(engine_name)
        own_bytes[ENGINES[engine_name]] = allocated(torch, device) - before
    n_base = counts["base"]
    peaks: dict[str, float] = {}
    for name, step in loops.items():  # warm-up, and each loop's own peak memory
        others = allocated(torch, device) - own_bytes[name]  # the other loops' models and optimizer states
        if gpu:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.warmup):
            step()
        sync(torch, device)
        peaks[name] = peak_memory_gib(torch, device) - others / 2 ** 30
    samples: dict[str, list[float]] = {name: [] for name in loops}
    for r in range(args.rounds):  # the order reversed every other round
        for name, step in (list(loops.items()) if r % 2 == 0 else list(loops.items())[::-1]):
            sync(torch, device)
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync(torch, device)
            samples[name].append(args.steps * args.batch * seq / (time.perf_counter() - t))

    if args.profile:
        profile(torch, loops, sync, device, args.profile)
    rate = matmul_rate(torch, device, dtype, 8192 if gpu else 1024)
    flops_per_token = (6 if args.gradient_checkpointing else 4) * n_base
    # PaLM's attention term, 12 x layers x hidden x seq per token (QK^T and AV, forward and backward;
    # the forward again with checkpointing adds 4): causal kernels skip about half of it.
    attention_flops = (16 if args.gradient_checkpointing else 12) * config.num_hidden_layers * config.hidden_size * seq
    where = torch.cuda.get_device_name() if gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"\n{where}; shape {args.shape} ({n_base / 1e9:.3f} B matmul parameters N, "
          f"{counts['lora'] / 1e6:.2f} M LoRA r={args.lora_r}), {str(dtype).removeprefix('torch.')}, "
          f"batch {args.batch} x seq {seq}, gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; "
          f"{args.rounds} interleaved rounds of {args.steps} steps; measured matmul rate {rate / 1e12:.1f} TFLOP/s; "
          f"{flops_per_token / n_base:.0f}N FLOPs per token\n")
    print("| loop | tokens/s (median) | spread (min-max) | step (ms) | MFU | MFU with attention "
          "| vs first, median (range of rounds) | peak memory (GiB) |")
    print("|---|---|---|---|---|---|---|---|")
    first = samples[next(iter(loops))]
    for name, values in samples.items():
        med = statistics.median(values)
        ratios = [v / f for v, f in zip(values, first, strict=True)]  # within each round: the same load
        print(f"| {name} | {med:,.0f} | {min(values):,.0f}-{max(values):,.0f} | {1000 * args.batch * seq / med:,.1f} "
              f"| {100 * med * flops_per_token / rate:.1f}% | {100 * med * (flops_per_token + attention_flops) / rate:.1f}% "
              f"| {median_range(ratios)} | {peaks[name]:.2f} |")


def profile(torch: Any, loops: dict[str, Any], sync: Any, device: Any, steps: int) -> None:
    """Where a step's time goes: the operators that took the most device time over `steps`
    steps of each loop (torch.profiler; CUDA time on a GPU, CPU time elsewhere)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for name, step in loops.items():
        sync(torch, device)
        with torch_profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            sync(torch, device)
        print(f"\n{name}: the top operators over {steps} steps")
        print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60))


if __name__ == "__main__":
    main()
