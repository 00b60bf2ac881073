"""The demo model is converted once, even when several processes ask at the same time.

Regression of a shared temporary path: every converter wrote into the same
`<target>.tmp` folder and deleted it first, so a second converter removed the
first one's half-written model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from anytasktune import basemodels


def test_concurrent_preparation_converts_once_into_a_private_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANYTASKTUNE_CACHE", str(tmp_path))
    calls: list[Path] = []

    def slow_convert(out: Path) -> None:
        calls.append(out)
        (out / "config.json").write_text("{}")
        time.sleep(0.3)  # long enough for the other caller to arrive mid-conversion
        (out / "model.safetensors").write_text("weights")

    monkeypatch.setattr(basemodels, "_convert_smollm2", slow_convert)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(basemodels.prepare_smollm2())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    target = basemodels.model_dir(basemodels.SMOLLM2_ID)
    assert results == [target, target]
    assert len(calls) == 1 and calls[0] != target
    assert (target / "model.safetensors").read_text() == "weights" and (target / ".converted").exists()
    assert sorted(p.name for p in target.parent.iterdir() if ".tmp" in p.name) == []
