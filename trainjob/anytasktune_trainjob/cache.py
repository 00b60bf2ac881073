"""Where a node keeps what it downloads or builds once (models, DeepSpeed ops)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    """$ANYTASKTUNE_CACHE, default ~/.cache/anytasktune."""
    env = os.environ.get("ANYTASKTUNE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "anytasktune"


def cache_dir_for(uri: str, kind: str = "models") -> Path:
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    name = uri.rstrip("/").rsplit("/", 1)[-1][:40] or "root"
    return cache_root() / kind / f"{name}-{digest}"
