"""Rank 0's summary of an attempt (pure): training facts, evaluation, timings —
the `training`, `evaluation` and `timings` parts of manifest.json."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from anytasktune_contract.trainspec import TrainJobSpec, metrics_for

from .evaluation import examples, merge_scores
from .intervals import CONFIDENCE, RESAMPLES, SEED, metric_intervals, verdict
from .metrics import lift
from .training import TrainOutcome, TrainState
from .zero import StepPlan

LOSS_HISTORY = 200
ANSWERS_KEPT = 256  # held-out answers kept in the manifest, for audits and re-scoring


@dataclass
class Clock:
    """Named instants of a worker's life, from its start."""

    marks: dict[str, float] = field(default_factory=lambda: {"start": time.time()})

    def mark(self, name: str) -> None:
        self.marks[name] = time.time()

    def between(self, first: str, last: str) -> float:
        return self.marks[last] - self.marks[first]


@dataclass(frozen=True)
class RunFacts:
    """What the attempt ran with (kept when the engine is freed before evaluation)."""

    plan: StepPlan
    ds_config: dict[str, Any]
    trainable: int
    total_params: int
    precision: str
    world: int


def step_time_stats(seconds: list[float]) -> dict[str, float | int] | None:
    """The attempt's step times: the first (warm-up: allocations, lazy inits) apart, and
    the steady state after it as median and 10th/90th percentiles."""
    if not seconds:
        return None
    steady = sorted(seconds[1:]) or list(seconds)

    def pct(q: float) -> float:
        return steady[min(len(steady) - 1, int(q * len(steady)))]

    return {"first": seconds[0], "median": statistics.median(steady), "p10": pct(0.1), "p90": pct(0.9),
            "steadySteps": len(seconds) - 1}


def training_summary(spec: TrainJobSpec, facts: RunFacts, state: TrainState, outcome: TrainOutcome) -> dict[str, Any]:
    t, plan = spec.training, facts.plan
    steps_run = plan.total_steps - state.start_step
    final_loss = (outcome.last_loss if not math.isnan(outcome.last_loss)
                  else (state.history[-1]["loss"] if state.history else None))
    return {
        "startStep": state.start_step, "resumedFromStep": state.resumed_from,
        "steps": plan.total_steps, "stepsThisAttempt": steps_run,
        "warmupSteps": plan.warmup_steps, "epochs": t.epochs,
        "microBatchSize": t.microBatchSize, "gradientAccumulationSteps": t.gradientAccumulationSteps,
        "worldSize": facts.world, "zeroStage": spec.deepspeed.zeroStage, "precision": facts.precision,
        "finalLoss": final_loss, "tokens": state.tokens, "tokensThisAttempt": outcome.tokens_this_run,
        "tokensPerSecond": (outcome.tokens_this_run / outcome.seconds
                            if outcome.seconds > 0 and outcome.tokens_this_run else None),
        "stepsPerSecond": steps_run / outcome.seconds if outcome.seconds > 0 and steps_run > 0 else None,
        "stepSeconds": step_time_stats(outcome.step_seconds),
        "peakHostMemoryMiB": outcome.peak_host_mib, "peakGpuMemoryMiB": outcome.peak_gpu_mib,
        "trainableParams": facts.trainable, "totalParams": facts.total_params,
        "lossHistory": state.history[-LOSS_HISTORY:], "deepspeedConfig": facts.ds_config,
    }


def judged(spec: TrainJobSpec, evaluation: dict[str, Any]) -> dict[str, Any]:
    """`evaluation` with 95% paired bootstrap intervals of every metric and lift
    (from its per-record scores) and the verdict on the task metric."""
    intervals = metric_intervals(evaluation.get("perRecord", {}))
    metric = evaluation["metrics"][0]
    threshold = spec.evaluation.verdict_threshold()
    lift_interval = intervals.get(metric, {}).get("lift")
    return {
        **evaluation, "intervals": intervals,
        "bootstrap": {"confidence": CONFIDENCE, "resamples": RESAMPLES, "seed": SEED, "paired": True},
        "verdict": verdict(lift_interval, threshold),
        "verdictRule": {"metric": metric, "threshold": threshold,
                        "rule": f"adapter wins when the 95% lower bound of the {metric} lift is above {threshold:g}"},
    }


def evaluation_summary(spec: TrainJobSpec, gathered: list[list[dict[str, Any]]], held: dict[str, Any]) -> dict[str, Any]:
    metric_names = [m.value for m in metrics_for(spec.evaluation, spec.taskType)]
    labels = list(held.get("classLabels") or [])
    results, predictions, records = merge_scores(gathered, held["references"], metric_names, labels)
    return judged(spec, {
        "samples": len(held["references"]), "metrics": metric_names, "base": results["base"],
        "adapter": results["adapter"], "lift": lift(results["base"], results["adapter"]),
        "classLabels": labels, "perRecord": records, "recordKeys": list(held.get("keys") or []),
        "answers": {"reference": held["references"][:ANSWERS_KEPT],
                    **{k: v[:ANSWERS_KEPT] for k, v in predictions.items()}},
        "maxNewTokens": spec.evaluation.maxNewTokens, "examples": examples(held, predictions),
    })


def timings(clock: Clock, outcome: TrainOutcome) -> dict[str, float]:
    return {
        "modelDownloadSeconds": clock.between("start", "loaded"), "setupSeconds": clock.between("loaded", "ready"),
        # setupSeconds in two: the base model loaded with LoRA applied, then DeepSpeed's engine
        "modelLoadSeconds": clock.between("loaded", "model"), "deepspeedInitSeconds": clock.between("model", "ready"),
        "trainSeconds": outcome.seconds, "saveSeconds": clock.between("trained", "saved"),
        "evalSeconds": clock.between("saved", "evaluated"),
    }


def summarise(spec: TrainJobSpec, facts: RunFacts, state: TrainState, outcome: TrainOutcome,
              gathered: list[list[dict[str, Any]]], held: dict[str, Any], clock: Clock) -> dict[str, Any]:
    return {
        "training": training_summary(spec, facts, state, outcome),
        "evaluation": evaluation_summary(spec, gathered, held),
        "timings": timings(clock, outcome),
    }
