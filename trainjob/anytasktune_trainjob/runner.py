"""The driver: read the spec's dataset, enforce the data contract, launch Ray
Train, write the manifest. `run(spec)` is the importable entry point (local mode
uses it); `python -m anytasktune_trainjob` wraps it for the RayJob."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from anytasktune_contract.failures import InvalidSpecError, TrainJobError
from anytasktune_contract.storage import ObjectStore, S3Uri, StorageSettings, is_s3_uri
from anytasktune_contract.trainspec import TrainJobSpec

from . import data as D
from . import encoding
from .adapter import ADAPTER_FILES, publish_manifest
from .checkpointfs import pyarrow_filesystem
from .compare import compared, comparison_inputs
from .encoding import TokenTable
from .evaluation import class_labels
from .identity import settle
from .models import resolve_base_model
from .publish import record_outcome, why_trained, without_training
from .store import open_store, retry_budget_from_env
from .worker import DIVERGED, train_loop_per_worker

MANIFEST_KIND = "TrainJobManifest"
VERSIONED_PACKAGES = ("anytasktune", "torch", "deepspeed", "ray", "peft", "transformers", "accelerate",
                      "safetensors", "tokenizers", "boto3", "pyarrow", "numpy")


@dataclass
class Result:
    run_id: str
    run_prefix: str
    manifest_uri: str
    manifest: dict[str, Any]
    resumed_from_step: int | None = None
    artifacts: list[str] = field(default_factory=list)

    @property
    def evaluation(self) -> dict[str, Any]:
        return dict(self.manifest.get("evaluation", {}))


@dataclass
class PreparedData:
    payload: dict[str, Any]
    dataset: dict[str, Any]
    contract: D.ContractReport
    pad_id: int
    stop_ids: list[int]
    train_records: int


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def read_dataset(spec: TrainJobSpec, storage: ObjectStore) -> tuple[bytes, str, str]:
    """(bytes, etag, source name)."""
    uri = spec.dataset.uri
    if is_s3_uri(uri):
        blob, etag = storage.get_bytes(uri)
        return blob, etag, S3Uri.parse(uri).key.rsplit("/", 1)[-1]
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise InvalidSpecError(f"dataset.uri {uri} is neither s3:// nor an existing local file")
    return path.read_bytes(), "", path.name


def load_tokenizer(spec: TrainJobSpec, storage: ObjectStore) -> tuple[Any, int]:
    """The base model's tokenizer (tokenizer files only) and its padding id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(spec.baseModel, storage, tokenizer_only=True).path)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise InvalidSpecError("the base model's tokenizer has neither a pad nor an eos token")
    return tokenizer, int(pad_id)


Pairs = list[tuple[D.Example, encoding.Encoded]]


def _holdout_payload(spec: TrainJobSpec, tokenizer: Any, held_pairs: Pairs) -> dict[str, Any]:
    max_prompt = max(1, spec.training.maxSeqLength - spec.evaluation.maxNewTokens)
    return {
        "ids": TokenTable([e.input_ids for _, e in held_pairs]),
        "labels": TokenTable([e.labels for _, e in held_pairs]),
        "prompts": [encoding.generation_prompt(tokenizer, ex.messages, max_prompt) for ex, _ in held_pairs],
        "references": [ex.answer for ex, _ in held_pairs],
        "prompt_text": [ex.prompt[-1][1] for ex, _ in held_pairs],
    }


def _evaluated(spec: TrainJobSpec, held: Pairs) -> Pairs:
    """Held-out records evaluated: those with an answer token, in hash order, at most maxSamples."""
    pairs = [(ex, e) for ex, e in sorted(held, key=lambda p: D.holdout_score(p[0])) if e.answer_tokens > 0]
    return pairs[: spec.evaluation.maxSamples] if spec.evaluation.maxSamples else pairs


def prepare_data(spec: TrainJobSpec, storage: ObjectStore, log: Callable[[str], None] = print) -> PreparedData:
    """Parse, split, tokenize and check the data contract; raises DataContractError."""
    blob, etag, source = read_dataset(spec, storage)
    parsed = D.parse_dataset(blob, spec.dataset.format, source=source, instruction=spec.instruction)
    contract = D.ContractReport([D.check_parse(parsed)])
    contract.raise_if_violated(spec.dataset.uri)  # nothing else is meaningful on unparsable records
    tokenizer, pad_id = load_tokenizer(spec, storage)

    examples = parsed.examples
    train, held = D.split_examples(examples, spec.evaluation.holdout)
    max_len = spec.training.maxSeqLength
    enc_train = [encoding.encode(tokenizer, ex.messages, max_len) for ex in train]
    enc_held = [encoding.encode(tokenizer, ex.messages, max_len) for ex in held]
    truncated = [ex for ex, e in zip(train + held, enc_train + enc_held, strict=True) if e.truncated or e.answer_tokens == 0]
    kept = [(ex, e) for ex, e in zip(train, enc_train, strict=True) if e.answer_tokens > 0]
    contract.findings += [
        D.check_duplicates(examples, spec.dataContract),
        D.check_overlap(train, held, spec.dataContract),
        D.check_min_samples([ex for ex, _ in kept], spec.dataContract),
        D.check_truncation(truncated, len(examples), spec.dataContract, max_len),
    ]
    contract.raise_if_violated(spec.dataset.uri)

    held_pairs = _evaluated(spec, list(zip(held, enc_held, strict=True)))
    holdout = _holdout_payload(spec, tokenizer, held_pairs)
    holdout["classLabels"] = class_labels(spec, [ex.answer for ex, _ in kept])  # accuracy reads answers with them
    holdout.update(comparison_inputs([ex for ex, _ in held_pairs]))  # the same prompts for a general model
    payload = {"train_ids": TokenTable([e.input_ids for _, e in kept]),
               "train_labels": TokenTable([e.labels for _, e in kept]), "holdout": holdout}
    dataset = {
        "uri": spec.dataset.uri, "format": spec.dataset.format.value, "etag": etag,
        "sha256": hashlib.sha256(blob).hexdigest(), "sizeBytes": len(blob),
        "records": {
            "total": parsed.total_records, "train": len(kept), "holdout": len(held),
            "evaluated": len(held_pairs), "truncated": len(truncated),
            "droppedNoAnswerTokens": len(train) - len(kept), "duplicates": contract.findings[1].count,
        },
        "tokens": {"train": int(sum(len(e.input_ids) for _, e in kept)),
                   "trainAnswer": int(sum(e.answer_tokens for _, e in kept))},
        "chatTemplate": encoding.has_chat_template(tokenizer),
    }
    log(f"[anytasktune] dataset {spec.dataset.uri}: {parsed.total_records} records, {len(kept)} train, "
        f"{len(held)} held out; data contract passed")
    return PreparedData(payload, dataset, contract, pad_id, encoding.stop_token_ids(tokenizer), len(kept))


def _manifest(spec: TrainJobSpec, prepared: PreparedData, summary: dict[str, Any], checkpoint: dict[str, Any],
              timings: dict[str, float], base_files: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": spec.apiVersion,
        "kind": MANIFEST_KIND,
        "runId": spec.run_id(),
        "specId": spec.spec_id(),
        "runPrefix": spec.run_prefix(),
        "createdAt": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "taskFineTune": spec.taskFineTune,
        "namespace": spec.namespace,
        "domain": spec.domain,
        "subtask": spec.subtask,
        "taskType": spec.taskType.value,
        "spec": spec.model_dump(mode="json"),
        "baseModel": {"identity": spec.baseModel.identity(), "uri": spec.baseModel.uri,
                      "id": spec.baseModel.id, "files": base_files},
        "dataset": prepared.dataset,
        "dataContract": prepared.contract.as_dict(),
        "training": summary["training"],
        "evaluation": summary["evaluation"],
        "artifacts": {"adapter": list(ADAPTER_FILES), "files": summary.get("artifacts", []),
                      "digests": summary.get("artifactDigests", {})},
        "checkpoint": checkpoint,
        "versions": _versions(),
        "timings": {**timings, **summary.get("timings", {})},
    }


def check_spec(spec: TrainJobSpec) -> None:
    if not is_s3_uri(spec.outputPrefix):
        raise InvalidSpecError(f"outputPrefix must be an s3:// uri, got {spec.outputPrefix!r}")
    if spec.baseModel.uri is None and spec.baseModel.id is None:
        raise InvalidSpecError("baseModel needs a uri (s3://…) or an id")


@contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """The running Ray session, else one joined at `address` / $RAY_ADDRESS, else a
    local one; shut down on exit only when started here."""
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=True)
        started = True
    try:
        yield
    finally:
        if started:
            ray.shutdown()


@dataclass(frozen=True)
class CheckpointPlace:
    """Where Ray Train keeps this run's checkpoints: <storage_path>/<name>/checkpoint_*."""

    storage_path: str  # bucket/key, as pyarrow wants it
    name: str

    @classmethod
    def of(cls, spec: TrainJobSpec) -> CheckpointPlace:
        uri = S3Uri.parse(spec.checkpoint_prefix())
        return cls(f"{uri.bucket}/{uri.key.rstrip('/')}", f"{spec.subtask}-{spec.run_id()}")


def build_trainer(spec: TrainJobSpec, prepared: PreparedData, place: CheckpointPlace, *, retry_budget_s: float,
                  max_failures: int, fault_after_step: int | None) -> Any:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    scaling = spec.scaling
    resources = {"CPU": scaling.cpusPerWorker}
    if scaling.useGpu:
        resources["GPU"] = scaling.gpusPerWorker or 1.0
    loop: Any = train_loop_per_worker
    return TorchTrainer(
        loop,
        train_loop_config={
            "spec": spec.to_json(), "data_ref": ray.put(prepared.payload), "pad_id": prepared.pad_id,
            "stop_ids": prepared.stop_ids, "run_prefix": spec.run_prefix(),
            "base_model_identity": spec.baseModel.identity(), "fault_after_step": fault_after_step,
            "retry_budget_s": retry_budget_s, "checkpoints_uri": f"s3://{place.storage_path}/{place.name}/",
        },
        scaling_config=ScalingConfig(num_workers=scaling.numWorkers, use_gpu=scaling.useGpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if scaling.useGpu else "gloo"),
        run_config=RunConfig(
            name=place.name, storage_path=place.storage_path,
            storage_filesystem=pyarrow_filesystem(StorageSettings.from_spec(spec.storage), retry_budget_s),
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )


def own_failure(err: BaseException) -> BaseException:
    """A failed fit's error to raise: a worker's (or the controller's) TrainJobError when
    there is one — its class (StorageUnavailable, InvalidSpec, …) must travel — else Ray's."""
    causes = [*getattr(err, "worker_failures", {}).values(), getattr(err, "controller_failure", None)]
    return next((c for c in causes if isinstance(c, TrainJobError)), err)


def fit(trainer: Any) -> tuple[dict[str, Any], str | None]:
    """Run the trainer: (rank 0's summary, the latest checkpoint's s3 uri)."""
    result = trainer.fit()
    err = getattr(result, "error", None)
    if err is not None:
        own = own_failure(err)
        if own is err:
            raise err
        raise own from err
    summary = getattr(result, "return_value", None)  # Ray Train V2: rank 0's return value
    if not isinstance(summary, dict):
        raise TrainJobError("the rank-0 worker returned no summary")
    if DIVERGED in summary:  # the spec's training cannot work: not retried (InvalidSpec)
        raise InvalidSpecError(summary[DIVERGED])
    latest = getattr(result, "checkpoint", None)
    return summary, (f"s3://{latest.path}" if latest is not None else None)


def base_model_files(spec: TrainJobSpec, storage: ObjectStore) -> dict[str, str]:
    """relpath -> ETag of an s3 base model (empty for a local folder or an id)."""
    if not (spec.baseModel.uri and is_s3_uri(spec.baseModel.uri)):
        return {}
    prefix = S3Uri.parse(spec.baseModel.uri).prefix
    return {o["key"][len(prefix):]: o["etag"] for o in storage.list_objects(spec.baseModel.uri)}


def run(
    spec: TrainJobSpec,
    *,
    ray_address: str | None = None,
    max_failures: int | None = None,
    fault_after_step: int | None = None,
    retry_budget_s: float | None = None,
    log: Callable[[str], None] = print,
) -> Result:
    """Train, evaluate and publish one sub-task's adapter; returns the manifest.

    Uses the running Ray session when there is one, else connects to
    `ray_address` / $RAY_ADDRESS, else starts a local one. S3 transfers retry for
    `retry_budget_s` (default $ANYTASKTUNE_S3_RETRY_SECONDS, else 300 s). Raises
    TrainJobError (with its FailureClass) or the underlying exception."""
    t0 = time.time()
    if retry_budget_s is None:
        retry_budget_s = retry_budget_from_env()
    storage = open_store(StorageSettings.from_spec(spec.storage), retry_budget_s)
    check_spec(spec)
    spec = settle(spec, storage)  # the run identity covers the dataset's content, the base model, the trainjob
    kept = without_training(spec, storage, log)  # pinned, or this identity is already published
    if kept is not None:
        return Result(kept.run_id, kept.run_prefix, kept.run_prefix + "manifest.json", kept.manifest)
    why = why_trained(spec, storage)
    if max_failures is None:
        max_failures = int(os.environ.get("ANYTASKTUNE_MAX_FAILURES", "2"))
    if fault_after_step is None and os.environ.get("ANYTASKTUNE_FAULT_AFTER_STEP"):
        fault_after_step = int(os.environ["ANYTASKTUNE_FAULT_AFTER_STEP"])

    prepared = prepare_data(spec, storage, log)  # before Ray: a bad dataset fails fast
    t_data = time.time()
    place = CheckpointPlace.of(spec)
    with ray_session(ray_address):
        trainer = build_trainer(spec, prepared, place, retry_budget_s=retry_budget_s, max_failures=max_failures,
                                fault_after_step=fault_after_step)
        log(f"[anytasktune] run {spec.run_id()}: checkpoints under s3://{place.storage_path}/{place.name}/")
        summary, latest = fit(trainer)
    summary["evaluation"] = compared(spec, summary["evaluation"], prepared.payload["holdout"], log)  # compareWith
    t_train = time.time()

    checkpoint = {"storagePath": f"s3://{place.storage_path}", "name": place.name, "latest": latest}
    manifest = _manifest(spec, prepared, summary, checkpoint,
                         {"dataSeconds": t_data - t0, "rayTrainSeconds": t_train - t_data},
                         base_model_files(spec, storage))
    manifest["timings"]["totalSeconds"] = time.time() - t0
    # last, after checking every file it lists: its presence means the run is complete
    manifest_uri = publish_manifest(storage, spec.run_prefix(), manifest, summary.get("artifactDigests", {}))
    record_outcome(spec, storage, spec.run_id(), manifest, "Trained", why, log)  # the registry, then the spec's record
    ev = manifest["evaluation"]
    log(f"[anytasktune] done: {manifest_uri}; " + ", ".join(
        f"{k}: base {ev['base'][k]:.4f} -> adapter {ev['adapter'][k]:.4f}" for k in ev["adapter"]))
    return Result(spec.run_id(), spec.run_prefix(), manifest_uri, manifest,
                  summary["training"].get("resumedFromStep"), list(summary.get("artifacts", [])))
