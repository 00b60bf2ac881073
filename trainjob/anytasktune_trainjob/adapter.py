"""Saving and publishing the adapter.

Under ZeRO-3 each rank holds a shard of every parameter, so all ranks gather the
trainable ones, rank 0 writes the PEFT folder, and the files are broadcast so that
every rank evaluates the same adapter.

Publication is ordered so that a reader never finds a manifest.json whose files are
missing or belong to another upload: rank 0 first retracts a manifest an earlier
publication of the same run left (its files are about to be replaced), then uploads
the files; the driver checks that every file is in the store with its size, and only
then writes the manifest (`publish_manifest`), which lists them with size and sha256.
A publication cut short by an outage leaves no manifest and raises StorageUnavailable."""

from __future__ import annotations

import hashlib
import json
import tempfile
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anytasktune_contract.failures import StorageUnavailableError
from anytasktune_contract.storage import ObjectStore, S3Uri
from anytasktune_contract.trainspec import TrainJobSpec

if TYPE_CHECKING:
    from .worker import WorkerContext

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
MANIFEST_NAME = "manifest.json"


def gathered_trainable(module: Any, zero_stage: int) -> AbstractContextManager[Any]:
    """Inside: the full trainable parameters on every rank (ZeRO-3 partitions them)."""
    if zero_stage != 3:
        return nullcontext()
    import deepspeed

    params = [p for p in module.parameters() if p.requires_grad]
    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def write_adapter(module: Any, folder: Path) -> None:
    """PEFT's adapter files from the trainable parameters (LoRA + modulesToSave)."""
    state_dict = {n: p.detach().cpu().clone() for n, p in module.named_parameters() if p.requires_grad}
    module.save_pretrained(str(folder), state_dict=state_dict, safe_serialization=True)


def rewrite_adapter_config(folder: Path, identity: str) -> None:
    """PEFT records the base model as our local cache path: record its real identity."""
    path = folder / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg["base_model_name_or_path"] = identity
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def broadcast_files(folder: Path, rank: int, world: int) -> None:
    """Rank 0's files of `folder` written into every other rank's `folder`."""
    if world == 1:
        return
    import torch.distributed as dist

    files: list[Any] = [folder_files(folder) if rank == 0 else None]
    dist.broadcast_object_list(files, src=0)
    if rank != 0:
        for name, blob in files[0].items():
            (folder / name).write_bytes(blob)


def save_adapter(module: Any, spec: TrainJobSpec, ctx: WorkerContext, model_dir: str, identity: str) -> Path:
    """All ranks: a local folder with the adapter, its config naming `identity` as the
    base model, and the base model's tokenizer. The caller removes the folder."""
    from transformers import AutoTokenizer

    folder = Path(tempfile.mkdtemp(prefix="anytasktune-adapter-"))
    with gathered_trainable(module, spec.deepspeed.zeroStage):
        if ctx.rank == 0:
            write_adapter(module, folder)
    if ctx.rank == 0:
        rewrite_adapter_config(folder, identity)
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(str(folder))
    broadcast_files(folder, ctx.rank, ctx.world)
    return folder


def file_digests(folder: Path) -> dict[str, dict[str, Any]]:
    """{file name: {bytes, sha256}} of a folder's files."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
            for p in sorted(folder.iterdir()) if p.is_file()}


def publish_adapter(storage: ObjectStore, folder: Path, run_prefix: str) -> dict[str, dict[str, Any]]:
    """Rank 0: retract a manifest left by an earlier publication of this run, then upload
    the adapter folder under the run prefix; returns the files' digests for the manifest."""
    storage.delete(S3Uri.parse(run_prefix).join(MANIFEST_NAME))
    storage.upload_dir(folder, run_prefix)
    return file_digests(folder)


def verify_published(storage: ObjectStore, run_prefix: str, digests: dict[str, dict[str, Any]]) -> None:
    """Every file is in the store under the run prefix, with its size; else StorageUnavailableError."""
    prefix = S3Uri.parse(run_prefix).prefix
    stored = {o["key"][len(prefix):]: o["size"] for o in storage.list_objects(run_prefix)}
    wrong = sorted(name for name, d in digests.items() if stored.get(name) != d["bytes"])
    if wrong:
        raise StorageUnavailableError(
            f"publish: {len(wrong)} of {len(digests)} adapter files are missing or incomplete under {run_prefix} "
            f"({', '.join(wrong)}); the manifest was not written")


def publish_manifest(storage: ObjectStore, run_prefix: str, manifest: dict[str, Any],
                     digests: dict[str, dict[str, Any]]) -> str:
    """The driver, last: check the published files, then write the manifest; its uri."""
    verify_published(storage, run_prefix, digests)
    uri = run_prefix + MANIFEST_NAME
    storage.put_json(uri, manifest)
    return uri
