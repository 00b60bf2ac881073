"""The filesystem Ray Train checkpoints through: a pyarrow `PyFileSystem` whose
every operation goes through the `ObjectStore` (boto3).

So checkpoints use the same S3 client as everything else in the trainjob: boto3's
credential chain, refreshed before temporary credentials (IRSA / web identity,
assumed roles) expire — pyarrow's own S3FileSystem takes fixed keys or a chain
that cannot reach a non-AWS STS — and the same retries with `Backoff` within the
run's retry budget, the same error classes (`StorageUnavailableError` after an
outage that outlived the budget). Paths are `bucket/key`, as with pyarrow's S3.

Writes go to a local temporary file and are uploaded when the stream closes (S3
objects appear whole or not at all); reads download the object first.
"""

from __future__ import annotations

import io
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from anytasktune_contract.storage import ObjectStore, S3Uri, StorageSettings

from .store import open_store

TYPE_NAME = "anytasktune-s3"


def _uri(path: str) -> S3Uri:
    bucket, _, key = path.strip("/").partition("/")
    return S3Uri(bucket, key)


class _UploadOnClose(io.RawIOBase):
    """A write-only stream buffered in a temporary file, uploaded on close."""

    def __init__(self, store: ObjectStore, uri: S3Uri) -> None:
        super().__init__()
        self._store, self._uri = store, uri
        self._tmp = tempfile.NamedTemporaryFile(prefix="anytasktune-upload-", delete=False)  # noqa: SIM115

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self._tmp.write(data)

    def tell(self) -> int:
        return self._tmp.tell()

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._tmp.close()
            self._store.upload_file(Path(self._tmp.name), self._uri)
        finally:
            os.unlink(self._tmp.name)
            super().close()


class ObjectStoreHandler(pafs.FileSystemHandler):
    """pyarrow FileSystemHandler over an ObjectStore. Pickles as its settings: each
    process (driver, Ray Train controller, workers) builds its own boto3 client."""

    def __init__(self, settings: StorageSettings, retry_budget_s: float) -> None:
        self.settings = settings
        self.retry_budget_s = retry_budget_s
        self._store: ObjectStore | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings, "retry_budget_s": self.retry_budget_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"], state["retry_budget_s"])  # type: ignore[misc]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectStoreHandler) and other.settings == self.settings

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self.settings)

    @property
    def store(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                self._store = open_store(self.settings, self.retry_budget_s)
            return self._store

    def get_type_name(self) -> str:
        return TYPE_NAME

    def normalize_path(self, path: str) -> str:
        return path.rstrip("/")

    # --- metadata ---------------------------------------------------------------------
    def _info(self, path: str) -> Any:
        uri = _uri(path)
        if not uri.key:
            return pafs.FileInfo(path, pafs.FileType.Directory)
        found = self.store.stat(uri)
        if found is not None:
            return pafs.FileInfo(path, pafs.FileType.File, size=found["size"])
        if next(iter(self.store.list_objects(uri)), None) is not None:  # something under path/
            return pafs.FileInfo(path, pafs.FileType.Directory)
        return pafs.FileInfo(path, pafs.FileType.NotFound)

    def get_file_info(self, paths: list[str]) -> list[Any]:
        return [self._info(p) for p in paths]

    def get_file_info_selector(self, selector: Any) -> list[Any]:
        base = selector.base_dir.strip("/")
        uri = _uri(base)
        objects = list(self.store.list_objects(uri))
        if not objects:
            if selector.allow_not_found:
                return []
            raise FileNotFoundError(base)
        files: dict[str, int] = {}
        dirs: set[str] = set()
        for obj in objects:
            rel = obj["key"][len(uri.prefix):]
            parts = [p for p in rel.split("/") if p]
            if not parts:
                continue
            depth = len(parts) if selector.recursive else 1
            dirs.update("/".join(parts[:i]) for i in range(1, min(depth + 1, len(parts))))
            if selector.recursive or len(parts) == 1:
                files["/".join(parts)] = obj["size"]
        return ([pafs.FileInfo(f"{base}/{d}", pafs.FileType.Directory) for d in sorted(dirs)]
                + [pafs.FileInfo(f"{base}/{f}", pafs.FileType.File, size=n) for f, n in sorted(files.items())])

    # --- changes ----------------------------------------------------------------------
    def create_dir(self, path: str, recursive: bool) -> None:
        """S3 has no folders: a folder exists while objects exist under it."""

    def delete_dir(self, path: str) -> None:
        self.store.delete_prefix(_uri(path.rstrip("/") + "/"))

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        if not self.store.delete_prefix(_uri(path.rstrip("/") + "/")) and not missing_dir_ok:
            raise FileNotFoundError(path)

    def delete_root_dir_contents(self) -> None:
        raise PermissionError("refusing to delete every bucket's contents")

    def delete_file(self, path: str) -> None:
        self.store.delete(_uri(path))

    def copy_file(self, src: str, dest: str) -> None:
        self.store.copy(_uri(src), _uri(dest))

    def move(self, src: str, dest: str) -> None:
        self.copy_file(src, dest)
        self.delete_file(src)

    # --- streams ----------------------------------------------------------------------
    def open_input_stream(self, path: str) -> Any:
        fd, tmp = tempfile.mkstemp(prefix="anytasktune-download-")
        os.close(fd)
        try:
            if self.store.stat(_uri(path)) is None:
                raise FileNotFoundError(path)
            self.store.download_file(_uri(path), Path(tmp))
            return pa.OSFile(tmp, mode="r")  # stays readable after the unlink below
        finally:
            os.unlink(tmp)

    def open_input_file(self, path: str) -> Any:
        return self.open_input_stream(path)

    def open_output_stream(self, path: str, metadata: Any = None) -> Any:
        return pa.PythonFile(_UploadOnClose(self.store, _uri(path)), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> Any:
        raise NotImplementedError("S3 objects cannot be appended to")


def pyarrow_filesystem(settings: StorageSettings, retry_budget_s: float) -> Any:
    """The `RunConfig(storage_filesystem=...)` of a run."""
    return pafs.PyFileSystem(ObjectStoreHandler(settings, retry_budget_s))
