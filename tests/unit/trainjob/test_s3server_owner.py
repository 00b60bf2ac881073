"""The embedded S3 server and the process that started it: `weed` must not outlive a
killed `anytasktune run` (it would hold the folder's leveldb lock, so the rerun that is to
resume from the checkpoints there died: "weed exited early (code 255)"), and a server that
was left behind anyway is taken over by the next one on the same folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from anytasktune.local.staging import LocalError, s3_server
from anytasktune.ports import process_identity
from anytasktune.s3server import EmbeddedS3, FolderInUse

# A child process that starts a server on FOLDER (in the main thread, or in another thread
# that has ended by the time the server is up), prints weed's pid and waits to be killed.
CHILD = """
import sys, threading, time
from pathlib import Path
from anytasktune.s3server import EmbeddedS3
folder, where = Path(sys.argv[1]), sys.argv[2]
servers = []
def start():
    servers.append(EmbeddedS3(folder, secret_key="s" * 32, buckets=["kept-bucket"]).start())
if where == "main":
    start()
else:
    t = threading.Thread(target=start)
    t.start()
    t.join()
print(servers[0]._proc.pid, flush=True)
time.sleep(600)
"""


@contextmanager
def server_child(folder: Path, where: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """(the child, weed's pid); both killed at the end, whatever the test did to them."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), where], stdout=subprocess.PIPE, text=True)
    weed = 0
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip().isdigit(), f"the child did not start its server: {line!r}"
        weed = int(line)
        yield child, weed
    finally:
        child.kill()
        child.wait()
        if weed:
            try:
                os.killpg(weed, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process_identity(pid) is None:  # None for a zombie too
            return True
        time.sleep(0.1)
    return False


def test_weed_stops_when_the_process_that_started_it_is_killed(tmp_path: Path) -> None:
    with server_child(tmp_path / "s3", "main") as (child, weed):
        child.kill()  # SIGKILL: no atexit, no finally
        child.wait()
        assert _gone_within(weed, 15), "weed outlived the process that started it"


def test_a_server_left_behind_is_taken_over_and_its_objects_kept(tmp_path: Path) -> None:
    # Started from a thread that has ended, the server has no parent-death signal (it would
    # stop when that thread ends): killed, the process leaves it running.
    folder = tmp_path / "s3"
    with server_child(folder, "thread") as (child, orphan):
        child.kill()
        child.wait()
        assert not _gone_within(orphan, 1), "the setup needs a weed left running"
        with EmbeddedS3(folder, secret_key="s" * 32) as s3:
            assert _gone_within(orphan, 1), "the orphan still runs beside the new server"
            assert [b["Name"] for b in s3.client().list_buckets()["Buckets"]] == ["kept-bucket"]
            assert json.loads((folder / "weed.owner").read_text())["owner"] == process_identity(os.getpid())
        assert not (folder / "weed.owner").exists()


def test_a_folder_whose_server_still_has_its_owner_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "s3"
    with server_child(folder, "main") as (child, weed):
        with pytest.raises(FolderInUse, match=rf"in use by the S3 server \(weed pid {weed}\) of process {child.pid}"):
            EmbeddedS3(folder, secret_key="s" * 32).start()
        assert process_identity(weed) is not None, "the refusal must leave the running server alone"


def test_local_mode_names_the_run_that_holds_its_folder(tmp_path: Path) -> None:
    """Two `anytasktune run`s on one workdir: the second stops with one line, the first goes on."""
    with server_child(tmp_path / "s3", "main") as (child, weed):  # local mode's server folder: <workdir>/s3
        with pytest.raises(LocalError, match=rf"in use by another run \(process {child.pid}, whose S3 server is weed pid {weed}\)"):
            with s3_server(tmp_path, None):
                pass
        assert process_identity(weed) is not None


def test_datasets_check_names_the_run_that_holds_its_workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from anytasktune.cli import main

    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # never read: the check stops before staging
    (tmp_path / "data.jsonl").write_text('{"input": "a", "output": "b"}\n')
    pool = tmp_path / "pool.yaml"
    pool.write_text(json.dumps({
        "apiVersion": "anytasktune.io/v1alpha1", "kind": "TaskFineTune", "metadata": {"name": "held"},
        "spec": {"domain": "test", "baseModel": {"uri": "model"}, "storage": {"output": "s3://local-e2e/adapters/"},
                 "subtasks": [{"name": "one", "taskType": "generation", "instruction": "Answer.",
                               "dataset": {"uri": "data.jsonl"}}]}}))
    monkeypatch.chdir(tmp_path)  # `datasets check` works in ./out/<name>
    with server_child(tmp_path / "out" / "held" / "s3", "main") as (child, _):
        assert main(["datasets", "check", str(pool)]) == 1
    err = capsys.readouterr().err
    assert f"is in use by another run (process {child.pid}" in err and "Traceback" not in err, err


def test_a_stop_kills_weed_at_once_and_what_it_acknowledged_is_served_after_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """weed's own graceful stop waits 15 s on its filer's internal gRPC streams ("graceful
    stop timed out after 15s, forcing stop" in its log) and writes nothing a kill would lose:
    each acknowledged object is already in the files it appended to. So a stop is a SIGKILL,
    not a SIGINT and a wait that every `anytasktune run` and every test's server paid."""
    import anytasktune.s3server as s3server

    sent: list[int] = []
    real_killpg = os.killpg
    monkeypatch.setattr(s3server.os, "killpg", lambda pid, sig: (sent.append(sig), real_killpg(pid, sig))[1])
    s3 = EmbeddedS3(tmp_path / "s3", secret_key="s" * 32, buckets=["kept-bucket"]).start()
    body = os.urandom(70_000)
    s3.client().put_object(Bucket="kept-bucket", Key="adapter/weights.bin", Body=body)
    s3.stop(keep_data=True)
    assert sent == [signal.SIGKILL]
    with s3.start():
        assert s3.client().get_object(Bucket="kept-bucket", Key="adapter/weights.bin")["Body"].read() == body
