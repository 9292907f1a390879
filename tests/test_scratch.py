"""A run's scratch folder and the collection of its outputs, on real files."""
import os
import stat

import pytest

from autoresearch import scratch as SC


@pytest.fixture(autouse=True)
def _own_root(tmp_path, monkeypatch):
    monkeypatch.setenv(SC.SCRATCH_ROOT_ENV, str(tmp_path / "scratch-root"))


def test_a_fresh_folder_holds_the_files_and_a_fifo_outside_any_workspace(tmp_path):
    scratch = SC.Scratch.create({"train.py": b"print(1)\n", "pkg/util.py": b"x = 1\n"}, label="0001")
    try:
        assert (scratch.work / "train.py").read_bytes() == b"print(1)\n"
        assert (scratch.work / "pkg" / "util.py").exists()
        assert stat.S_ISFIFO(os.stat(scratch.events).st_mode)
        env = scratch.run_env()
        assert env["HOME"] == str(scratch.home) and env["TORCHINDUCTOR_CACHE_DIR"].startswith(str(scratch.cache))
    finally:
        scratch.remove()
    assert not scratch.root.exists()


def test_a_file_name_that_climbs_out_is_refused():
    with pytest.raises(ValueError, match="outside"):
        SC.Scratch.create({"../escape.py": b""})


def test_outputs_are_copied_and_oversized_or_odd_ones_refused(tmp_path, monkeypatch):
    monkeypatch.setitem(SC.OUTPUT_CAPS, "model.pt2", 10)
    scratch = SC.Scratch.create({})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    try:
        (scratch.out / "submission.json").write_text("{}")
        (scratch.out / "model.pt2").write_bytes(b"x" * 11)
        (scratch.out / "telemetry.jsonl").mkdir()  # not a regular file
        (scratch.out / "unrelated.txt").write_text("ignored")
        problems = SC.collect_outputs(scratch, run_dir)
    finally:
        scratch.remove()
    assert (run_dir / "submission.json").read_text() == "{}"
    assert not (run_dir / "model.pt2").exists() and not (run_dir / "unrelated.txt").exists()
    assert any("model.pt2" in p and "allowed" in p for p in problems)
    assert any("telemetry.jsonl" in p for p in problems)


def test_the_log_is_appended_from_its_end(tmp_path, monkeypatch):
    monkeypatch.setattr(SC, "LOG_CAP", 5)
    scratch = SC.Scratch.create({})
    dest = tmp_path / "run.log"
    dest.write_text("head|")
    try:
        (scratch.out / "warm.log").write_text("0123456789")
        SC.collect_log(scratch, "warm.log", dest)
    finally:
        scratch.remove()
    assert dest.read_text() == "head|56789"


def test_a_loop_folder_is_emptied_of_what_runs_left_beside_their_own(tmp_path):
    folder = SC.loop_folder()
    (folder / "stash").mkdir()
    (folder / "stash" / "weights.pt").write_bytes(b"w")
    (folder / "note").write_text("n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("k")
    os.symlink(outside, folder / "link")
    SC.sweep(folder)
    assert list(folder.iterdir()) == []
    assert (outside / "keep.txt").exists()  # the link was removed, not followed
