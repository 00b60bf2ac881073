"""AnyTaskTune trainjob: trains one sub-task's LoRA adapter (Ray Train + DeepSpeed
+ PEFT), evaluates it against the base model and publishes it to S3.

    from anytasktune_trainjob import run
    result = run(spec)            # spec: anytasktune_contract.trainspec.TrainJobSpec

Entry point for the RayJob: `python -m anytasktune_trainjob --spec <path|s3://…>`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["run", "Result"]

if TYPE_CHECKING:
    from .runner import Result, run


def __getattr__(name: str) -> Any:  # lazy: importing the package must not import torch/ray
    if name in ("run", "Result"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
