"""Local mode, staging: the resource as this machine runs it.

Validates the file as the API server would (after mapping local dataset and model
paths to the S3 locations local mode uploads them to), starts the embedded S3 server
(SeaweedFS on loopback) unless an endpoint is given, uploads what the resource names,
and copies published adapters back into a folder the user can open.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anytasktune.validation import Problem, line_of, load_documents, validate_object
from anytasktune_contract.storage import ObjectStore, StorageSettings

LOCAL_BUCKET = "anytasktune-local"


class LocalError(Exception):
    """A problem the user can fix (printed without a traceback)."""

    def __init__(self, message: str, problems: list[Problem] | None = None):
        super().__init__(message)
        self.problems = problems or []


# --- preparing the resource for this machine ---------------------------------


@dataclass
class Prepared:
    obj: dict[str, Any]  # the TaskFineTune, local paths replaced by their S3 locations
    uploads: dict[str, Path] = field(default_factory=dict)  # s3 uri -> local file or folder


def _is_local(uri: str) -> bool:
    return not uri.startswith("s3://")


def prepare(path: Path, base_model: str | None = None, resolve_models: bool = True) -> Prepared:
    """Validate the file as the API server would, after mapping local paths to the
    S3 locations local mode uploads them to. Raises LocalError with file:line problems.
    With resolve_models, a known baseModel.id is prepared in the model cache."""
    try:
        docs = [d for d in load_documents(path) if isinstance(d.obj, dict) and d.obj.get("kind") == "TaskFineTune"]
    except Exception as err:  # noqa: BLE001 - YAML errors become a user message
        raise LocalError(f"{path}: {err}") from err
    if len(docs) != 1:
        raise LocalError(f"{path}: expected exactly one TaskFineTune, found {len(docs)}")
    doc = docs[0]
    obj = copy.deepcopy(doc.obj)
    uploads: dict[str, Path] = {}
    problems: list[Problem] = []
    name = (obj.get("metadata") or {}).get("name", "local")
    for i, sub in enumerate((obj.get("spec") or {}).get("subtasks") or []):
        uri = (sub.get("dataset") or {}).get("uri", "")
        if isinstance(uri, str) and uri and _is_local(uri):
            local = (path.parent / uri.removeprefix("file://")).resolve()
            target = f"s3://{LOCAL_BUCKET}/datasets/{name}/{sub.get('name', i)}/{local.name}"
            sub["dataset"]["uri"] = target  # even when missing: one problem per mistake
            if local.is_file():
                uploads[target] = local
            else:
                line = line_of(doc.node, ("spec", "subtasks", i, "dataset", "uri"))
                problems.append(Problem(str(path), line, f"spec.subtasks[{i}].dataset.uri", f"no such file: {local}"))
    spec = obj.get("spec") or {}
    model = spec.get("baseModel") or {}
    if base_model:
        spec["baseModel"] = model = {"uri": str(Path(base_model).resolve())}
    if isinstance(model.get("uri"), str) and _is_local(model["uri"]):
        folder = Path(model["uri"]).expanduser().resolve()
        if not (folder / "config.json").is_file():
            line = line_of(doc.node, ("spec", "baseModel", "uri"))
            problems.append(Problem(str(path), line, "spec.baseModel.uri", f"not a model folder (no config.json): {folder}"))
        else:
            target = f"s3://{LOCAL_BUCKET}/models/{folder.name}/"
            model["uri"] = target
            uploads[target] = folder
    elif model.get("id") and not model.get("cachePath") and resolve_models:
        from anytasktune.basemodels import hf_home, resolve_local_model

        try:
            if resolve_local_model(model["id"]) is not None:
                model["cachePath"] = str(hf_home())
        except FileNotFoundError as err:  # even a data check needs the tokenizer
            line = line_of(doc.node, ("spec", "baseModel", "id"))
            raise LocalError(str(Problem(str(path), line, "spec.baseModel.id",
                                         f"baseModel.id {model['id']} is not prepared on this machine: {err}"))) from None
    problems += validate_object(obj, str(path), doc.node)
    if problems:
        raise LocalError("\n".join(map(str, problems)), problems)
    return Prepared(obj, uploads)


def point_at(obj: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The resource as local mode runs it: every S3 access goes to `endpoint`."""
    out = copy.deepcopy(obj)
    storage = out["spec"]["storage"]
    storage.update(endpoint=endpoint, addressingStyle="path")
    storage.pop("credentialsSecret", None)  # local credentials come from the environment
    # Every worker gets an equal share of this machine's cores (all of them for one worker).
    cluster = out["spec"].setdefault("cluster", {})
    workers = int(cluster.get("workers", 1))
    cluster["cpusPerWorker"] = str(max((os.cpu_count() or 1) // workers, 1))
    out["metadata"].update(namespace="local", uid="local", generation=1)
    return out


@contextmanager
def s3_server(workdir: Path, endpoint: str | None) -> Iterator[tuple[str, dict[str, str]]]:
    """(endpoint, environment with credentials): the given endpoint, or an embedded SeaweedFS."""
    if endpoint:
        yield endpoint, {}
        return
    from anytasktune.s3server import EmbeddedS3, FolderInUse

    data = workdir / "s3"
    data.mkdir(parents=True, exist_ok=True)
    # A fixed secret per workdir: a rerun reuses the data (and checkpoints) it left.
    secret_file = workdir / ".s3-secret"
    if not secret_file.exists():
        secret_file.write_text(os.urandom(16).hex())
    try:
        server = EmbeddedS3(data, secret_key=secret_file.read_text().strip()).start()
    except FolderInUse as err:
        raise LocalError(f"{workdir} is in use by another run (process {err.owner_pid}, whose S3 server is weed "
                         f"pid {err.weed_pid}): wait for it to end or stop it, then run again") from None
    try:
        yield server.endpoint, server.env()
    finally:
        server.stop()


def _buckets(obj: dict[str, Any], uploads: dict[str, Path]) -> set[str]:
    uris = [obj["spec"]["storage"]["output"], *uploads]
    return {u.removeprefix("s3://").split("/", 1)[0] for u in uris}


def local_storage(endpoint: str) -> ObjectStore:
    """The shared S3 facade (retries, bucket/key in errors), credentials from the environment."""
    return ObjectStore(StorageSettings(endpoint, os.environ.get("AWS_REGION", "us-east-1"), "path"))


def stage(endpoint: str, s3_env: dict[str, str], prepared: Prepared) -> ObjectStore:
    """Credentials into this process's environment (Ray's workers inherit them from here,
    and so does the S3 client), the buckets created, local files uploaded."""
    os.environ.update(s3_env)
    store = local_storage(endpoint)
    for bucket in sorted(_buckets(prepared.obj, prepared.uploads)):
        try:
            store.client.create_bucket(Bucket=bucket)
        except store.client.exceptions.BucketAlreadyOwnedByYou:
            pass
    for uri, local in prepared.uploads.items():
        if local.is_dir():
            store.upload_dir(local, uri)
        else:
            store.upload_file(local, uri)
    return store


def copy_out(store: ObjectStore, status: dict[str, Any], target: Path) -> dict[str, Path]:
    """Copy every published adapter folder to target/<subtask>/ so the user can open it."""
    copies: dict[str, Path] = {}
    for st in status.get("subtasks", []):
        if st.get("phase") == "Succeeded" and st.get("adapter"):
            store.download_prefix(st["adapter"], target / st["name"])
            copies[st["name"]] = target / st["name"]
    return copies


def copy_registry(store: ObjectStore, obj: dict[str, Any], target: Path) -> Path | None:
    """The adapter registry (<output>/<name>/index.json) next to the adapters, for
    `anytasktune serve-config NAME --workdir`; None when no run wrote one."""
    uri = f"{obj['spec']['storage']['output'].rstrip('/')}/{obj['metadata']['name']}/index.json"
    if not store.exists(uri):
        return None
    target.write_bytes(store.get_bytes(uri)[0])
    return target


def trainjob_env(s3_env: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **s3_env, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.setdefault("DS_ACCELERATOR", "cpu")
    cache = Path(env.get("ANYTASKTUNE_CACHE", Path.home() / ".cache" / "anytasktune"))
    env.setdefault("TORCH_EXTENSIONS_DIR", str(cache / "torch_extensions"))
    return env
