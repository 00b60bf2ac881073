"""ATen ops dispatched per training step: a count that load on a shared machine cannot move.

A small model's GPU step is bound by the host launching kernels, and its time on these noisy
machines spreads ±25% from round to round; the ops a step dispatches are the same every run and
every machine, and show which part of a loop adds host work (bench/RESULTS.md). Counted with a
TorchDispatchMode, so the steps it watches run slower: no step time is taken while counting."""

from __future__ import annotations

from collections import Counter
from typing import Any

HOST_SYNC = "aten._local_scalar_dense"  # .item(), float(t), bool(t): the host waits for the device
# Ops that only make or reshape a tensor's view or header, and the host sync: no kernel on any device.
NO_KERNEL = frozenset({
    "aten.view", "aten._unsafe_view", "aten.t", "aten.detach", "aten.alias", "aten.slice", "aten.select",
    "aten.expand", "aten.as_strided", "aten.transpose", "aten.reshape", "aten.unsqueeze", "aten.squeeze",
    "aten.permute", "aten.split", "aten.split_with_sizes", "aten.unbind", "aten.is_same_size", "aten.lift_fresh",
    "aten.empty", "aten.empty_like", "aten.empty_strided", "aten.new_empty", "aten.new_empty_strided",
    HOST_SYNC,
})


def summarize(counts: Counter[str], steps: int, top: int = 8) -> dict[str, Any]:
    """Per step: every op dispatched, those that run a kernel, the host's waits on the device,
    and the `top` kernel ops by count."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    kernels = {op: n for op, n in counts.items() if op not in NO_KERNEL}
    return {"ops": sum(counts.values()) / steps, "kernels": sum(kernels.values()) / steps,
            "syncs": counts.get(HOST_SYNC, 0) / steps,
            "top": [(op, n / steps) for op, n in Counter(kernels).most_common(top)]}


class OpCounter:
    """A context manager around each step to count; `summary()` per step counted."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        counts: Counter[str] = Counter()

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
                counts[str(func.overloadpacket)] += 1
                return func(*args, **(kwargs or {}))

        self.counts, self.steps, self._mode = counts, 0, Mode

    def __enter__(self) -> None:
        self._active = self._mode()
        self._active.__enter__()

    def __exit__(self, *exc: object) -> None:
        self._active.__exit__(*exc)
        self.steps += 1

    def summary(self) -> dict[str, Any]:
        return summarize(self.counts, self.steps)
