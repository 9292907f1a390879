import pytest

from autoresearch.gitrepo import GitError, GitRepo


def _repo(tmp_path):
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
