"""Dependencies point one way: operator -> contract <- trainjob.

The operator never imports the trainjob and the trainjob never imports the operator;
the contract imports neither. Checked on the source (every import statement, lazy
ones included), and at run time: the operator image carries no torch or Ray, so the
operator's import graph must not need them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "anytasktune_contract": ROOT / "contract" / "anytasktune_contract",
    "anytasktune": ROOT / "operator" / "anytasktune",
    "anytasktune_trainjob": ROOT / "trainjob" / "anytasktune_trainjob",
}
ALLOWED = {
    "anytasktune_contract": {"anytasktune_contract"},
    "anytasktune": {"anytasktune", "anytasktune_contract"},
    "anytasktune_trainjob": {"anytasktune_trainjob", "anytasktune_contract"},
}
HEAVY = ("torch", "ray", "deepspeed", "transformers", "peft", "pyarrow")


def imported_packages(source: str) -> set[str]:
    """Top-level names of every absolute import in a module (relative ones stay inside)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def import_graph() -> dict[str, set[str]]:
    ours = set(PACKAGES)
    return {
        f"{pkg}/{path.relative_to(folder)}": imported_packages(path.read_text()) & ours
        for pkg, folder in PACKAGES.items()
        for path in sorted(folder.rglob("*.py"))
    }


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from anytasktune_trainjob.runner import run", {"anytasktune_trainjob"}),
        ("def f():\n    import anytasktune.plan as p", {"anytasktune"}),
        ("from . import data\nfrom .x import y", set()),
    ],
)
def test_imported_packages(source: str, expected: set[str]) -> None:
    assert imported_packages(source) == expected


def test_dependencies_point_one_way() -> None:
    graph = import_graph()
    assert len(graph) > 20
    wrong = {module: sorted(deps - ALLOWED[module.split("/")[0]]) for module, deps in graph.items() if deps - ALLOWED[module.split("/")[0]]}
    assert wrong == {}


def test_operator_and_cli_import_nothing_heavy() -> None:
    code = (
        "import sys, anytasktune.handlers, anytasktune.cli, anytasktune_contract.storage, anytasktune_contract.failures\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"the operator imports {proc.stdout.strip()}"
