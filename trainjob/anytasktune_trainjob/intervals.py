"""How sure we are: paired bootstrap confidence intervals and the verdict (pure).

Held-out sets are small (16 records in the demo), so a lift of +0.2 may be noise.
Each model's per-record scores are resampled with the *same* record indices
(paired: the lift's interval comes from resampled differences on identical
records, which is much tighter than two independent intervals), `RESAMPLES` times
with a fixed seed, and the 2.5th and 97.5th percentiles make the 95% interval.

The verdict reads the lift's interval, never the point estimate alone:

- "adapter wins": the lower bound is above the threshold;
- "adapter worse": the upper bound is below zero;
- "inconclusive": anything else — the held-out set cannot tell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 2407  # fixed: the same scores always give the same intervals
WINS, INCONCLUSIVE, WORSE = "adapter wins", "inconclusive", "adapter worse"


def _indices(n: int, resamples: int, seed: int) -> Any:
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _percentiles(values: Any, confidence: float) -> list[float]:
    import numpy as np

    tail = (1.0 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return [round(float(lo), 6), round(float(hi), 6)]


def paired_intervals(scores: Mapping[str, Sequence[float]], pairs: Mapping[str, tuple[str, str]], *,
                     resamples: int = RESAMPLES, seed: int = SEED,
                     confidence: float = CONFIDENCE) -> dict[str, list[float]]:
    """{column: [lo, hi]} for the mean of each column of per-record scores, and
    {pair name: [lo, hi]} for the mean difference `first - second` of each pair,
    all from one set of resampled record indices. Columns must have equal lengths;
    with no records there are no intervals."""
    import numpy as np

    lengths = {len(v) for v in scores.values()}
    if len(lengths) > 1:
        raise ValueError(f"per-record scores differ in length: { {k: len(v) for k, v in scores.items()} }")
    n = lengths.pop() if lengths else 0
    if n == 0:
        return {}
    idx = _indices(n, resamples, seed)
    arrays = {k: np.asarray(v, dtype=float) for k, v in scores.items()}
    out = {k: _percentiles(a[idx].mean(axis=1), confidence) for k, a in arrays.items()}
    for name, (first, second) in pairs.items():
        out[name] = _percentiles((arrays[first] - arrays[second])[idx].mean(axis=1), confidence)
    return out


def verdict(lift_interval: Sequence[float] | None, threshold: float) -> str:
    if not lift_interval:
        return INCONCLUSIVE
    lo, hi = lift_interval
    if lo > threshold:
        return WINS
    if hi < 0:
        return WORSE
    return INCONCLUSIVE


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def metric_intervals(per_record: Mapping[str, Mapping[str, Sequence[float]]]) -> dict[str, dict[str, list[float]]]:
    """{metric: {model: [lo, hi], "lift": [lo, hi], ("liftOverGeneral")}} from
    {metric: {"base": [...], "adapter": [...], ("general": [...])}}."""
    out: dict[str, dict[str, list[float]]] = {}
    for metric, columns in per_record.items():
        pairs = {"lift": ("adapter", "base")}
        if "general" in columns:
            pairs["liftOverGeneral"] = ("adapter", "general")
        out[metric] = paired_intervals(columns, pairs)
    return out
