"""Local validation: the same corpus the API server must reject (tests/integration) is
rejected here too, with a file:line message; every example is accepted."""

from __future__ import annotations

from pathlib import Path

import pytest

from anytasktune.validation import validate_file

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests/data/invalid").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "manifests/examples").glob("*.yaml"))


def expectations(path: Path) -> tuple[str, str]:
    lines = path.read_text().splitlines()
    server = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("# expect:"))
    local = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("# expect-local:")), server)
    return server, local


def test_the_corpus_is_large_enough() -> None:
    assert len(INVALID) >= 15


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_resource_is_rejected_locally_with_its_message(path: Path) -> None:
    _, expected = expectations(path)
    problems = validate_file(path)
    assert problems, f"{path.name} was accepted"
    rendered = [str(p) for p in problems]
    assert any(expected in r for r in rendered), rendered
    assert all(r.startswith(f"{path}:") and r.split(":")[1].isdigit() for r in rendered)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_examples_are_valid(path: Path) -> None:
    assert validate_file(path) == []


def test_line_numbers_point_at_the_offending_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "tests/data/invalid/08-lora-rank-override-too-big.yaml").read_text())
    (problem,) = validate_file(bad)
    line = bad.read_text().splitlines()[problem.line - 1]
    assert "r: 512" in line
    assert problem.path == "spec.subtasks[0].lora.r"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spec: [unclosed", "not valid YAML"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "not a TaskFineTune"),
        ("- a\n- b\n", "expected a YAML mapping"),
    ],
)
def test_non_resources_get_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(text)
    assert expected in str(validate_file(f)[0])
