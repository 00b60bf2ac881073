"""The demo's seeded data generator."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from anytasktune.demo_data import GENERATORS, RISK_FEATURES, clause_record, generate, write_all


def test_same_seed_same_files(tmp_path: Path) -> None:
    a = write_all(tmp_path / "a", count=50)
    b = write_all(tmp_path / "b", count=50)
    for name in GENERATORS:
        assert a[name].read_bytes() == b[name].read_bytes()


@pytest.mark.parametrize("name", list(GENERATORS))
def test_records_are_distinct_bilingual_and_complete(name: str) -> None:
    _, make = GENERATORS[name]
    records = generate(make, 320, seed=1)
    assert len({r["input"] for r in records}) == 320
    assert all(r["input"].strip() and r["output"].strip() for r in records)
    chinese = sum(1 for r in records if any("\u4e00" <= ch <= "\u9fff" for ch in r["input"]))
    assert 0.3 < chinese / len(records) < 0.7


def test_clause_label_is_the_highest_risk_present() -> None:
    rng = random.Random(7)
    labels = {"low": "low", "medium": "medium", "high": "high", "低": "low", "中": "medium", "高": "high"}
    for _ in range(200):
        rec = clause_record(rng)
        present = [risk for risk, en, zh in RISK_FEATURES if en in rec["input"] or zh in rec["input"]]
        expected = max(present, key=["low", "medium", "high"].index)
        assert labels[rec["output"]] == expected


def test_files_are_json_lines_in_utf8(tmp_path: Path) -> None:
    paths = write_all(tmp_path, count=20)
    for path in paths.values():
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 20 and all(set(json.loads(line)) == {"input", "output"} for line in lines)
