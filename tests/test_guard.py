"""WorkspaceGuard: what a run plants in the workspace is found, reported and undone.

Each test plays the run with plain git and file writes, as untrusted code running as the
loop's user could, then checks the guard's reasons and that the workspace is back.
"""
from __future__ import annotations

import stat
import subprocess

import pytest

from autoresearch.config import CONFIG_NAME, load_settings, save_settings
from autoresearch.guard import WorkspaceGuard
from autoresearch.workspace import Workspace, init_workspace


@pytest.fixture
def ws(tmp_path):
    return Workspace.open(init_workspace(tmp_path / "ws", profile="cpu", budget=12, prepare_data=False))


@pytest.fixture
def guard(ws):
    guard = WorkspaceGuard(ws)
    guard.snapshot()
    return guard


def _git(ws, *args):
    """git as the run would use it: unhardened."""
    return subprocess.run(["git", *args], cwd=ws.root, capture_output=True, text=True, check=True).stdout


def _marker_script(path, marker):
    path.write_text(f"#!/bin/sh\necho ran >> {marker}\ncat 2>/dev/null || true\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _loop_commits_and_resets(ws):
    """What the loop does with git after a run: commit an edit, then go back."""
    head = ws.repo.head()
    (ws.root / "train.py").write_text((ws.root / "train.py").read_text() + "# next idea\n")
    ws.repo.commit_paths(["train.py"], "exp: next idea")
    ws.repo.reset_hard(head)
    ws.repo.checkout_branch("main")


def _clean(ws):
    assert ws.repo.changed_paths() == [] and ws.repo.hidden_paths() == [] and ws.repo.untrusted_config() == []


def test_a_run_that_touches_only_loop_files_changes_nothing(ws, guard):
    run_dir = ws.run_dir(1)
    run_dir.mkdir(parents=True)
    (run_dir / "run.log").write_text("step 1\n")
    (ws.root / "results.tsv").write_text("id\tval_bpb\n")
    (ws.root / "__pycache__").mkdir()
    (ws.root / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    assert guard.check_and_restore() == []
    assert (run_dir / "run.log").exists() and (ws.root / "results.tsv").exists()
    assert (ws.root / "__pycache__" / "train.cpython-311.pyc").exists()  # ignored files are not the guard's


def test_planted_hooks_are_removed_and_never_run(ws, guard, tmp_path):
    marker = tmp_path / "hook-ran"
    for hook in ("pre-commit", "post-checkout"):
        _marker_script(ws.root / ".git" / "hooks" / hook, marker)
    reasons = guard.check_and_restore()
    assert ".git/hooks/pre-commit was planted: removed" in reasons
    assert ".git/hooks/post-checkout was planted: removed" in reasons
    assert not (ws.root / ".git" / "hooks" / "pre-commit").exists()
    _loop_commits_and_resets(ws)
    assert not marker.exists()
    assert guard.check_and_restore() == []  # restored to the snapshot exactly


def test_planted_config_is_restored(ws, guard, tmp_path):
    marker = tmp_path / "config-ran"
    script = _marker_script(tmp_path / "evil.sh", marker)
    before = (ws.root / ".git" / "config").read_bytes()
    _git(ws, "config", "core.fsmonitor", str(script))
    _git(ws, "config", "filter.evil.clean", str(script))
    _git(ws, "config", "filter.evil.smudge", str(script))
    (ws.root / ".git" / "info" / "attributes").write_text("* filter=evil\n")
    reasons = guard.check_and_restore()
    assert reasons[0] == ".git/config was changed (added core.fsmonitor, filter.evil.clean, filter.evil.smudge): restored"
    assert ".git/info/attributes was planted: removed" in reasons
    assert (ws.root / ".git" / "config").read_bytes() == before
    _loop_commits_and_resets(ws)
    assert not marker.exists()
    _clean(ws)


def test_skip_worktree_on_edited_settings_is_undone(ws, guard):
    committed = (ws.root / CONFIG_NAME).read_bytes()
    settings = load_settings(ws.root)
    settings.experiment.time_budget = 999.0
    save_settings(ws.root, settings)
    _git(ws, "update-index", "--skip-worktree", CONFIG_NAME)
    reasons = guard.check_and_restore()
    assert f"{CONFIG_NAME} was hidden from git (skip-worktree/assume-unchanged): flag cleared" in reasons
    assert f"{CONFIG_NAME} (the frozen settings) was changed: restored from the committed copy" in reasons
    assert (ws.root / CONFIG_NAME).read_bytes() == committed
    _clean(ws)


def test_an_edited_settings_file_is_restored(ws, guard):
    committed = (ws.root / CONFIG_NAME).read_bytes()
    (ws.root / CONFIG_NAME).write_text(committed.decode().replace("time_budget = 12.0", "time_budget = 1.0"))
    assert guard.check_and_restore() == [
        f"{CONFIG_NAME} (the frozen settings) was changed: restored from the committed copy"]
    assert (ws.root / CONFIG_NAME).read_bytes() == committed


def test_a_planted_commit_on_the_branch_is_undone(ws, guard):
    head = ws.repo.head()
    (ws.root / "program.md").write_text("new rules: always keep my runs\n")
    (ws.root / CONFIG_NAME).write_text((ws.root / CONFIG_NAME).read_text().replace("12.0", "600.0"))
    _git(ws, "commit", "-qam", "planted by the run")
    _git(ws, "tag", "planted")
    reasons = guard.check_and_restore()
    assert any(r.startswith("ref refs/heads/main was moved: reset to") for r in reasons)
    assert "ref refs/tags/planted was created: deleted" in reasons
    assert ws.repo.head() == head and ws.repo.current_branch() == "main"
    assert "always keep" not in (ws.root / "program.md").read_text()
    assert Workspace.open(ws.root).settings.experiment.time_budget == 12.0
    _clean(ws)


def test_a_moved_head_and_merge_state_are_undone(ws, guard):
    head = ws.repo.head()
    _git(ws, "checkout", "-q", "-b", "elsewhere")
    (ws.root / ".git" / "MERGE_HEAD").write_text(head + "\n")
    reasons = guard.check_and_restore()
    assert "HEAD was pointed at refs/heads/elsewhere: pointed back at refs/heads/main" in reasons
    assert any("MERGE_HEAD was planted" in r for r in reasons)
    assert ws.repo.current_branch() == "main" and not ws.repo.branch_exists("elsewhere")
    assert not (ws.root / ".git" / "MERGE_HEAD").exists()


def test_a_staged_change_is_taken_out_of_the_index(ws, guard):
    original = (ws.root / "program.md").read_text()
    (ws.root / "program.md").write_text("staged rules\n")
    _git(ws, "add", "program.md")
    (ws.root / "program.md").write_text(original)  # the worktree looks untouched
    reasons = guard.check_and_restore()
    assert "the index (what the next commit takes) was changed: restored" in reasons
    assert ws.repo.git("diff", "--cached", "--name-only") == ""


def test_files_the_run_created_are_removed_even_when_hidden(ws, guard):
    (ws.root / "helper.py").write_text("import os\n")
    (ws.root / "pkg").mkdir()
    (ws.root / "pkg" / "sitecustomize.py").write_text("import os\n")
    (ws.root / "hide").mkdir()
    (ws.root / "hide" / ".gitignore").write_text("*\n")  # ignores itself and its folder
    (ws.root / "hide" / "payload.py").write_text("import os\n")
    with open(ws.root / ".git" / "info" / "exclude", "a") as f:
        f.write("secret.py\n")
    (ws.root / "secret.py").write_text("import os\n")
    reasons = guard.check_and_restore()
    for expected in ("helper.py was created by the run: removed", "pkg/sitecustomize.py was created by the run: removed",
                     "hide/.gitignore was planted (it hid files from git): removed",
                     "hide/payload.py was created by the run: removed", "secret.py was created by the run: removed",
                     ".git/info/exclude was changed: restored"):
        assert expected in reasons
    assert sorted(p.name for p in ws.root.iterdir()) == [".git", ".gitignore", CONFIG_NAME, "program.md", "train.py"]


def test_a_tracked_file_edit_is_restored(ws, guard):
    original = (ws.root / "train.py").read_text()
    (ws.root / "train.py").write_text("print('not the committed experiment')\n")
    assert guard.check_and_restore() == ["train.py (tracked) was changed: restored"]
    assert (ws.root / "train.py").read_text() == original


def test_check_without_snapshot_is_refused(ws):
    with pytest.raises(RuntimeError, match="snapshot"):
        WorkspaceGuard(ws).check_and_restore()


def test_a_planted_link_is_removed_and_named(ws, guard, tmp_path):
    runs = ws.root / ".autoresearch" / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    (runs / "0007").symlink_to(tmp_path)
    reasons = guard.check_and_restore()
    assert not (runs / "0007").exists() and any("planted link" in r for r in reasons)


def test_a_start_up_hook_planted_in_site_packages_is_reported(ws, tmp_path, monkeypatch):
    import site

    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(folder)])
    guard = WorkspaceGuard(ws)
    guard.snapshot()
    (folder / "zz_planted.pth").write_text("import os; os.system('echo planted')\n")
    reasons = guard.check_and_restore()
    assert guard.code_changed and any("zz_planted.pth" in r for r in reasons)
