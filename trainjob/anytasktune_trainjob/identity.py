"""The run identity, settled where the data is readable: here, with the tenant's own
credentials (the operator never reads datasets).

`settle(spec, storage)` looks up what the result depends on besides the spec — the
dataset's content (its S3 ETag: one HEAD), the base model's identity and version
(its files' ETags, or the offline snapshot's commit), the trainjob's version — and
returns the spec with `inputs` set, so that `spec.run_id()` covers them. It reads no
dataset bytes and loads no model: a run that is already published is found in
seconds (`publish.without_training`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from anytasktune_contract.failures import InvalidSpecError
from anytasktune_contract.storage import ObjectStore, S3Uri, is_s3_uri
from anytasktune_contract.trainspec import BaseModelRef, RunInputs, TrainJobSpec

DISTRIBUTION = "anytasktune-trainjob"


def trainjob_version() -> str:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _digest(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def dataset_content(uri: str, storage: ObjectStore) -> str:
    """The dataset's ETag (S3), or the sha256 of a local file."""
    if is_s3_uri(uri):
        etag = str(storage.head(uri)["etag"])
        return f"etag:{etag}"
    path = Path(uri.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise InvalidSpecError(f"dataset.uri {uri} is neither s3:// nor an existing local file")
    return f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"


def _offline_snapshot(ref: BaseModelRef) -> str:
    """The commit of the offline Hugging Face snapshot of `ref.id` ("" if not cached)."""
    try:
        from huggingface_hub import snapshot_download

        hub = Path(ref.cachePath) / "hub" if ref.cachePath else None
        cache = str(hub if hub is not None and hub.is_dir() else ref.cachePath) if ref.cachePath else None
        return Path(snapshot_download(str(ref.id), cache_dir=cache, local_files_only=True)).name
    except Exception:  # noqa: BLE001 - the id alone then identifies it; resolving fails later, clearly
        return ""


def base_model_fingerprint(ref: BaseModelRef, storage: ObjectStore) -> str:
    """`<identity>@<version>`: the s3 prefix with a digest of its files' ETags, a local
    folder with a digest of its files' names and sizes, or the id with its snapshot commit."""
    identity = ref.identity()
    if ref.uri and is_s3_uri(ref.uri):
        prefix = S3Uri.parse(ref.uri).prefix
        files = sorted(f"{o['key'][len(prefix):]}={o['etag']}" for o in storage.list_objects(ref.uri))
        return f"{identity}@{_digest(files)}"
    local = Path((ref.uri or ref.id or "").removeprefix("file://")).expanduser()
    if local.is_dir():
        files = sorted(f"{p.relative_to(local)}={p.stat().st_size}" for p in local.rglob("*") if p.is_file())
        return f"{identity}@{_digest(files)}"
    snapshot = _offline_snapshot(ref) if ref.id else ""
    return f"{identity}@{snapshot}" if snapshot else identity


def settle(spec: TrainJobSpec, storage: ObjectStore) -> TrainJobSpec:
    """The spec with its run inputs looked up (a pinned spec trains nothing: no lookup)."""
    if spec.pin:
        return spec
    inputs = RunInputs(dataset=dataset_content(spec.dataset.uri, storage),
                       baseModel=base_model_fingerprint(spec.baseModel, storage), trainjob=trainjob_version())
    return spec.model_copy(update={"inputs": inputs})
