"""AnyTaskTune trainjob: trains one sub-task's LoRA adapter (Ray Train + DeepSpeed
+ PEFT), evaluates it against the base model and publishes it to S3.

    from anytasktune_trainjob import run
    result = run(spec)            # spec: anytasktune.trainspec.TrainJobSpec

Entry point for the RayJob: `python -m anytasktune_trainjob --spec <path|s3://…>`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["run", "Result", "EmbeddedS3", "main"]

if TYPE_CHECKING:
    from .__main__ import main
    from .runner import Result, run
    from .s3server import EmbeddedS3


def __getattr__(name: str) -> Any:  # lazy: importing the package must not import torch/ray
    if name in ("run", "Result"):
        from . import runner

        return getattr(runner, name)
    if name == "EmbeddedS3":
        from .s3server import EmbeddedS3

        return EmbeddedS3
    if name == "main":
        from .__main__ import main

        return main
    raise AttributeError(name)
