"""The code stays readable in one sitting: no module over 400 lines and no function
over 60 lines in the three packages (issue 10's bar). Data tables are modules of
their own and count like any other."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contract/anytasktune_contract", "operator/anytasktune", "trainjob/anytasktune_trainjob")
MAX_MODULE, MAX_FUNCTION = 400, 60


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_modules_are_at_most_400_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE}
    assert long == {}


def test_functions_are_at_most_60_lines() -> None:
    long = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = n
    assert long == {}
