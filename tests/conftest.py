"""Shared fixtures: an isolated git identity and data cache for every test."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

IDENTITY = {
    "GIT_AUTHOR_NAME": "autoresearch tests", "GIT_AUTHOR_EMAIL": "tests@autoresearch.invalid",
    "GIT_COMMITTER_NAME": "autoresearch tests", "GIT_COMMITTER_EMAIL": "tests@autoresearch.invalid",
}


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch, tmp_path_factory):
    """Tests never read or write the user's git config, and always have an identity."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path_factory.getbasetemp() / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for key, value in IDENTITY.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory) -> Path:
    """One prepared copy of the builtin data (cpu vocabulary) shared by the slow tests."""
    from autoresearch.harness.prepare import prepare
    from autoresearch.harness.profiles import CPU

    root = tmp_path_factory.mktemp("cache")
    old = os.environ.get("AUTORESEARCH_CACHE")
    os.environ["AUTORESEARCH_CACHE"] = str(root)
    try:
        prepare("builtin", CPU.vocab_size, progress=False)
    finally:
        if old is None:
            os.environ.pop("AUTORESEARCH_CACHE", None)
        else:
            os.environ["AUTORESEARCH_CACHE"] = old
    return root


BIGRAM = Path(__file__).parent / "fixtures" / "bigram_train.py"


@pytest.fixture
def workspace(tmp_path, monkeypatch, data_cache):
    """A cpu-profile workspace whose target is a tiny bigram model with a 1 s budget."""
    from autoresearch.config import load_settings, save_settings
    from autoresearch.gitrepo import GitRepo
    from autoresearch.workspace import Workspace, init_workspace

    monkeypatch.setenv("AUTORESEARCH_CACHE", str(data_cache))
    root = init_workspace(tmp_path / "ws", profile="cpu", budget=1.0, tag="t", prepare_data=False)
    (root / "train.py").write_text(BIGRAM.read_text())
    settings = load_settings(root)
    settings.policy.baseline_repeats = 2
    save_settings(root, settings)
    GitRepo(root).commit_paths(["train.py", "autoresearch.toml"], "tiny bigram target")
    return Workspace.open(root)  # after the commit: open() reads the committed settings
