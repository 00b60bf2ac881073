"""The pyarrow filesystem Ray Train checkpoints through (over the ObjectStore), the
trainjob's retry budget, and ObjectStore's time-bounded retries — without a server
(the real S3 server and expiring credentials: tests/e2e/test_trainjob_credentials.py)."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
from botocore.exceptions import EndpointConnectionError

from anytasktune_contract.failures import InvalidSpecError, StorageUnavailableError
from anytasktune_contract.storage import ObjectStore, S3Uri, StorageSettings
from anytasktune_trainjob.checkpointfs import TYPE_NAME, ObjectStoreHandler, pyarrow_filesystem
from anytasktune_trainjob.store import DEFAULT_RETRY_BUDGET_S, RETRY_BUDGET_ENV, open_store, retry_budget_from_env

SETTINGS = StorageSettings("http://127.0.0.1:1", "us-east-1", "path")


class FakeStore:
    """The ObjectStore calls the handler makes, on a dict of keys."""

    def __init__(self, keys: dict[str, int]) -> None:
        self.objects = {S3Uri.parse(f"s3://bkt/{k}"): n for k, n in keys.items()}

    def stat(self, uri: S3Uri) -> dict[str, Any] | None:
        return {"size": self.objects[uri], "etag": "e"} if uri in self.objects else None

    def list_objects(self, uri: S3Uri) -> list[dict[str, Any]]:
        return [{"key": u.key, "size": n, "etag": "e"} for u, n in sorted(self.objects.items(), key=lambda x: x[0].key)
                if u.bucket == uri.bucket and u.key.startswith(uri.prefix)]


def _fs(keys: dict[str, int]) -> Any:
    handler = ObjectStoreHandler(SETTINGS, 5.0)
    handler._store = FakeStore(keys)  # type: ignore[assignment]
    return pafs.PyFileSystem(handler)


KEYS = {"exp/ckpt_1/trainer_state.json": 10, "exp/ckpt_1/ds/mp_rank_00.pt": 100,
        "exp/ckpt_1/ds/zero/optim.pt": 7, "exp/.validate_storage_marker": 0, "exp2/x": 1}


def test_file_info_of_files_folders_and_nothing() -> None:
    fs = _fs(KEYS)
    infos = fs.get_file_info(["bkt/exp/ckpt_1/trainer_state.json", "bkt/exp/ckpt_1", "bkt/exp/ckpt_1/",
                              "bkt/exp/missing", "bkt/ex", "bkt"])
    assert [i.type for i in infos] == [pafs.FileType.File, pafs.FileType.Directory, pafs.FileType.Directory,
                                       pafs.FileType.NotFound, pafs.FileType.NotFound, pafs.FileType.Directory]
    assert infos[0].size == 10


def test_selector_lists_one_level_or_the_whole_tree() -> None:
    fs = _fs(KEYS)
    flat = fs.get_file_info(pafs.FileSelector("bkt/exp"))
    assert [(i.path, i.type) for i in flat] == [("bkt/exp/ckpt_1", pafs.FileType.Directory),
                                                ("bkt/exp/.validate_storage_marker", pafs.FileType.File)]
    deep = fs.get_file_info(pafs.FileSelector("bkt/exp/ckpt_1", recursive=True))
    assert sorted((i.path, i.type == pafs.FileType.File) for i in deep) == [
        ("bkt/exp/ckpt_1/ds", False), ("bkt/exp/ckpt_1/ds/mp_rank_00.pt", True), ("bkt/exp/ckpt_1/ds/zero", False),
        ("bkt/exp/ckpt_1/ds/zero/optim.pt", True), ("bkt/exp/ckpt_1/trainer_state.json", True)]
    assert fs.get_file_info(pafs.FileSelector("bkt/nothing", allow_not_found=True)) == []
    with pytest.raises(FileNotFoundError):
        fs.get_file_info(pafs.FileSelector("bkt/nothing"))


def test_filesystem_pickles_as_settings_and_builds_its_own_client() -> None:
    fs = pyarrow_filesystem(SETTINGS, 12.0)
    fs.handler.store.client  # noqa: B018 - a live boto3 client must not travel
    copy = pickle.loads(pickle.dumps(fs))
    assert copy == fs and fs.type_name == f"py::{TYPE_NAME}"
    assert copy.handler._store is None and copy.handler.retry_budget_s == 12.0
    assert copy.handler.store.retry_budget_s == 12.0 and copy.handler.store.attempts is None
    assert pyarrow_filesystem(StorageSettings("http://other:1"), 12.0) != fs


def test_retry_budget_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RETRY_BUDGET_ENV, raising=False)
    assert retry_budget_from_env() == DEFAULT_RETRY_BUDGET_S
    monkeypatch.setenv(RETRY_BUDGET_ENV, "42.5")
    assert retry_budget_from_env() == 42.5
    for bad in ("soon", "-1"):
        monkeypatch.setenv(RETRY_BUDGET_ENV, bad)
        with pytest.raises(InvalidSpecError, match=RETRY_BUDGET_ENV):
            retry_budget_from_env()


class DownClient:
    def __init__(self, up_after: int | None = None) -> None:
        self.calls: list[float] = []
        self.up_after = up_after

    def get_object(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(time.monotonic())
        if self.up_after is None or len(self.calls) <= self.up_after:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

        class Body:
            def read(self) -> bytes:
                return b"ok"

        return {"Body": Body(), "ETag": '"e"'}


def test_retries_with_growing_waits_until_the_budget_is_used_up() -> None:
    store = ObjectStore(SETTINGS, attempts=None, retry_budget_s=1.0, backoff_s=0.02, max_backoff_s=10)
    store._client = client = DownClient()
    t0 = time.monotonic()
    with pytest.raises(StorageUnavailableError, match=r"after 7 attempts: bucket='bkt' key='k'.*gave up after 1\.\d"):
        store.get_bytes("s3://bkt/k")
    # Backoff: 0.02, 0.04, ... 0.32 (0.62 s in all); the next, 0.64 s, is cut to what is
    # left of the 1 s budget, so the last attempt comes when the budget is used up
    waits = [b - a for a, b in zip(client.calls, client.calls[1:], strict=False)]
    assert len(waits) == 6 and all(w >= 0.02 * 2**i - 0.001 for i, w in enumerate(waits[:5]))
    assert client.calls[-1] - t0 >= 1.0 > client.calls[-2] - t0


def test_an_outage_shorter_than_the_budget_is_survived() -> None:
    store = open_store(SETTINGS, 30)
    store.backoff = type(store.backoff)(0.01, 0.05)
    store._client = client = DownClient(up_after=6)
    assert store.get_bytes("s3://bkt/k") == (b"ok", "e")
    assert len(client.calls) == 7


def test_a_store_needs_a_bound() -> None:
    with pytest.raises(ValueError, match="attempts or retry_budget_s"):
        ObjectStore(SETTINGS, attempts=None)


def test_a_refused_upload_is_not_retried_even_when_boto3_wraps_it() -> None:
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    class UploadClient:
        calls = 0

        def upload_file(self, *a: Any) -> None:
            UploadClient.calls += 1
            try:
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "m"}}, "PutObject")
            except ClientError as exc:
                raise S3UploadFailedError(f"Failed to upload: {exc}") from None  # boto3 drops the cause

    store = open_store(SETTINGS, 30)
    store._client = UploadClient()
    with pytest.raises(InvalidSpecError, match="access denied: bucket='bkt' key='k'"):
        store.upload_file(Path("/dev/null"), "s3://bkt/k")
    assert UploadClient.calls == 1


def test_no_credentials_at_all_is_a_spec_error_not_an_outage() -> None:
    from botocore.exceptions import NoCredentialsError

    class NoCredentials:
        calls = 0

        def get_object(self, **kw: Any) -> None:
            NoCredentials.calls += 1
            raise NoCredentialsError()

    store = open_store(SETTINGS, 30)
    store._client = NoCredentials()
    with pytest.raises(InvalidSpecError, match="no S3 credentials found for bucket='bkt'"):
        store.get_bytes("s3://bkt/k")
    assert NoCredentials.calls == 1


# --- checkpoints Ray Train has not registered yet -----------------------------------------
class MarkerStore(FakeStore):
    def put_json(self, uri: Any, obj: Any) -> None:
        self.objects[uri if isinstance(uri, S3Uri) else S3Uri.parse(uri)] = len(str(obj))


class Registered:
    def __init__(self, path: str) -> None:
        self.path = path


def test_the_newest_complete_checkpoint_wins_over_an_older_registered_one() -> None:
    from anytasktune_trainjob.checkpoints import COMPLETE, CheckpointFolder, dir_name, step_of

    store = MarkerStore({"exp/checkpoint_step_0000012/ds/x.pt": 5, "exp/checkpoint_step_0000024/ds/x.pt": 5})
    folder = CheckpointFolder("s3://bkt/exp/", store)  # type: ignore[arg-type]
    fs = pyarrow_filesystem(SETTINGS, 5.0)
    assert folder.complete_steps() == [] and folder.newest(None, fs) == (None, False)
    folder.mark_complete(12)
    assert S3Uri.parse(f"s3://bkt/exp/{dir_name(12)}/{COMPLETE}") in store.objects
    registered = Registered(f"bkt/exp/{dir_name(12)}")
    assert folder.newest(registered, fs) == (registered, False)  # Ray Train knows it: Ray's
    checkpoint, ours = folder.newest(None, fs)  # the report died with its worker: ours
    assert ours and checkpoint.path == f"bkt/exp/{dir_name(12)}" and checkpoint.filesystem == fs
    folder.mark_complete(24)  # step 24 uploaded by every rank, Ray Train still at 12
    assert folder.complete_steps() == [12, 24]
    checkpoint, ours = folder.newest(registered, fs)
    assert ours and step_of(checkpoint.path) == 24
    # a checkpoint without our naming (an older run): Ray Train's, as before
    assert folder.newest(Registered("bkt/exp/checkpoint_2026-11-25_10-00-00.000000"), fs)[1] is False
