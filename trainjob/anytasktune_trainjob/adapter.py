"""Saving and publishing the adapter.

Under ZeRO-3 each rank holds a shard of every parameter, so all ranks gather the
trainable ones, rank 0 writes the PEFT folder, and the files are broadcast so that
every rank evaluates the same adapter. Rank 0 uploads it."""

from __future__ import annotations

import json
import tempfile
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anytasktune_contract.storage import ObjectStore
from anytasktune_contract.trainspec import TrainJobSpec

if TYPE_CHECKING:
    from .worker import WorkerContext

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


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


def publish_adapter(storage: ObjectStore, folder: Path, run_prefix: str) -> dict[str, int]:
    """Upload the adapter folder under the run prefix; {file name: size} of what was
    uploaded (the driver checks these against the store before the manifest)."""
    storage.upload_dir(folder, run_prefix)
    return {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
