"""Resolve one sub-task of a TaskFineTune into its TrainJobSpec (pure)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from anytasktune.spec import OVERRIDABLE_MODELS, Subtask, TaskFineTuneSpec
from anytasktune.validation import describe
from anytasktune_contract.trainspec import FUSED_KERNELS_NEED_GPUS, BaseModelRef, DatasetRef, Scaling, StorageTarget, TrainJobSpec

_SUFFIX = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def parse_quantity(quantity: str) -> float:
    """A Kubernetes quantity ("8", "500m", "32Gi") as a number (the schema checked its shape)."""
    number = quantity.rstrip("mkMGTPEi")
    return float(number) * _SUFFIX.get(quantity[len(number):], 1.0)


class ResolveError(ValueError):
    """The merged spec is invalid in a way the CRD schema could not see."""


def _merge(section: str, spec: TaskFineTuneSpec, subtask: Subtask) -> Any:
    model = OVERRIDABLE_MODELS[section]
    base = getattr(spec.defaults, section).model_dump()
    override = getattr(subtask, section)
    if override is not None:
        base.update(override.model_dump(exclude_none=True))
    try:
        return model.model_validate(base)
    except ValidationError as err:
        raise ResolveError(f"sub-task {subtask.name}: {describe(err, under=section)}") from err


def resolve_subtask(name: str, namespace: str, spec: TaskFineTuneSpec, subtask: Subtask) -> TrainJobSpec:
    deepspeed = _merge("deepspeed", spec, subtask)
    if deepspeed.offloadOptimizer and deepspeed.zeroStage == 0:
        raise ResolveError(f"sub-task {subtask.name}: deepspeed.offloadOptimizer needs zeroStage >= 1")
    cluster = spec.cluster
    gpus = cluster.gpusPerWorker
    training = _merge("training", spec, subtask)
    if training.fusedKernels and gpus <= 0:
        raise ResolveError(f"sub-task {subtask.name}: {FUSED_KERNELS_NEED_GPUS}")
    return TrainJobSpec(
        taskFineTune=name,
        namespace=namespace,
        domain=spec.domain,
        subtask=subtask.name,
        instruction=subtask.instruction,
        taskType=subtask.taskType,
        baseModel=BaseModelRef.model_validate(spec.baseModel.model_dump()),
        dataset=DatasetRef.model_validate(subtask.dataset.model_dump()),
        lora=_merge("lora", spec, subtask),
        training=training,
        deepspeed=deepspeed,
        evaluation=_merge("evaluation", spec, subtask),
        dataContract=_merge("dataContract", spec, subtask),
        storage=StorageTarget(
            endpoint=spec.storage.endpoint,
            region=spec.storage.region,
            addressingStyle=spec.storage.addressingStyle,
        ),
        outputPrefix=f"{spec.storage.output.rstrip('/')}/{name}/{subtask.name}",
        pin=subtask.pin or "",
        scaling=Scaling(
            numWorkers=cluster.workers,
            useGpu=gpus > 0,
            gpusPerWorker=float(gpus),
            # Ray Train sets the worker's torch threads (OMP_NUM_THREADS) from this, so it
            # must be the pod's CPUs: 1.0 would leave an 8-CPU worker training on one core.
            cpusPerWorker=max(parse_quantity(cluster.cpusPerWorker), 1.0),
        ),
    )
