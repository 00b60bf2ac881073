"""Shell scripts under `set -o pipefail` must not end a pipeline early.

`cmd | head -1` (or `| grep -q`, `| grep -m`) closes the pipe after the first match;
`cmd` dies of SIGPIPE on its next write and, under pipefail, the pipeline fails with
141, depending on timing. That made a cold `make test` fail once
(`etcd --version | head -1` in hack/build-controlplane.sh)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EARLY_EXIT = re.compile(r"\|\s*(head\b|grep\s+(-\w*[qm]\w*|--quiet|--max-count))")


def _scripts() -> list[Path]:
    found = [p for p in ROOT.rglob("*.sh") if ".venv" not in p.parts and ".git" not in p.parts]
    found += [p for p in (ROOT / ".ci").iterdir() if p.is_file()]
    return sorted(found)


def _offences(text: str) -> list[str]:
    if "pipefail" not in text:
        return []
    return [line.strip() for line in text.splitlines() if EARLY_EXIT.search(line.split("#", 1)[0])]


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        ('"$bin/etcd" --version | head -1 >&2', True),
        ("ip link show | grep -q anytasktune0", True),
        ("go list -m all | grep -m1 kubernetes", True),
        ("sha256sum | cut -d' ' -f1", False),
        ("# never `| head` under pipefail", False),
    ],
)
def test_detects_early_exit_pipes(line: str, bad: bool) -> None:
    assert bool(_offences("set -o pipefail\n" + line)) is bad


def test_no_script_ends_a_pipe_early_under_pipefail() -> None:
    scripts = _scripts()
    assert any(p.name == "build-controlplane.sh" for p in scripts)
    offences = {str(p.relative_to(ROOT)): o for p in scripts if (o := _offences(p.read_text(errors="replace")))}
    assert offences == {}
