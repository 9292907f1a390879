"""The compiler's cache, shared between runs only as a read-only starting point.

Compiling the model is most of a run's start-up on a CPU (16-20 s cold, about 3 s with a
warm cache on two cores), so runs should not start from nothing. But a cache a run could
write would carry things from one run to the next: compiled code that a later run loads,
or trained weights dressed up as a cache entry. So every run gets a private copy in its
scratch folder, and only runs of code nobody but us wrote - the shipped template for the
profile, byte for byte - may replace the shared copy with what they compiled.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from autoresearch.paths import cache_root

INDUCTOR = "inductor"  # the folder under a scratch cache that TORCHINDUCTOR_CACHE_DIR names


def base_dir(profile_name: str) -> Path:
    import torch

    return cache_root() / "compile" / f"{profile_name}-torch{torch.__version__}"


def seed(scratch_cache: Path, profile_name: str) -> None:
    """Gives a run its private copy of the shared cache (if there is one)."""
    base = base_dir(profile_name)
    if base.is_dir():
        shutil.copytree(base, Path(scratch_cache) / INDUCTOR, symlinks=True, dirs_exist_ok=True)


def trusted_run(train_py: bytes | None, profile_name: str) -> bool:
    """Whether a run's code is the shipped template for this profile, unchanged."""
    if train_py is None:
        return False
    from autoresearch.workspace import render_train_py

    try:
        return train_py == render_train_py(profile_name).encode()
    except ValueError:
        return False


def promote(scratch_cache: Path, profile_name: str) -> None:
    """Replaces the shared cache with what a trusted run compiled (links are not followed)."""
    source = Path(scratch_cache) / INDUCTOR
    if not source.is_dir():
        return
    base = base_dir(profile_name)
    base.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=base.parent))
    try:
        shutil.copytree(source, staging / "cache", symlinks=False, ignore_dangling_symlinks=True,
                        copy_function=_copy_regular)
        old = base.with_name(base.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if base.exists():
            os.replace(base, old)
        os.replace(staging / "cache", base)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _copy_regular(src, dst):
    if os.path.islink(src):
        return dst  # a trusted run makes no links; anything else is not carried
    return shutil.copy2(src, dst)
