"""Local mode end to end through the real CLI: `anytasktune run` with real Ray,
DeepSpeed, PEFT and an embedded SeaweedFS S3 server, on a tiny from-config model.

Two sub-tasks, maxParallelSubtasks 1, one broken dataset: the good sub-task
publishes its adapter, the bad one fails with its data-contract message (file and
line), and the run exits non-zero naming the failed sub-task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

import tinymodel  # noqa: E402
from conftest import PROGRESS_WAIT_S  # noqa: E402

INSTRUCTION = "Classify the sentiment of the review as positive or negative."
TRAINING = {"epochs": 1, "maxSteps": 3, "microBatchSize": 4, "maxSeqLength": 128, "learningRate": 0.005,
            "checkpointEverySteps": 0, "logEverySteps": 1}


def write_pool(tmp: Path) -> Path:
    records = tinymodel.sentiment_records(64, seed=3)
    tinymodel.save_tiny_model(tmp / "tiny-model", tinymodel.training_texts(records, INSTRUCTION))
    (tmp / "data").mkdir()
    (tmp / "data" / "good.jsonl").write_text(tinymodel.to_jsonl(records), encoding="utf-8")
    broken = [dict(r) for r in records]
    broken[6]["output"] = ""  # line 7: an empty answer violates the data contract
    (tmp / "data" / "bad.jsonl").write_text(tinymodel.to_jsonl(broken), encoding="utf-8")
    pool = {
        "apiVersion": "anytasktune.io/v1alpha1",
        "kind": "TaskFineTune",
        "metadata": {"name": "reviews"},
        "spec": {
            "domain": "reviews",
            "baseModel": {"uri": "tiny-model"},  # a local folder: local mode uploads it
            "storage": {"output": "s3://local-e2e/adapters/"},
            "defaults": {
                "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"]},
                "training": TRAINING,
                "deepspeed": {"zeroStage": 2},
                "evaluation": {"holdout": 0.2, "maxNewTokens": 4, "maxSamples": 4, "batchSize": 4},
            },
            "subtasks": [
                {"name": "good", "taskType": "classification", "instruction": INSTRUCTION,
                 "dataset": {"uri": "data/good.jsonl"}},
                {"name": "bad", "taskType": "classification", "instruction": INSTRUCTION,
                 "dataset": {"uri": "data/bad.jsonl"}},
            ],
            "cluster": {"workers": 1, "gpusPerWorker": 0},
            "maxParallelSubtasks": 1,
            "backoffLimit": 2,
        },
    }
    path = tmp / "pool.yaml"
    path.write_text(yaml.safe_dump(pool, sort_keys=False))
    return path


def cli(*args: str, cwd: Path, timeout: float = PROGRESS_WAIT_S) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "anytasktune" / "torch_extensions"))
    return subprocess.run([sys.executable, "-m", "anytasktune.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pool_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    tmp = tmp_path_factory.mktemp("local")
    pool = write_pool(tmp)
    proc = cli("run", str(pool), "--workdir", str(tmp / "out"), "--no-progress", cwd=tmp)
    return tmp, proc


def test_run_exits_non_zero_and_names_the_failed_subtask(pool_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    _, proc = pool_run
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error: sub-task(s) failed: bad" in proc.stderr
    assert "Traceback" not in proc.stderr.split("error: sub-task(s) failed")[-1]


def test_good_subtask_published_its_adapter(pool_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tmp, proc = pool_run
    status = json.loads((tmp / "out" / "reviews" / "status.json").read_text())
    good = next(s for s in status["subtasks"] if s["name"] == "good")
    assert good["phase"] == "Succeeded" and good["attempts"] == 1
    assert good["adapter"].startswith("s3://local-e2e/adapters/reviews/good/")
    copy = tmp / "out" / "reviews" / "adapters" / "good"
    for name in ("adapter_config.json", "adapter_model.safetensors", "manifest.json"):
        assert (copy / name).is_file(), name
    manifest = json.loads((copy / "manifest.json").read_text())
    assert set(manifest["evaluation"]) >= {"base", "adapter", "lift"}
    assert "accuracy" in manifest["evaluation"]["adapter"]
    assert "good" in proc.stdout and "accuracy" in proc.stdout  # the summary table


def test_adapter_is_in_the_embedded_s3(pool_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """The embedded server's data persists in the workdir: restart it and look."""
    from anytasktune.s3server import EmbeddedS3

    tmp, _ = pool_run
    workdir = tmp / "out" / "reviews"
    status = json.loads((workdir / "status.json").read_text())
    prefix = next(s for s in status["subtasks"] if s["name"] == "good")["adapter"].removeprefix("s3://local-e2e/")
    with EmbeddedS3(workdir / "s3", secret_key=(workdir / ".s3-secret").read_text().strip()) as s3:
        keys = {o["Key"] for o in s3.client().list_objects_v2(Bucket="local-e2e", Prefix=prefix).get("Contents", [])}
    assert {prefix + "adapter_model.safetensors", prefix + "manifest.json"} <= keys


def test_bad_subtask_failed_with_the_data_contract_message(pool_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    tmp, proc = pool_run
    status = json.loads((tmp / "out" / "reviews" / "status.json").read_text())
    bad = next(s for s in status["subtasks"] if s["name"] == "bad")
    assert bad["phase"] == "Failed" and bad["failureClass"] == "DataContract"
    assert bad["attempts"] == 1  # bad data is never retried, whatever backoffLimit says
    assert "bad.jsonl:7" in bad["message"]
    assert "bad.jsonl:7" in proc.stdout + proc.stderr


def test_datasets_check_reports_the_broken_file_without_training(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    proc = cli("datasets", "check", str(pool), cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert "good: ok" in proc.stdout
    assert "bad:" in proc.stderr and "bad.jsonl:7" in proc.stderr


def test_missing_local_dataset_is_a_clear_user_error(tmp_path: Path) -> None:
    pool = write_pool(tmp_path)
    (tmp_path / "data" / "good.jsonl").unlink()
    proc = cli("run", str(pool), "--workdir", str(tmp_path / "out"), cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "spec.subtasks[0].dataset.uri: no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.timeout(2400)  # two runs, each waited on for up to PROGRESS_WAIT_S
def test_ctrl_c_stops_cleanly_and_a_rerun_resumes_from_the_checkpoint(tmp_path: Path) -> None:
    import signal
    import time

    pool = write_pool(tmp_path)
    doc = yaml.safe_load(pool.read_text())
    doc["spec"]["subtasks"] = doc["spec"]["subtasks"][:1]  # the good one
    doc["spec"]["defaults"]["training"].update(maxSteps=60, checkpointEverySteps=5, logEverySteps=5)
    pool.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = tmp_path / "out"
    log = out / "reviews" / "logs" / "reviews-good-1.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # As from a terminal: SIGINT at its default (a background job of a non-interactive
    # shell, such as CI's, inherits SIGINT *ignored*, and Python then never raises KeyboardInterrupt).
    first = subprocess.Popen([sys.executable, "-m", "anytasktune.cli", "run", str(pool), "--workdir", str(out), "--no-progress"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + PROGRESS_WAIT_S
    # Interrupt after the second checkpoint: Ray Train records a checkpoint in its run
    # state just after the worker reports it, so the first one is surely resumable then.
    while not (log.exists() and "checkpoint saved at step 10" in log.read_text(errors="replace")):
        assert first.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, f"no checkpoint within {PROGRESS_WAIT_S} s"
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 130, stderr
    assert "interrupted: stopped every sub-task" in stderr and "Traceback" not in stderr
    spec_file = out / "reviews" / "specs" / "reviews-good-1.json"
    assert subprocess.run(["pgrep", "-f", str(spec_file)], capture_output=True).returncode == 1, "a trainjob survived Ctrl-C"

    second = cli("run", str(pool), "--workdir", str(out), "--no-progress", cwd=tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    manifest = json.loads((out / "reviews" / "adapters" / "good" / "manifest.json").read_text())
    assert manifest["training"]["resumedFromStep"] >= 5  # not step 0
    assert "resumed from checkpoint at step" in log.read_text(errors="replace")


def test_a_suspended_pool_runs_nothing_and_ends(tmp_path: Path) -> None:
    """Local mode honours spec.suspend as the operator does: nothing launches, the run
    ends (it used to wait forever) and says how to resume."""
    pool = write_pool(tmp_path)
    body = yaml.safe_load(pool.read_text())
    body["spec"]["suspend"] = True
    pool.write_text(yaml.safe_dump(body, sort_keys=False))
    proc = cli("run", str(pool), "--workdir", str(tmp_path / "out"), "--no-progress", cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "suspended: spec.suspend is true" in proc.stderr
    status = json.loads((tmp_path / "out" / "reviews" / "status.json").read_text())
    assert status["phase"] == "Suspended"
    assert all(s["attempts"] == 0 for s in status["subtasks"])
    assert not (tmp_path / "out" / "reviews" / "logs").exists()  # no trainjob process ever started
