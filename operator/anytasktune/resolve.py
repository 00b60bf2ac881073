"""Resolve one sub-task of a TaskFineTune into its TrainJobSpec (pure), and what every
pass needs of it, memoized by content (`Resolutions`)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from anytasktune.render import compare_secret
from anytasktune.spec import OVERRIDABLE_MODELS, Subtask, TaskFineTune, TaskFineTuneSpec
from anytasktune.validation import describe
from anytasktune_contract.trainspec import (
    FUSED_KERNELS_NEED_GPUS,
    BaseModelRef,
    DatasetRef,
    Scaling,
    SecretKeyRef,
    StorageTarget,
    TrainJobSpec,
)

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


@dataclass(frozen=True)
class Resolved:
    """What every pass needs of one resolved sub-task. The TrainJobSpec itself (~10 kB
    as Python objects) is built again only to launch or to take in a run's record."""

    spec_id: str = ""
    output_prefix: str = ""
    spec_prefix: str = ""  # where the trainjob records what it did for this spec
    compare_secret: SecretKeyRef | None = None
    error: str = ""  # why it cannot be resolved (a ResolveError's message); the rest is then empty


def resolve_pool(name: str, namespace: str, spec: TaskFineTuneSpec) -> dict[str, Resolved]:
    """Sub-task name -> what a pass needs of it."""
    out: dict[str, Resolved] = {}
    for subtask in spec.subtasks:
        try:
            train = resolve_subtask(name, namespace, spec, subtask)
        except ResolveError as err:
            out[subtask.name] = Resolved(error=str(err))
            continue
        out[subtask.name] = Resolved(train.spec_id(), train.outputPrefix, train.spec_prefix(), compare_secret(train))
    return out


@dataclass(frozen=True)
class ResolvedPool:
    """A TaskFineTune's spec, validated, and what every pass needs of each sub-task."""

    spec: TaskFineTuneSpec | None  # None: the spec is invalid
    invalid: str = ""  # why (`validation.describe` of the ValidationError)
    subtasks: Mapping[str, Resolved] = field(default_factory=dict)  # by sub-task name


def resolve_tft(name: str, namespace: str, raw_spec: Mapping[str, Any]) -> ResolvedPool:
    """Validate the spec as the API server holds it (with the rules that read the name),
    then resolve each sub-task."""
    try:
        spec = TaskFineTune.model_validate({"metadata": {"name": name}, "spec": raw_spec}).spec
    except ValidationError as err:
        return ResolvedPool(None, describe(err))
    return ResolvedPool(spec, subtasks=resolve_pool(name, namespace, spec))


class Resolutions:
    """`resolve_tft`, memoized by the content it depends on (the name, the namespace and
    the spec as the API server holds it), so it stays a pure function to its callers.
    What it returns is shared between passes: read it, never change it.

    Why: validating a 10-sub-task spec, resolving and hashing its sub-tasks is ~2.2 ms of
    CPU, and at 1,000 pools x 10 the operator made 80,000 passes over specs that had not
    changed (a RayJob's status change is what wakes most passes), on the cores the API
    server needs. An entry is ~20 kB; `size` entries at most, least recently used out first."""

    def __init__(self, size: int = 2048) -> None:
        self._size = size
        self._entries: OrderedDict[bytes, ResolvedPool] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, name: str, namespace: str, raw_spec: Mapping[str, Any]) -> ResolvedPool:
        text = json.dumps([name, namespace, raw_spec], sort_keys=True, separators=(",", ":"), default=str)
        key = hashlib.sha256(text.encode()).digest()
        with self._lock:
            if (hit := self._entries.get(key)) is not None:
                self._entries.move_to_end(key)
                return hit
        value = resolve_tft(name, namespace, raw_spec)
        with self._lock:
            self._entries[key] = value
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._entries)
