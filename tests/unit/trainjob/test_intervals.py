"""Paired bootstrap intervals and the verdict (pure, seeded)."""

from __future__ import annotations

import pytest

from anytasktune_trainjob import intervals as I


def test_intervals_are_seeded_and_contain_the_mean() -> None:
    base, adapter = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    first = I.paired_intervals({"base": base, "adapter": adapter}, {"lift": ("adapter", "base")})
    again = I.paired_intervals({"base": base, "adapter": adapter}, {"lift": ("adapter", "base")})
    assert first == again  # same records, same seed, same numbers
    assert first["base"][0] <= I.mean(base) <= first["base"][1]
    assert first["lift"][0] <= I.mean(adapter) - I.mean(base) <= first["lift"][1]


def test_pairing_makes_a_consistent_lift_certain() -> None:
    """Every record gains exactly 0.1: two independent intervals would overlap, the
    paired lift has no doubt at all."""
    base = [0.1 * (i % 10) for i in range(30)]
    adapter = [b + 0.1 for b in base]
    out = I.paired_intervals({"base": base, "adapter": adapter}, {"lift": ("adapter", "base")})
    assert out["base"][1] > out["adapter"][0]  # the two intervals overlap …
    assert out["lift"] == pytest.approx([0.1, 0.1])  # … the paired difference does not vary


def test_small_sets_are_wide_and_large_sets_narrow() -> None:
    def width(n: int) -> float:
        base = [float(i % 2) for i in range(n)]
        adapter = [float((i + 1) % 3 != 0) for i in range(n)]
        lo, hi = I.paired_intervals({"b": base, "a": adapter}, {"lift": ("a", "b")})["lift"]
        return hi - lo
    assert width(16) > 2 * width(400)


def test_no_records_no_intervals_and_unequal_lengths_refused() -> None:
    assert I.paired_intervals({"base": [], "adapter": []}, {"lift": ("adapter", "base")}) == {}
    with pytest.raises(ValueError):
        I.paired_intervals({"base": [1.0], "adapter": [1.0, 0.0]}, {})


@pytest.mark.parametrize(
    ("interval", "threshold", "outcome"),
    [
        ([0.12, 0.60], 0.0, I.WINS),
        ([0.12, 0.60], 0.05, I.WINS),
        ([0.03, 0.60], 0.05, I.INCONCLUSIVE),  # point lift may be large: the lower bound decides
        ([0.0, 0.4], 0.0, I.INCONCLUSIVE),     # "above", not "at"
        ([-0.2, 0.3], 0.0, I.INCONCLUSIVE),
        ([-0.5, -0.1], 0.0, I.WORSE),
        (None, 0.0, I.INCONCLUSIVE),
    ],
)
def test_verdict_reads_the_interval_not_the_point(interval: list[float] | None, threshold: float, outcome: str) -> None:
    assert I.verdict(interval, threshold) == outcome


def test_metric_intervals_add_the_lift_over_a_general_model_when_there_is_one() -> None:
    out = I.metric_intervals({"accuracy": {"base": [0.0, 1.0], "adapter": [1.0, 1.0], "general": [1.0, 0.0]}})
    assert set(out["accuracy"]) == {"base", "adapter", "general", "lift", "liftOverGeneral"}
