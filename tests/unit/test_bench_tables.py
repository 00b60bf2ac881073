"""The benchmarks' tables: ratios taken within each round, printed with the rounds' range."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_plan  # noqa: E402
import bench_trainjob  # noqa: E402


def test_each_round_is_its_own_ratio_and_the_table_shows_median_and_range() -> None:
    # round 2 is twice as slow for both (load): the ratio within it is unchanged
    samples = {
        "plain torch (no DeepSpeed)": [(12.0, 1200.0), (6.0, 600.0), (9.0, 900.0)],
        "DeepSpeed ZeRO-0": [(10.0, 1000.0), (5.0, 500.0), (10.0, 1000.0)],
    }
    rows = bench_trainjob.table(samples, "DeepSpeed ZeRO-0").splitlines()
    assert rows[0] == "| variant | steps/s (median) | tokens/s (median) | vs ZeRO-0, median (range of rounds) |"
    assert rows[2] == "| plain torch (no DeepSpeed) | 9.00 | 900 | 1.20x (0.90-1.20) |"
    assert rows[3] == "| DeepSpeed ZeRO-0 | 10.00 | 1,000 | 1.00x (1.00-1.00) |"


def test_the_plan_table_takes_each_ratio_within_its_round() -> None:
    # seconds per pass, two rounds; round 2 twice as slow for every size (load)
    samples = {(1, False): [0.001, 0.002], (1, True): [0.003, 0.006],
               (8, False): [0.004, 0.010], (8, True): [0.020, 0.040]}
    rows = bench_plan.table(samples).splitlines()
    assert rows[2] == "| 1 | 3 | 1.50 | 1.00x (1.00-1.00) | 1.00x | 4.50 | 3.00x (3.00-3.00) |"
    # vs 1 sub-task: 4x in round 1, 5x in round 2; new / seen: 5x and 4x
    assert rows[3] == "| 8 | 24 | 7.00 | 4.50x (4.00-5.00) | 0.56x | 30.00 | 4.50x (4.00-5.00) |"
