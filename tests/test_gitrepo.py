import pytest

from autoresearch.gitrepo import GitError, GitRepo


def _repo(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    repo = GitRepo.init(tmp_path)
    (tmp_path / "a.txt").write_text("one\n")
    first = repo.commit_paths(["a.txt"], "first")
    return repo, first


def test_commit_diff_and_reset(tmp_path):
    repo, first = _repo(tmp_path)
    (tmp_path / "a.txt").write_text("two\nthree\n")
    assert repo.changed_paths() == ["a.txt"]
    second = repo.commit_paths(["a.txt"], "second")
    assert repo.diff_numstat(first, second) == 3  # one removed, two added
    repo.reset_hard(first)
    assert (tmp_path / "a.txt").read_text() == "one\n" and repo.head() == first
    assert repo.show_file(second, "a.txt") == "two\nthree"


def test_refs_keep_commits_reachable(tmp_path):
    repo, first = _repo(tmp_path)
    (tmp_path / "a.txt").write_text("x\n")
    second = repo.commit_paths(["a.txt"], "second")
    repo.update_ref("refs/autoresearch/exp/1", second)
    repo.reset_hard(first)
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")
    assert repo.commit_exists(second) and repo.ref_commit("refs/autoresearch/exp/1") == second


def test_untracked_files_count_as_changes(tmp_path):
    repo, _ = _repo(tmp_path)
    (tmp_path / "new.py").write_text("x = 1\n")
    assert repo.changed_paths() == ["new.py"]


def test_missing_identity_says_what_to_do(tmp_path, monkeypatch):
    repo, _ = _repo(tmp_path)
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(key)
    with pytest.raises(GitError, match="git config --global user.name"):
        repo.check_identity()


# --- hardening: what a training run could plant in .git is never obeyed -------------------------
import stat
import subprocess

from autoresearch.gitrepo import UntrustedConfigError


def _marker_script(path, marker):
    """An executable that leaves `marker` behind when git runs it (and passes stdin through)."""
    path.write_text(f"#!/bin/sh\necho ran >> {marker}\ncat 2>/dev/null || true\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def _plain_git(root, *args):
    """git as a user would run it: no hardening, so it obeys whatever was planted."""
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def test_planted_hooks_never_run(tmp_path):
    repo, first = _repo(tmp_path / "ws")
    marker = tmp_path / "hook-ran"
    for hook in ("pre-commit", "commit-msg", "post-commit", "post-checkout", "reference-transaction"):
        _marker_script(tmp_path / "ws" / ".git" / "hooks" / hook, marker)
    (tmp_path / "ws" / "a.txt").write_text("two\n")
    second = repo.commit_paths(["a.txt"], "second")
    repo.reset_hard(first)
    repo.checkout_branch("other", second)
    repo.checkout_branch("main")
    assert not marker.exists()
    _plain_git(tmp_path / "ws", "commit", "-q", "--allow-empty", "-m", "plain")
    assert marker.exists(), "the planted hook is real: plain git runs it"


def test_fsmonitor_in_config_is_refused_and_overridden(tmp_path):
    repo, _ = _repo(tmp_path / "ws")
    marker = tmp_path / "fsmonitor-ran"
    script = _marker_script(tmp_path / "fsmonitor.sh", marker)
    _plain_git(tmp_path / "ws", "config", "core.fsmonitor", str(script))
    assert repo.untrusted_config() == ["core.fsmonitor"]
    with pytest.raises(UntrustedConfigError, match="core.fsmonitor"):
        repo.changed_paths()
    repo._run(["status", "--porcelain"])  # even past the refusal, -c core.fsmonitor=false wins
    assert not marker.exists()
    _plain_git(tmp_path / "ws", "status", "--porcelain")
    assert marker.exists(), "the planted fsmonitor is real: plain git runs it"


def test_filter_driver_is_refused_then_cleared(tmp_path):
    root = tmp_path / "ws"
    repo, _ = _repo(root)
    marker = tmp_path / "filter-ran"
    script = _marker_script(tmp_path / "filter.sh", marker)
    for key, value in [("filter.evil.clean", str(script)), ("filter.evil.smudge", str(script)),
                       ("user.name", "me"), ("branch.main.remote", "origin"),
                       ("branch.main.merge", "refs/heads/main"), ("remote.origin.url", "/elsewhere")]:
        _plain_git(root, "config", key, value)
    (root / ".gitattributes").write_text("* filter=evil\n")
    (root / "a.txt").write_text("edited\n")
    assert repo.untrusted_config() == ["filter.evil.clean", "filter.evil.smudge"]
    with pytest.raises(UntrustedConfigError, match="filter.evil.clean"):
        repo.commit_paths(["a.txt"], "would run the filter")
    assert repo.clear_untrusted_config() == ["filter.evil.clean", "filter.evil.smudge"]
    config = (root / ".git" / "config").read_text()
    assert "evil" not in config and "remote = origin" in config and "name = me" in config
    commit = repo.commit_paths(["a.txt", ".gitattributes"], "filters are gone")
    repo.reset_hard(commit)
    assert not marker.exists() and repo.untrusted_config() == []


def test_hidden_flags_are_found_and_cleared(tmp_path):
    root = tmp_path / "ws"
    repo, _ = _repo(root)
    (root / "b.txt").write_text("b\n")
    repo.commit_paths(["b.txt"], "b")
    repo.git("update-index", "--skip-worktree", "a.txt")
    repo.git("update-index", "--assume-unchanged", "b.txt")
    (root / "a.txt").write_text("hidden edit\n")
    (root / "b.txt").write_text("hidden edit\n")
    assert repo.changed_paths() == []  # git does not see them: that is the danger
    assert repo.hidden_paths() == ["a.txt", "b.txt"]
    assert repo.clear_hidden_flags() == ["a.txt", "b.txt"]
    assert repo.hidden_paths() == [] and repo.changed_paths() == ["a.txt", "b.txt"]


def test_replace_refs_cannot_swap_committed_content(tmp_path):
    root = tmp_path / "ws"
    repo, first = _repo(root)
    fake = subprocess.run(["git", "hash-object", "-w", "--stdin"], cwd=root, input="forged\n",
                          capture_output=True, text=True).stdout.strip()
    real = repo.git("rev-parse", f"{first}:a.txt")
    _plain_git(root, "replace", real, fake)
    assert _plain_git(root, "show", f"{first}:a.txt").stdout == "forged\n"
    assert repo.show_file(first, "a.txt") == "one" and repo.show_bytes(first, "a.txt") == b"one\n"
