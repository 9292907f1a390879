"""A thin wrapper over the real git command line, for the workspace's repository.

Training runs are untrusted code that may run as the same user, so they can write into
.git. Every git command here is therefore run hardened: no hooks, no fsmonitor, no
untracked cache, no system config, no pager/editor/prompt, no replace refs or grafts, and
no diff helpers. Repo-local config outside a small allow-list (what `git init` writes, an
identity, branch tracking) is refused, because keys such as filter.<x>.clean run commands.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

# core.hooksPath=/dev/null: git looks for /dev/null/<hook>, which never exists
HARDENING = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "core.untrackedCache=false",
    "-c", "core.pager=cat",
    "-c", "core.editor=:",
    "-c", "core.askPass=",
)
SAFE_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_NO_REPLACE_OBJECTS": "1",  # refs/replace/* could swap the committed settings blob
    "GIT_GRAFT_FILE": os.devnull,  # so could .git/info/grafts
    "GIT_PAGER": "cat",
    "GIT_EDITOR": ":",
    "GIT_OPTIONAL_LOCKS": "0",
}
# inherited variables that would point git at another repository or run helpers
DROPPED_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_EXTERNAL_DIFF", "GIT_ASKPASS", "SSH_ASKPASS",
               "GIT_SSH", "GIT_SSH_COMMAND", "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES")

# keys a workspace's .git/config may hold; anything else was not written by the loop or `git init`
ALLOWED_CONFIG = (
    r"core\.(repositoryformatversion|filemode|bare|logallrefupdates|ignorecase|precomposeunicode|symlinks)",
    r"extensions\.objectformat",
    r"user\.(name|email)",
    r"branch\.[^\n]+\.(remote|merge)",
    r"remote\.[^\n]+\.(url|fetch)",
)
_ALLOWED = re.compile("|".join(f"(?:{p})" for p in ALLOWED_CONFIG))


_CLEAN_CONFIG: dict[Path, tuple] = {}  # config path -> stat key when it last held only allowed keys


class GitError(RuntimeError):
    pass


class UntrustedConfigError(GitError):
    pass


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env.update(SAFE_ENV)
    return env


def _stat_key(path: Path):
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class GitRepo:
    def __init__(self, root: Path):
        self.root = Path(root)

    # --- running git --------------------------------------------------------------------
    def _run(self, args, *, input: str | None = None, text: bool = True) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(["git", *HARDENING, *args], cwd=self.root, capture_output=True, text=text,
                                  input=input, env=_env())
        except FileNotFoundError:
            raise self._not_found() from None

    def _not_found(self) -> GitError:
        if not self.root.is_dir():
            return GitError(f"{self.root} is not a folder: check the workspace path")
        return GitError("git is not installed: install git (e.g. `apt-get install git`) and retry")

    def git(self, *args: str, check: bool = True, input: str | None = None, strip: bool = True) -> str:
        """Runs git hardened; refuses while .git/config holds keys the loop did not write."""
        self._refuse_untrusted_config()
        done = self._run(args, input=input)
        if check and done.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout.strip() if strip else done.stdout

    # --- repo-local config --------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / ".git" / "config"

    def _config_keys(self) -> list[str]:
        # --file: only this file, never includes; `git config` runs no hooks or filters
        done = self._run(["config", "--file", str(self.config_path), "--no-includes", "--list", "--name-only", "-z"])
        if done.returncode != 0:
            raise UntrustedConfigError(f"{self.config_path} cannot be read by git ({done.stderr.strip()}): "
                                       "restore it from a backup or re-create the workspace")
        return [k for k in done.stdout.split("\0") if k]

    def untrusted_config(self) -> list[str]:
        """Keys in .git/config outside ALLOWED_CONFIG (each listed once, in file order)."""
        if not self.config_path.is_file():
            return []
        keys = [k for k in self._config_keys() if not _ALLOWED.fullmatch(k.lower())]
        return list(dict.fromkeys(keys))

    def clear_untrusted_config(self) -> list[str]:
        """Removes every key outside the allow-list; returns the keys removed."""
        keys = self.untrusted_config()
        for key in keys:
            done = self._run(["config", "--file", str(self.config_path), "--unset-all", key])
            if done.returncode not in (0, 5):  # 5: already gone
                raise GitError(f"could not remove {key} from {self.config_path}: {done.stderr.strip()}")
        self._drop_empty_sections()
        return keys

    def _drop_empty_sections(self) -> None:
        # `git config --unset` leaves `[filter "x"]` headers behind; harmless but noisy
        lines = self.config_path.read_text().splitlines(keepends=True)
        kept = [line for i, line in enumerate(lines)
                if not (line.lstrip().startswith("[") and (i + 1 == len(lines) or lines[i + 1].lstrip().startswith("[")))]
        if kept != lines:
            self.config_path.write_text("".join(kept))

    def _refuse_untrusted_config(self) -> None:
        # ctime changes on every write and cannot be set back, so an unchanged key means unchanged content
        key = _stat_key(self.config_path)
        if key is not None and _CLEAN_CONFIG.get(self.config_path) == key:
            return
        bad = self.untrusted_config()
        if bad:
            raise UntrustedConfigError(
                f"{self.config_path} holds settings the loop did not write ({', '.join(bad[:5])}); they could run "
                f"commands whenever git runs. Remove them (`git -C {self.root} config --unset-all KEY`) or "
                "call GitRepo.clear_untrusted_config(), then retry")
        if key is not None:
            _CLEAN_CONFIG[self.config_path] = key

    # --- index flags --------------------------------------------------------------------
    def hidden_paths(self) -> list[str]:
        """Tracked paths flagged skip-worktree or assume-unchanged: git would not see their edits."""
        out = self.git("ls-files", "-v", "-z", strip=False)
        hidden = []
        for entry in out.split("\0"):
            if len(entry) > 2 and (entry[0] == "S" or entry[0].islower()):
                hidden.append(entry[2:])
        return hidden

    def clear_hidden_flags(self) -> list[str]:
        """Clears skip-worktree and assume-unchanged; returns the paths that had either."""
        paths = self.hidden_paths()
        self.unhide(paths)
        return paths

    def unhide(self, paths: list[str]) -> None:
        """Clears both flags on `paths`; one update-index call honours only the last of the two options."""
        if paths:
            self.git("update-index", "-q", "--no-skip-worktree", "--", *paths)
            self.git("update-index", "-q", "--no-assume-unchanged", "--", *paths)

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

    def symbolic_head(self) -> str | None:
        """The ref HEAD points at (refs/heads/...), or None when detached."""
        return self.git("symbolic-ref", "-q", "HEAD", check=False) or None

    def branch_exists(self, name: str) -> bool:
        return bool(self.git("rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False))

    def changed_paths(self) -> list[str]:
        """Tracked files with changes plus untracked files that are not ignored."""
        out = self.git("status", "--porcelain", "-z", "--untracked-files=all", strip=False)
        return _porcelain_paths(out)

    def untracked_paths(self) -> list[str]:
        """Untracked files that are not ignored (by .gitignore, .git/info/exclude)."""
        out = self.git("ls-files", "--others", "--exclude-standard", "-z", strip=False)
        return [p for p in out.split("\0") if p]

    def refs(self) -> dict[str, str]:
        """Every ref (branches, tags, experiment refs) and the object it names."""
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)")
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def index_tree(self) -> str | None:
        """The tree the index would commit; None if it cannot be written (conflicts)."""
        return self.git("write-tree", check=False) or None

    def show_file(self, commit: str, path: str) -> str:
        return self.git("show", "--no-textconv", f"{commit}:{path}")

    def show_bytes(self, commit: str, path: str) -> bytes | None:
        """The exact committed bytes of `path`, or None when `commit` does not hold it."""
        self._refuse_untrusted_config()
        done = self._run(["cat-file", "blob", f"{commit}:{path}"], text=False)
        return done.stdout if done.returncode == 0 else None

    def commit_exists(self, commit: str) -> bool:
        return bool(self.git("rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", check=False))

    def diff_numstat(self, old: str, new: str) -> int:
        """Lines added plus removed between two commits."""
        total = 0
        for line in self.git("diff", "--no-ext-diff", "--no-textconv", "--numstat", old, new).splitlines():
            added, removed, _ = line.split("\t", 2)
            if added != "-":
                total += int(added) + int(removed)
        return total

    def diff(self, old: str, new: str) -> str:
        return self.git("diff", "--no-ext-diff", "--no-textconv", old, new)

    # --- changes ------------------------------------------------------------------------
    def commit_paths(self, paths: list[str], message: str) -> str:
        self.git("add", "--", *paths)
        self.git("commit", "-q", "--no-verify", "--allow-empty", "-m", message)
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


def _porcelain_paths(out: str) -> list[str]:
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
