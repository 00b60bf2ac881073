"""How a reconcile pass scales with the pool: plan() for 1..64 sub-tasks, each with a
history of attempts, as ratios against the 1-sub-task pool measured in the same run; and
each pass twice: over a spec seen before (the operator's usual pass: `resolve.Resolutions`
has it) and over a new one (validated, resolved and hashed again).

    python bench/bench_plan.py [--rounds 5]

Pure CPU work (resolve, hash, render, status); the API calls of a pass are not included.
Rounds are interleaved so machine noise hits every size and variant alike; the median is
reported, and each ratio is taken within each round and shown with the rounds' range.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from ratios import median_range

from anytasktune import plan as planner
from anytasktune.attempt import ObservedJob, format_time
from anytasktune.config import OperatorConfig
from anytasktune.plan import plan
from anytasktune.resolve import Resolutions, resolve_subtask
from anytasktune.spec import TaskFineTune

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
SIZES = (1, 8, 32, 64)


def pool(n: int) -> tuple[dict[str, Any], list[ObservedJob]]:
    obj: dict[str, Any] = {
        "metadata": {"name": "bench", "namespace": "ns", "uid": "u", "generation": 1},
        "spec": {
            "domain": "legal",
            "baseModel": {"uri": "s3://models/base/"},
            "storage": {"output": "s3://adapters/"},
            "subtasks": [{"name": f"t{i}", "dataset": {"uri": f"s3://datasets/t{i}.jsonl"}, "instruction": "Do it."} for i in range(n)],
            "maxParallelSubtasks": 8,
        },
    }
    model = TaskFineTune.model_validate(obj)
    jobs = []
    for sub in model.spec.subtasks:  # two failed attempts and a running third one each
        run_id = resolve_subtask("bench", "ns", model.spec, sub).spec_id()
        for attempt, status in ((1, "FAILED"), (2, "FAILED"), (3, "RUNNING")):
            jobs.append(ObservedJob(name=f"bench-{sub.name}-{attempt}", subtask=sub.name, run_id=run_id, attempt=attempt,
                                    deployment_status="Failed" if status == "FAILED" else "Running", job_status=status,
                                    end_time=format_time(NOW - timedelta(minutes=5)) if status == "FAILED" else None))
    return obj, jobs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    config = OperatorConfig()
    inputs = {n: pool(n) for n in SIZES}
    samples: dict[tuple[int, bool], list[float]] = {(n, new): [] for n in SIZES for new in (False, True)}
    for _ in range(args.rounds):
        for n in SIZES:
            obj, jobs = inputs[n]
            reps = max(5, 1600 // n)  # a sample of ~0.1-0.5 s: shorter ones spread the rounds wide
            for new_spec in (False, True):
                plan(obj, jobs, {}, NOW, config)  # the memo has it
                t0 = time.perf_counter()
                for _ in range(reps):
                    if new_spec:
                        planner.RESOLUTIONS = Resolutions()
                    plan(obj, jobs, {}, NOW, config)
                samples[(n, new_spec)].append((time.perf_counter() - t0) / reps)
    print(table(samples))


def table(samples: dict[tuple[int, bool], list[float]]) -> str:
    """Markdown rows per pool size: ms per pass over a spec seen before and over a new one, and
    the ratios (against the 1-sub-task pool, and new over seen) taken within each round."""
    one = samples[(1, False)]
    rows = ["| sub-tasks | observed RayJobs | ms / pass (spec seen) | vs 1 sub-task | per sub-task "
            "| ms / pass (new spec) | new / seen |", "|---|---|---|---|---|---|---|"]
    for n in sorted({n for n, _ in samples}):
        seen, new = samples[(n, False)], samples[(n, True)]
        vs_one = [s / o for s, o in zip(seen, one, strict=True)]
        rows.append(f"| {n} | {3 * n} | {statistics.median(seen) * 1e3:.2f} | {median_range(vs_one)} "
                    f"| {statistics.median(vs_one) / n:.2f}x | {statistics.median(new) * 1e3:.2f} "
                    f"| {median_range([b / a for a, b in zip(seen, new, strict=True)])} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
