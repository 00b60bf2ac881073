"""Base model resolution: local folders and offline Hugging Face ids (never a download)."""

from __future__ import annotations

from pathlib import Path

import pytest

from anytasktune_contract.failures import InvalidSpecError
from anytasktune_contract.storage import ObjectStore, StorageSettings
from anytasktune_contract.trainspec import BaseModelRef
from anytasktune_trainjob.models import resolve_base_model


def _storage() -> ObjectStore:
    return ObjectStore(StorageSettings("http://127.0.0.1:1"))


def test_hf_id_resolves_offline_from_cache_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "hf" / "hub" / "models--Org--Tiny"
    snap = repo / "snapshots" / "local-rev"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("local-rev")
    monkeypatch.delenv("HF_HOME", raising=False)
    resolved = resolve_base_model(BaseModelRef(id="Org/Tiny", cachePath=str(tmp_path / "hf")), _storage())
    assert Path(resolved.path) == snap and resolved.identity == "Org/Tiny"


def test_hf_id_missing_from_cache_is_invalid_spec(tmp_path: Path) -> None:
    with pytest.raises(InvalidSpecError, match="not in the offline cache"):
        resolve_base_model(BaseModelRef(id="Org/Missing", cachePath=str(tmp_path)), _storage())


def test_local_folder(tmp_path: Path) -> None:
    resolved = resolve_base_model(BaseModelRef(uri=str(tmp_path)), _storage())
    assert resolved.path == str(tmp_path.resolve()) and resolved.identity == str(tmp_path)
    with pytest.raises(InvalidSpecError):
        resolve_base_model(BaseModelRef(uri=str(tmp_path / "nope")), _storage())


def test_identity() -> None:
    assert BaseModelRef(uri="s3://b/m/", id="x").identity() == "s3://b/m/"
    assert BaseModelRef(id="Qwen/Qwen2.5-0.5B").identity() == "Qwen/Qwen2.5-0.5B"
