"""hack/check-disk.sh: stop before an install that cannot fit, saying what it needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ROOT / "hack" / "check-disk.sh"), *args], capture_output=True, text=True)


def test_room_enough_passes_silently(tmp_path: Path) -> None:
    done = _check("A test", str(tmp_path / "not-yet" / "venv"), "0", str(tmp_path), "0")
    assert (done.returncode, done.stderr) == (0, "")


def test_too_little_room_fails_naming_the_need_and_the_free_space(tmp_path: Path) -> None:
    # two paths on one filesystem add up: 600,000 + 400,000 GiB, more than any disk here
    done = _check("A new virtualenv", str(tmp_path / "venv"), "600000", str(tmp_path), "400000")
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: A new virtualenv needs about 1000000 GiB free for {tmp_path}/venv and {tmp_path};")
    assert "GiB free (df -h " in done.stderr
