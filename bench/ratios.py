"""A ratio taken within each round, as the benchmarks print it: its median and its range."""

from __future__ import annotations

import statistics


def median_range(ratios: list[float]) -> str:
    """'1.16x (1.08-1.21)': the median over the rounds, then the lowest and highest round."""
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
