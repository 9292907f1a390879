"""A thin wrapper over the real git command line, for the workspace's repository."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path


class GitError(RuntimeError):
    pass


class GitRepo:
    def __init__(self, root: Path):
        self.root = Path(root)

    def git(self, *args: str, check: bool = True, input: str | None = None) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=self.root, capture_output=True, text=True, input=input)
        except FileNotFoundError:
            raise GitError("git is not installed: install git (e.g. `apt-get install git`) and retry") from None
        if check and done.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout.strip()

    # --- set-up -------------------------------------------------------------------------
    @classmethod
    def init(cls, root: Path, branch: str = "main") -> "GitRepo":
        repo = cls(root)
        repo.git("init", "-q", "-b", branch)
        return repo

    def is_repo(self) -> bool:
        return (self.root / ".git").exists()

    def check_identity(self) -> None:
        name = self.git("config", "user.name", check=False) or os.environ.get("GIT_COMMITTER_NAME")
        email = self.git("config", "user.email", check=False) or os.environ.get("GIT_COMMITTER_EMAIL")
        if not name or not email:
            raise GitError(
                "git has no identity to commit with: run `git config --global user.name \"Your Name\"` and "
                "`git config --global user.email you@example.com` (or the same without --global inside "
                f"{self.root}), then retry"
            )

    # --- state --------------------------------------------------------------------------
    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def current_branch(self) -> str:
        return self.git("rev-parse", "--abbrev-ref", "HEAD")

    def branch_exists(self, name: str) -> bool:
        return bool(self.git("rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False))

    def changed_paths(self) -> list[str]:
        """Tracked files with changes plus untracked files that are not ignored."""
        out = subprocess.run(["git", "status", "--porcelain", "-z", "--untracked-files=all"], cwd=self.root,
                             capture_output=True, text=True, check=True).stdout
        entries = out.split("\0")
        paths, i = [], 0
        while i < len(entries):
            entry = entries[i]
            if len(entry) > 3:
                paths.append(entry[3:])
                if entry[0] in "RC":  # a rename is followed by its old path
                    i += 1
            i += 1
        return paths

    def show_file(self, commit: str, path: str) -> str:
        return self.git("show", f"{commit}:{path}")

    def commit_exists(self, commit: str) -> bool:
        return bool(self.git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", check=False))

    def diff_numstat(self, old: str, new: str) -> int:
        """Lines added plus removed between two commits."""
        total = 0
        for line in self.git("diff", "--numstat", old, new).splitlines():
            added, removed, _ = line.split("\t", 2)
            if added != "-":
                total += int(added) + int(removed)
        return total

    def diff(self, old: str, new: str) -> str:
        return self.git("diff", old, new)

    # --- changes ------------------------------------------------------------------------
    def commit_paths(self, paths: list[str], message: str) -> str:
        self.git("add", "--", *paths)
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.head()

    def checkout_branch(self, name: str, start: str | None = None) -> None:
        if self.branch_exists(name):
            self.git("checkout", "-q", name)
        else:
            self.git("checkout", "-q", "-b", name, *([start] if start else []))

    def reset_hard(self, commit: str) -> None:
        self.git("reset", "-q", "--hard", commit)

    def update_ref(self, ref: str, commit: str) -> None:
        self.git("update-ref", ref, commit)

    def ref_commit(self, ref: str) -> str | None:
        out = self.git("rev-parse", "--verify", "--quiet", ref, check=False)
        return out or None
