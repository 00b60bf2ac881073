"""bench/bench_trainjob.py's table: ratios taken within each round, printed with their spread."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

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
