"""Where shared data lives on this machine (outside any workspace)."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Data and tokenizers are cached once per machine; AUTORESEARCH_CACHE overrides."""
    override = os.environ.get("AUTORESEARCH_CACHE")
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "autoresearch"
