"""S3 access for the operator, local mode and the trainjob: boto3 with the standard credential chain, plus the
custom endpoint / region / addressing style from `spec.storage`.

* credentials come from boto3's chain on every request: temporary ones (web
  identity / IRSA, assumed roles, instance and container roles) are refreshed
  by botocore before they expire; nothing copies them as fixed values;
* transient errors are retried twice over: botocore's own retry mode for each
  request, and `_retry` around whole-file operations (a download that breaks
  half way starts again), waiting `Backoff` between attempts, until `attempts`
  are used or `retry_budget_s` has passed since the first failure (a time
  budget: the last attempt comes when it is used up, so an outage shorter than
  it is survived);
* a missing object or AccessDenied raises `InvalidSpecError` naming bucket and
  key (never credentials): retrying cannot help;
* a storage outage that outlives the retries raises `StorageUnavailableError`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from .backoff import Backoff
from .failures import InvalidSpecError, StorageUnavailableError

log = logging.getLogger(__name__)
T = TypeVar("T")

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}  # a conditional write lost
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise InvalidSpecError(f"not an s3:// uri: {uri!r}")
        return cls(parsed.netloc, parsed.path.lstrip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    def join(self, *parts: str) -> S3Uri:
        key = self.key
        for part in parts:
            key = f"{key.rstrip('/')}/{part.lstrip('/')}" if key else part.lstrip("/")
        return S3Uri(self.bucket, key)

    @property
    def prefix(self) -> str:
        """The key as a folder prefix (ending in '/', or '' for the bucket root)."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"


def is_s3_uri(value: str | None) -> bool:
    return bool(value) and str(value).startswith("s3://")


@dataclass(frozen=True)
class StorageSettings:
    endpoint: str | None = None
    region: str = "us-east-1"
    addressing_style: str = "auto"

    @classmethod
    def from_spec(cls, storage: Any) -> StorageSettings:
        return cls(storage.endpoint, storage.region, storage.addressingStyle)


def _error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError, also when wrapped (boto3's managed
    transfers raise S3UploadFailedError from it); '' for errors without a response."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            return code or str(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
        cur = cur.__cause__ or cur.__context__
    return ""


class ObjectStore:
    """Small S3 facade: whole-object operations with retries and error mapping."""

    def __init__(self, settings: StorageSettings, *, attempts: int | None = 5, backoff_s: float = 0.5,
                 botocore_attempts: int = 8, connect_timeout: float = 10, read_timeout: float = 120,
                 retry_budget_s: float | None = None, max_backoff_s: float = 60.0) -> None:
        """Training tolerates a slow store (long timeouts, many retries, a time budget); the
        operator's reconcile pass must not wait on one (it passes small values)."""
        if attempts is None and retry_budget_s is None:
            raise ValueError("ObjectStore needs attempts or retry_budget_s to bound its retries")
        self.settings = settings
        self.attempts = attempts
        self.retry_budget_s = retry_budget_s
        self.backoff = Backoff(backoff_s, max_backoff_s)
        self.botocore_attempts = botocore_attempts
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._client: Any = None
        self._client_lock = threading.Lock()

    # --- clients ------------------------------------------------------------
    @property
    def client(self) -> Any:
        """One boto3 client per store (thread-safe), created on first use."""
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                s3_options: Any = {"addressing_style": self.settings.addressing_style}
                cfg = Config(
                    region_name=self.settings.region,
                    retries={"max_attempts": self.botocore_attempts, "mode": "standard"},
                    s3=s3_options,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                )
                self._client = boto3.session.Session().client("s3", endpoint_url=self.settings.endpoint or None,
                                                              config=cfg)
            return self._client

    # --- retry and error mapping -------------------------------------------------
    def _next_wait(self, attempt: int, elapsed: float) -> float | None:
        """Seconds to wait before the next attempt, or None to give up. Within a time
        budget the last wait is cut short so that the last attempt comes when the budget
        is used up: an outage shorter than the budget is survived."""
        if self.attempts is not None and attempt >= self.attempts:
            return None
        delay = self.backoff.delay(attempt)
        if self.retry_budget_s is None:
            return delay
        remaining = self.retry_budget_s - elapsed
        return min(delay, remaining) if remaining > 0 else None

    def _retry(self, what: str, uri: S3Uri, fn: Callable[[], T]) -> T:
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - mapped below
                code = _error_code(exc)
                if code in _NOT_FOUND:
                    raise InvalidSpecError(
                        f"{what}: object not found: bucket={uri.bucket!r} key={uri.key!r} ({code})"
                    ) from None
                if code in _DENIED:
                    raise InvalidSpecError(
                        f"{what}: access denied: bucket={uri.bucket!r} key={uri.key!r} ({code}); "
                        "check the storage credentials and bucket policy"
                    ) from None
                if type(exc).__name__ == "NoCredentialsError":  # no provider in the chain found any: permanent
                    raise InvalidSpecError(
                        f"{what}: no S3 credentials found for bucket={uri.bucket!r}: give the sub-task a "
                        "credentialsSecret or a pod identity (IRSA / web identity)"
                    ) from None
                if isinstance(exc, (InvalidSpecError, StorageUnavailableError)):
                    raise
                delay = self._next_wait(attempt, time.monotonic() - started)
                if delay is None:
                    raise StorageUnavailableError(
                        f"{what}: storage unavailable after {attempt} attempts: bucket={uri.bucket!r} "
                        f"key={uri.key!r}: {type(exc).__name__}: {exc} "
                        f"(gave up after {time.monotonic() - started:.1f}s)"
                    ) from None
                log.warning("%s %s failed (%s: %s), retry %d in %.1fs", what, uri, type(exc).__name__,
                            code or exc, attempt, delay)
                time.sleep(delay)

    # --- objects ----------------------------------------------------------------
    def head(self, uri: str | S3Uri) -> dict[str, Any]:
        u = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
        resp = self._retry("head", u, lambda: self.client.head_object(Bucket=u.bucket, Key=u.key))
        return {"etag": str(resp.get("ETag", "")).strip('"'), "size": int(resp.get("ContentLength", 0))}

    def stat(self, uri: str | S3Uri) -> dict[str, Any] | None:
        """{etag, size} of an object, or None when there is none."""
        try:
            return self.head(uri)
        except InvalidSpecError as exc:
            if "not found" in exc.message:
                return None
            raise

    def exists(self, uri: str | S3Uri) -> bool:
        return self.stat(uri) is not None

    def read(self, uri: str | S3Uri) -> tuple[bytes, str] | None:
        """(bytes, ETag) of an object, or None when there is none."""
        try:
            return self.get_bytes(uri)
        except InvalidSpecError as exc:
            if "not found" in exc.message:
                return None
            raise

    def put_if(self, uri: str | S3Uri, data: bytes, etag: str | None, content_type: str = "application/json") -> bool:
        """Compare-and-swap: write only if the object is still at `etag` (absent when
        None). False when another writer got there first; outages are retried as usual."""
        u = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
        condition = {"IfMatch": f'"{etag}"'} if etag else {"IfNoneMatch": "*"}

        def put() -> bool:
            try:
                self.client.put_object(Bucket=u.bucket, Key=u.key, Body=data, ContentType=content_type, **condition)
            except Exception as exc:  # noqa: BLE001 - a lost race is an answer, anything else goes to _retry
                if _error_code(exc) in _CONFLICT:
                    return False
                raise
            return True

        return self._retry("conditional upload", u, put)

    def delete(self, uri: str | S3Uri) -> None:
        """Delete one object (no error when it is already gone)."""
        u = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
        self._retry("delete", u, lambda: self.client.delete_object(Bucket=u.bucket, Key=u.key))

    def delete_prefix(self, uri: str | S3Uri) -> int:
        """Delete every object under a prefix; returns how many."""
        u = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
        keys = [o["key"] for o in self.list_objects(u)]
        for i in range(0, len(keys), 1000):
            batch: dict[str, Any] = {"Objects": [{"Key": k} for k in keys[i:i + 1000]], "Quiet": True}

            def delete_batch(batch: dict[str, Any] = batch) -> Any:
                return self.client.delete_objects(Bucket=u.bucket, Delete=batch)

            self._retry("delete", u, delete_batch)
        return len(keys)

    def copy(self, source: str | S3Uri, target: str | S3Uri) -> None:
        src = source if isinstance(source, S3Uri) else S3Uri.parse(source)
        dst = target if isinstance(target, S3Uri) else S3Uri.parse(target)
        self._retry("copy", dst, lambda: self.client.copy_object(
            Bucket=dst.bucket, Key=dst.key, CopySource={"Bucket": src.bucket, "Key": src.key}))

    def get_bytes(self, uri: str | S3Uri) -> tuple[bytes, str]:
        """The object's bytes and its ETag."""
        u = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)

        def fetch() -> tuple[bytes, str]:
            resp = self.client.get_object(Bucket=u.bucket, Key=u.key)
            return resp["Body"].read(), str(resp.get("ETag", "")).strip('"')

        return self._retry("download", u, fetch)

    def put_bytes(self, uri: str | S3Uri, data: bytes, content_type: str = "application/octet-stream") -> None:
        u = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
        self._retry("upload", u, lambda: self.client.put_object(Bucket=u.bucket, Key=u.key, Body=data,
                                                                ContentType=content_type))

    def put_json(self, uri: str | S3Uri, obj: Any) -> None:
        data = json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode()
        self.put_bytes(uri, data, "application/json")

    def download_file(self, uri: str | S3Uri, path: Path) -> None:
        u = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")

        def fetch() -> None:
            self.client.download_file(u.bucket, u.key, str(tmp))

        self._retry("download", u, fetch)
        os.replace(tmp, path)

    def upload_file(self, path: Path, uri: str | S3Uri) -> None:
        u = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
        self._retry("upload", u, lambda: self.client.upload_file(str(path), u.bucket, u.key))

    def list_objects(self, uri: str | S3Uri) -> Iterator[dict[str, Any]]:
        """Objects under a prefix: {key, etag, size}."""
        u = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
        prefix = u.prefix

        def page_all() -> list[dict[str, Any]]:
            out = []
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=u.bucket, Prefix=prefix):
                for obj in page.get("Contents", []) or []:
                    out.append({"key": obj["Key"], "etag": str(obj.get("ETag", "")).strip('"'),
                                "size": int(obj.get("Size", 0))})
            return out

        yield from self._retry("list", u, page_all)

    def upload_dir(self, local_dir: Path, uri: str | S3Uri) -> list[str]:
        base = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
        uploaded = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            target = base.join(rel)
            self.upload_file(path, target)
            uploaded.append(str(target))
        return uploaded

    def download_prefix(self, uri: str | S3Uri, local_dir: Path, *, skip_weights: bool = False) -> dict[str, str]:
        """Mirror a prefix into local_dir (a cache): files already there with the
        same ETag (recorded in a marker) are not fetched again. Returns {relpath: etag}."""
        base = uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)
        objects = [o for o in self.list_objects(base) if not o["key"].endswith("/")]
        if not objects:
            raise InvalidSpecError(f"download: no objects under bucket={base.bucket!r} prefix={base.prefix!r}")
        marker = local_dir / ".anytasktune-etags.json"
        known: dict[str, str] = {}
        if marker.exists():
            try:
                known = json.loads(marker.read_text())
            except ValueError:
                known = {}
        wanted: dict[str, str] = {}
        for obj in objects:
            rel = obj["key"][len(base.prefix):]
            if skip_weights and rel.endswith(WEIGHT_SUFFIXES):
                continue
            wanted[rel] = obj["etag"]
            target = local_dir / rel
            if known.get(rel) == obj["etag"] and target.exists():
                continue
            self.download_file(S3Uri(base.bucket, obj["key"]), target)
            known[rel] = obj["etag"]
            local_dir.mkdir(parents=True, exist_ok=True)
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(known, sort_keys=True))
            os.replace(tmp, marker)
        return wanted
