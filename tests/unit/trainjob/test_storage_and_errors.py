"""S3 uri handling, error mapping (missing object, access denied, outages), failure
classification and the CLI's spec loading and failure line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from anytasktune_contract import failures as X
from anytasktune_contract.failures import FAILURE_MARKER, FailureClass
from anytasktune_contract.storage import ObjectStore, S3Uri, StorageSettings
from anytasktune_trainjob.cache import cache_dir_for


@pytest.mark.parametrize(
    ("uri", "bucket", "key", "prefix"),
    [
        ("s3://bucket/a/b.jsonl", "bucket", "a/b.jsonl", "a/b.jsonl/"),
        ("s3://bucket/models/x/", "bucket", "models/x/", "models/x/"),
        ("s3://bucket", "bucket", "", ""),
    ],
)
def test_s3_uri(uri: str, bucket: str, key: str, prefix: str) -> None:
    u = S3Uri.parse(uri)
    assert (u.bucket, u.key, u.prefix) == (bucket, key, prefix)
    assert str(S3Uri("b", "p/").join("x", "/y.json")) == "s3://b/p/x/y.json"


@pytest.mark.parametrize("bad", ["http://x/y", "bucket/key", "s3:///key"])
def test_s3_uri_rejects(bad: str) -> None:
    with pytest.raises(X.InvalidSpecError):
        S3Uri.parse(bad)


class FakeClient:
    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def get_object(self, **kw: Any) -> dict:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)

        class Body:
            def read(self) -> bytes:
                return b"ok"

        return {"Body": Body(), "ETag": '"abc"'}


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


def _storage(client: FakeClient) -> ObjectStore:
    st = ObjectStore(StorageSettings("http://127.0.0.1:1"), attempts=3, backoff_s=0.0)
    st._client = client
    return st


@pytest.mark.parametrize(
    ("error", "cls", "text"),
    [
        (_client_error("NoSuchKey", 404), X.InvalidSpecError, "object not found: bucket='bkt' key='k/x.jsonl'"),
        (_client_error("AccessDenied", 403), X.InvalidSpecError, "access denied: bucket='bkt' key='k/x.jsonl'"),
        (_client_error("InvalidAccessKeyId", 403), X.InvalidSpecError, "access denied"),
    ],
)
def test_permanent_errors_name_bucket_and_key(error: BaseException, cls: type, text: str) -> None:
    client = FakeClient(error)
    with pytest.raises(cls, match=text) as err:
        _storage(client).get_bytes("s3://bkt/k/x.jsonl")
    assert client.calls == 1  # not retried
    assert err.value.exit_code == 4


def test_transient_errors_are_retried_then_storage_unavailable() -> None:
    client = FakeClient(EndpointConnectionError(endpoint_url="http://x"), _client_error("SlowDown", 503))
    assert _storage(client).get_bytes("s3://bkt/key") == (b"ok", "abc")
    assert client.calls == 3
    client = FakeClient(*[_client_error("InternalError", 500)] * 3)
    with pytest.raises(X.StorageUnavailableError, match="after 3 attempts: bucket='bkt' key='key'") as err:
        _storage(client).get_bytes("s3://bkt/key")
    assert err.value.exit_code == 5


def test_cache_dir_is_stable_and_under_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANYTASKTUNE_CACHE", str(tmp_path))
    a = cache_dir_for("s3://b/models/qwen/")
    assert a == cache_dir_for("s3://b/models/qwen/") and a.parent == tmp_path / "models"
    assert a != cache_dir_for("s3://b/models/qwen2/")


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (X.DataContractError("bad data"), FailureClass.DataContract),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), FailureClass.OutOfMemory),
        (MemoryError(), FailureClass.OutOfMemory),
        (RuntimeError("ActorDiedError: the actor died unexpectedly"), FailureClass.Preempted),
        (RuntimeError("EndpointConnectionError: Could not connect"), FailureClass.StorageUnavailable),
        (ValueError("something else"), FailureClass.Unknown),
        (RuntimeError("WorkerGroupError: [Rank 0] anytasktune_contract.failures.InvalidSpecError: download: object "
                      "not found"), FailureClass.InvalidSpec),
    ],
)
def test_classify(exc: BaseException, cls: FailureClass) -> None:
    assert X.classify(exc)[0] == cls


def test_classify_looks_through_causes() -> None:
    try:
        try:
            raise X.DataContractError("inner")
        except X.DataContractError as inner:
            raise RuntimeError("wrapped") from inner
    except RuntimeError as outer:
        assert X.classify(outer) == (FailureClass.DataContract, "inner")


@pytest.mark.parametrize(("cls", "code"), [(FailureClass.DataContract, 3), (FailureClass.InvalidSpec, 4),
                                           (FailureClass.StorageUnavailable, 5), (FailureClass.OutOfMemory, 6),
                                           (FailureClass.Preempted, 1), (FailureClass.Unknown, 1)])
def test_exit_codes(cls: FailureClass, code: int) -> None:
    assert cls.exit_code == code


def _spec_doc() -> dict[str, Any]:
    return {
        "taskFineTune": "t", "domain": "d", "subtask": "s",
        "baseModel": {"uri": "s3://bucket/models/m/"},
        "dataset": {"uri": "s3://bucket/data/x.jsonl", "format": "alpaca"},
        "lora": {}, "training": {}, "deepspeed": {}, "evaluation": {}, "dataContract": {}, "storage": {},
        "outputPrefix": "s3://bucket/runs/t/s", "scaling": {},
    }


def test_load_spec_from_file_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anytasktune_trainjob.__main__ import load_spec

    path = tmp_path / "spec.json"
    path.write_text(json.dumps(_spec_doc()))
    assert load_spec(str(path)).subtask == "s"
    monkeypatch.setenv("ANYTASKTUNE_SPEC", json.dumps({**_spec_doc(), "subtask": "from-env"}))
    assert load_spec(None).subtask == "from-env"
    with pytest.raises(X.InvalidSpecError, match="spec file not found"):
        load_spec(str(tmp_path / "missing.json"))
    path.write_text(json.dumps({**_spec_doc(), "unknown": 1}))
    with pytest.raises(X.InvalidSpecError, match="invalid spec"):
        load_spec(str(path))


def test_load_spec_from_base64_env_as_a_shared_cluster_rayjob_gives_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import base64

    from anytasktune_trainjob.__main__ import load_spec

    doc = {**_spec_doc(), "subtask": "b64", "instruction": 'Keep "$HOME" and `cmd`: é'}
    monkeypatch.setenv("ANYTASKTUNE_SPEC_B64", base64.b64encode(json.dumps(doc).encode()).decode())
    spec = load_spec(None)
    assert (spec.subtask, spec.instruction) == ("b64", doc["instruction"])
    monkeypatch.setenv("ANYTASKTUNE_SPEC_B64", "not base64!")
    with pytest.raises(X.InvalidSpecError, match="ANYTASKTUNE_SPEC_B64 is not base64"):
        load_spec(None)


def test_a_driver_past_its_deadline_stops_itself_with_the_failure_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    import anytasktune_trainjob.__main__ as cli

    exited = threading.Event()
    codes: list[int] = []
    monkeypatch.setattr(cli.os, "_exit", lambda code: (codes.append(code), exited.set()))
    timer = cli.stop_at_deadline("0.2")
    assert exited.wait(5), "the deadline never fired"
    timer.cancel()
    assert codes == [X.FailureClass.DeadlineExceeded.exit_code]
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"{FAILURE_MARKER} class=DeadlineExceeded: activeDeadlineSeconds (0.2 s) passed"), last
    with pytest.raises(X.InvalidSpecError, match="ANYTASKTUNE_DEADLINE_SECONDS is not a number"):
        cli.stop_at_deadline("two hours")


def test_cli_prints_failure_line_last_and_exits_with_class_code(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import anytasktune_trainjob.__main__ as cli
    import anytasktune_trainjob.runner as runner

    def failing_run(spec: Any, **kw: Any) -> None:
        raise X.DataContractError("data contract violated for s3://bucket/data/x.jsonl: [records] x.jsonl:3: bad")

    exits: list[int] = []
    monkeypatch.setattr(runner, "run", failing_run)
    monkeypatch.setattr(cli.os, "_exit", lambda code: exits.append(code))
    monkeypatch.setattr(cli.signal, "signal", lambda *a: None)
    monkeypatch.setenv("ANYTASKTUNE_SPEC", json.dumps(_spec_doc()))
    cli.main([])
    out = capsys.readouterr().out.strip().splitlines()
    assert exits == [3]
    assert out[-1] == (f"{FAILURE_MARKER} class=DataContract: data contract violated for "
                       "s3://bucket/data/x.jsonl: [records] x.jsonl:3: bad")


class CasClient(FakeClient):
    """put_object with S3's conditional-write answers."""

    def __init__(self, *errors: BaseException) -> None:
        super().__init__(*errors)
        self.puts: list[dict[str, Any]] = []

    def put_object(self, **kw: Any) -> dict:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        self.puts.append(kw)
        return {"ETag": '"new"'}


def test_a_conditional_write_is_retried_through_a_transient_error_and_a_lost_race_is_an_answer() -> None:
    """The adapter registry is updated by compare-and-swap: a 500 from a restarting server
    is retried like any other S3 call; a 412 means another writer won (not an outage)."""
    client = CasClient(_client_error("InternalError", 500))
    assert _storage(client).put_if("s3://bkt/index.json", b"{}", etag="abc") is True
    assert client.puts[0]["IfMatch"] == '"abc"' and client.calls == 2
    lost = CasClient(_client_error("PreconditionFailed", 412))
    assert _storage(lost).put_if("s3://bkt/index.json", b"{}", etag=None) is False and lost.calls == 1
    fresh = CasClient()
    assert _storage(fresh).put_if("s3://bkt/index.json", b"{}", etag=None) and fresh.puts[0]["IfNoneMatch"] == "*"


def test_read_says_none_for_a_missing_object_and_retries_a_transient_error() -> None:
    assert _storage(FakeClient(_client_error("NoSuchKey", 404))).read("s3://bkt/index.json") is None
    flaky = FakeClient(_client_error("InternalError", 500))
    assert _storage(flaky).read("s3://bkt/index.json") == (b"ok", "abc") and flaky.calls == 2
