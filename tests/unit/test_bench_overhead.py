"""bench/bench_overhead.py's --variants: what it runs, and the clear error for what it cannot."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_overhead  # noqa: E402


@pytest.mark.parametrize(("variant", "parsed"), [
    ("plain", ("plain", None, False, False)),
    ("loop", ("loop", None, False, False)),  # the spec's own stage
    ("ray", ("ray", None, False, False)),
    ("loop-z0", ("loop", 0, False, False)),
    ("ray-z3", ("ray", 3, False, False)),
    ("loop-z0+reduce", ("loop", 0, True, False)),  # DeepSpeed's all-reduce kept on one rank
    ("loop-z0+fp32-adapters", ("loop", 0, False, True)),  # DeepSpeed's fp32 mode over a bf16 base
    ("loop+fp32-adapters+reduce", ("loop", None, True, True)),
])
def test_a_variant_names_a_child_and_maybe_a_zero_stage(variant: str, parsed: tuple[str, int | None, bool, bool]) -> None:
    assert bench_overhead.parse_variant(variant) == parsed


@pytest.mark.parametrize("variant", ["torch", "loop-z4", "loop-z", "loop-z0x", "plain-z0", "", "ray-z0+reduce", "loop-z0+sync", "plain+reduce",
                                     "ray+fp32-adapters", "loop+reduce+reduce", "loop-z0+"])
def test_a_variant_it_cannot_run_is_refused_by_name(variant: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{variant!r}: one of plain, loop, ray")):
        bench_overhead.parse_variant(variant)


@pytest.mark.parametrize(("args", "message"), [
    (["--variants", "plain,loop-z9"], "--variants: 'loop-z9': one of plain, loop, ray"),
    (["--variants", "loop,plain"], "--variants: plain first (the ratios are to it)"),
    (["--variants", "plain,ray-z0", "--profile", "5"], "--profile: plain and loop only"),
    (["--variants", "plain,ray", "--count-ops"], "--count-ops: plain and loop only"),
    (["--variants", "plain,loop", "--count-ops", "--steps", "1"], "--count-ops: --steps 2 or more"),
    (["--variants", "plain,loop-z0+fp32-adapters"], "+fp32-adapters needs a bf16 base: --device cuda or --precision bf16"),
])
def test_bad_variants_stop_the_bench_before_it_starts_anything(args: list[str], message: str,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["bench_overhead.py", *args])
    monkeypatch.setattr(bench_overhead, "prepare", lambda *a: pytest.fail("started the bench"))
    with pytest.raises(SystemExit) as exited:
        bench_overhead.main()
    assert exited.value.code == 2 and message in capsys.readouterr().err
