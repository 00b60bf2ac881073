"""bench/opcount.py: ATen ops dispatched per step, kernels apart from views, host syncs."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import opcount  # noqa: E402


def test_counts_each_step_ops_kernels_and_host_syncs() -> None:
    import torch

    a, b = torch.ones(4, 4), torch.ones(4, 4)
    counter = opcount.OpCounter()
    for _ in range(2):
        with counter:
            c = (a @ b).view(16)  # a kernel, then a view
            c.add_(1)
            float(c.sum())  # sum is a kernel, float() a host sync
    s = counter.summary()
    assert counter.steps == 2
    assert s["kernels"] == 3  # mm, add_, sum
    assert s["syncs"] == 1
    assert s["ops"] == 5  # + view, + _local_scalar_dense
    assert dict(s["top"]) == {"aten.mm": 1, "aten.add_": 1, "aten.sum": 1}
    with counter:  # outside its steps nothing is counted
        pass
    a @ b
    assert counter.summary()["ops"] == 10 / 3


@pytest.mark.parametrize(("counts", "steps", "kernels", "syncs"), [
    (Counter({"aten.mm": 4, "aten.view": 4}), 2, 2, 0),
    (Counter({"aten._local_scalar_dense": 3, "aten.add": 3}), 3, 1, 1),
    (Counter(), 1, 0, 0),
])
def test_summarize_per_step(counts: Counter[str], steps: int, kernels: float, syncs: float) -> None:
    s = opcount.summarize(counts, steps)
    assert (s["kernels"], s["syncs"]) == (kernels, syncs)


def test_summarize_needs_a_step() -> None:
    with pytest.raises(ValueError, match="steps must be >= 1"):
        opcount.summarize(Counter({"aten.mm": 1}), 0)
