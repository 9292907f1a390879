"""The shared compiler cache: a private copy per run, replaced only by the shipped template's runs."""
import os

import pytest

from autoresearch import compilecache as CC
from autoresearch.workspace import render_train_py


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(tmp_path / "cache"))


def test_only_the_unchanged_template_is_trusted():
    template = render_train_py("cpu").encode()
    assert CC.trusted_run(template, "cpu")
    assert not CC.trusted_run(template + b"\n# one more line\n", "cpu")
    assert not CC.trusted_run(render_train_py("gpu").encode(), "cpu")
    assert not CC.trusted_run(None, "cpu")


def test_a_run_gets_a_copy_and_its_writes_never_reach_the_shared_cache(tmp_path):
    made = tmp_path / "trusted" / CC.INDUCTOR
    made.mkdir(parents=True)
    (made / "kernel.so").write_bytes(b"compiled")
    CC.promote(made.parent, "cpu")
    run_cache = tmp_path / "run-cache"
    CC.seed(run_cache, "cpu")
    assert (run_cache / CC.INDUCTOR / "kernel.so").read_bytes() == b"compiled"
    (run_cache / CC.INDUCTOR / "kernel.so").write_bytes(b"planted")
    (run_cache / CC.INDUCTOR / "weights.pt").write_bytes(b"from an earlier run")
    assert (CC.base_dir("cpu") / "kernel.so").read_bytes() == b"compiled"
    assert not (CC.base_dir("cpu") / "weights.pt").exists()


def test_promotion_replaces_the_whole_copy_and_carries_no_links(tmp_path):
    first = tmp_path / "a" / CC.INDUCTOR
    first.mkdir(parents=True)
    (first / "old").write_text("old")
    CC.promote(first.parent, "cpu")
    second = tmp_path / "b" / CC.INDUCTOR
    second.mkdir(parents=True)
    (second / "new").write_text("new")
    os.symlink("/etc/passwd", second / "link")
    CC.promote(second.parent, "cpu")
    base = CC.base_dir("cpu")
    assert sorted(p.name for p in base.iterdir()) == ["new"]
