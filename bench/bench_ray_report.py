"""Benchmark: what Ray Train's report() costs the training loop, by how often it is called.

Ray Train v2 hands each report to its controller through a queue of one slot that the
controller empties when it polls the workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by
default): a report blocks until the previous one has been collected. A loop that reports
every few fast steps therefore runs at the poll's pace, not its own. The trainjob used to
report metrics every logEverySteps (default 10); it now reports only with its checkpoints.

Each step here is a fixed sleep standing in for an accelerator's step (the CPU stays free,
so the figure is Ray Train's, not this machine's load). Variants run as separate
TorchTrainer.fit() calls on one local Ray instance, in interleaved rounds; the table gives
the steady-state seconds per step measured inside the worker (start-up excluded), median of
the rounds and their spread, and the slowdown against the loop that never reports.

    .venv/bin/python bench/bench_ray_report.py [--steps 40] [--step-ms 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

VARIANTS = {  # name -> report every N steps (0: only the final report)
    "report every step (logEverySteps: 1, before)": 1,
    "report every 10 steps (the default logEverySteps, before)": 10,
    "no report in the loop (now: only with checkpoints)": 0,
}


def loop(config: dict[str, Any]) -> None:
    import ray.train

    every, steps, step_s = config["every"], config["steps"], config["step_s"]
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        time.sleep(step_s)  # the step itself
        if every and step % every == 0:
            ray.train.report({"step": step})
    # Ray Train 2.60 keeps only checkpointed metrics in its Result: the figure goes by file
    Path(config["out"]).write_text(str((time.perf_counter() - t0) / steps))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--step-ms", type=float, default=50.0, help="one step's time (50 ms: a small model on a GPU)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    storage = tempfile.mkdtemp(prefix="anytasktune-bench-")
    samples: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for r in range(args.rounds):
        for name, every in VARIANTS.items():
            out = Path(storage) / f"report-{every}-{r}.txt"
            trainer = TorchTrainer(loop, train_loop_config={"every": every, "steps": args.steps,
                                                            "step_s": args.step_ms / 1000, "out": str(out)},
                                   scaling_config=ScalingConfig(num_workers=1, use_gpu=False),
                                   run_config=RunConfig(name=f"report-{every}-{r}", storage_path=storage))
            trainer.fit()
            samples[name].append(float(out.read_text()))
    ray.shutdown()
    shutil.rmtree(storage, ignore_errors=True)

    floor = statistics.median(samples[list(VARIANTS)[-1]])
    print(f"\n{args.steps} steps of {args.step_ms:.0f} ms, {args.rounds} interleaved rounds, 1 worker, "
          f"Ray Train's poll every 2 s (default)\n")
    print("| variant | s / step (median) | spread (min-max) | vs no report |")
    print("|---|---|---|---|")
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.3f} | {min(values):.3f}-{max(values):.3f} | {med / floor:.1f}x |")


if __name__ == "__main__":
    main()
