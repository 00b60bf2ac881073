"""The operator image carries no torch or Ray: the operator's import graph must not need them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "ray", "deepspeed", "transformers", "peft", "pyarrow")


def test_operator_and_cli_import_nothing_heavy() -> None:
    code = (
        "import sys, anytasktune.handlers, anytasktune.cli, anytasktune.trainspec, anytasktune_trainjob.storage\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"the operator imports {proc.stdout.strip()}"
