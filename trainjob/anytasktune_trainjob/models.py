"""Where the base model comes from: an s3:// prefix (mirrored into the local
cache), a local folder, or a Hugging Face id resolved OFFLINE from cachePath.
Nothing here ever downloads from a hub."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from anytasktune_contract.failures import InvalidSpecError
from anytasktune_contract.storage import ObjectStore, is_s3_uri
from anytasktune_contract.trainspec import BaseModelRef

from .cache import cache_dir_for


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # local folder with config.json (+ weights unless tokenizer_only)
    identity: str  # what the adapter records as its base: the s3 uri, the id or the path
    files: dict[str, str]  # relpath -> ETag for s3 models


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def resolve_base_model(ref: BaseModelRef, storage: ObjectStore, *, tokenizer_only: bool = False) -> ResolvedModel:
    identity = ref.identity()
    if not identity:
        raise InvalidSpecError("baseModel needs a uri (s3://…) or an id")
    if ref.uri and is_s3_uri(ref.uri):
        kind = "tokenizers" if tokenizer_only else "models"
        target = cache_dir_for(ref.uri, kind)
        with _locked(target.with_name(target.name + ".lock")):
            files = storage.download_prefix(ref.uri, target, skip_weights=tokenizer_only)
        if not (target / "config.json").exists() and not tokenizer_only:
            raise InvalidSpecError(f"baseModel.uri {ref.uri} has no config.json: not a Hugging Face model folder")
        return ResolvedModel(str(target), identity, files)
    if ref.uri:
        path = Path(ref.uri.removeprefix("file://")).expanduser()
        if not path.is_dir():
            raise InvalidSpecError(f"baseModel.uri {ref.uri} is neither s3:// nor an existing local folder")
        return ResolvedModel(str(path.resolve()), identity, {})
    assert ref.id is not None
    local = Path(ref.id).expanduser()
    if local.is_dir():
        return ResolvedModel(str(local.resolve()), identity, {})
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    cache = None
    if ref.cachePath:
        os.environ["HF_HOME"] = ref.cachePath
        hub = Path(ref.cachePath) / "hub"
        cache = str(hub if hub.is_dir() else Path(ref.cachePath))
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(ref.id, cache_dir=cache, local_files_only=True)
    except Exception as exc:  # noqa: BLE001
        raise InvalidSpecError(
            f"baseModel.id {ref.id!r} is not in the offline cache {ref.cachePath or '(default HF cache)'}: "
            f"{type(exc).__name__}"
        ) from None
    return ResolvedModel(str(snapshot), identity, {})
