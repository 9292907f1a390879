"""Checks that a training run left the workspace's git state alone, and puts it back if not.

A run is untrusted code that may run as the loop's own user, so it can plant hooks, config,
index flags, refs or files that the loop's next git command would obey or commit. The loop
calls snapshot() before each run and check_and_restore() after it; any difference makes the
run invalid, and the workspace is returned to the snapshot either way.
"""
from __future__ import annotations

import hashlib
import os
import site
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.config import CONFIG_NAME
from autoresearch.gitrepo import GitError, GitRepo
from autoresearch.workspace import LOOP_FILES, Workspace

# files whose presence makes the next `git commit` a merge, cherry-pick or rebase step
OPERATION_STATE = ("MERGE_HEAD", "MERGE_MODE", "MERGE_MSG", "SQUASH_MSG", "CHERRY_PICK_HEAD", "REVERT_HEAD",
                   "BISECT_LOG", "rebase-merge", "rebase-apply", "sequencer")


@dataclass
class Snapshot:
    head: str
    symbolic_head: str | None  # refs/heads/<branch>, None when detached
    refs: dict
    config: bytes
    hooks: dict  # relative path -> bytes (a symlink as b"->" + target)
    info: dict
    operation_state: set
    hidden: set  # paths flagged skip-worktree / assume-unchanged
    index_tree: str | None
    settings_sha256: str | None  # of the worktree autoresearch.toml
    untracked: set
    dirty: set = field(default_factory=set)  # tracked paths already changed before the run
    links: set = field(default_factory=set)  # symbolic links in the workspace before the run
    code: dict = field(default_factory=dict)  # the installed harness's files -> sha256


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_folder(folder: Path) -> dict:
    """Every file under `folder` by relative path, without following symlinks."""
    if folder.is_symlink() or not folder.is_dir():
        return {} if not folder.is_symlink() else {".": b"->" + os.readlink(folder).encode()}
    found = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(folder))
            found[rel] = b"->" + os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
    return found


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _write_file(path: Path, data: bytes) -> None:
    """Atomically writes `data`, replacing whatever (a symlink included) stood at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _restore_folder(folder: Path, want: dict, label: str) -> list[str]:
    """Makes `folder` hold exactly `want`; returns one reason per difference."""
    have = _read_folder(folder)
    if have == want:
        return []
    reasons = []
    if "." in have or folder.is_file():  # the folder itself was replaced
        reasons.append(f"{label} was replaced by a link or file: restored")
        _remove(folder)
        have = {}
    folder.mkdir(parents=True, exist_ok=True)
    for rel in sorted(set(have) - set(want)):
        reasons.append(f"{label}/{rel} was planted: removed")
        _remove(folder / rel)
    for rel in sorted(want):
        if have.get(rel) != want[rel]:
            reasons.append(f"{label}/{rel} was {'changed' if rel in have else 'removed'}: restored")
            data = want[rel]
            if data.startswith(b"->"):
                _remove(folder / rel)
                os.symlink(data[2:].decode(), folder / rel)
            else:
                _write_file(folder / rel, data)
    return reasons


class WorkspaceGuard:
    def __init__(self, workspace: Workspace):
        self.ws = workspace
        self.repo: GitRepo = workspace.repo
        self.git_dir = workspace.root / ".git"
        self.before: Snapshot | None = None

    # --- before the run -----------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        repo = self.repo
        self.before = Snapshot(
            head=repo.head(),
            symbolic_head=repo.symbolic_head(),
            refs=repo.refs(),
            config=(self.git_dir / "config").read_bytes(),
            hooks=_read_folder(self.git_dir / "hooks"),
            info=_read_folder(self.git_dir / "info"),
            operation_state=self._operation_state(),
            hidden=set(repo.hidden_paths()),
            index_tree=repo.index_tree(),
            settings_sha256=self._settings_sha256(),
            untracked=set(repo.untracked_paths()),
            dirty=set(self._tracked_changes()),
            links=set(self._links()),
            code=code_fingerprint(),
        )
        self.code_changed: list[str] = []
        return self.before

    def _links(self) -> list[Path]:
        """Every symbolic link in the workspace (git's object store aside)."""
        found = []
        for folder, dirs, files in os.walk(self.ws.root):
            if Path(folder) == self.git_dir / "objects":
                dirs[:] = []
                continue
            found += [Path(folder) / name for name in dirs + files if (Path(folder) / name).is_symlink()]
        return found

    def _remove_links(self) -> list[str]:
        """A link the loop did not make would redirect its next write: a run's folder pointed into
        the installed package, a ledger file pointed at code that runs later."""
        reasons = []
        for path in self._links():
            if path not in self.before.links:
                target = os.readlink(path)
                path.unlink()
                reasons.append(f"removed a planted link {path.relative_to(self.ws.root)} -> {target}")
        return reasons

    def _check_code(self) -> list[str]:
        now = code_fingerprint()
        # a byte-code file Python writes on a first import is new, not changed: only sources count as new
        changed = sorted(name for name in set(now) | set(self.before.code) if now.get(name) != self.before.code.get(name)
                         and not (name not in self.before.code and "__pycache__" in name))
        self.code_changed = changed
        if not changed:
            return []
        return [f"the installed harness code changed ({', '.join(changed[:5])}): reinstall autoresearch "
                "(pip install --force-reinstall) before running again, and use the sandbox"]

    def _operation_state(self) -> set:
        return {name for name in OPERATION_STATE if (self.git_dir / name).exists()}

    def _settings_sha256(self) -> str | None:
        path = self.ws.root / CONFIG_NAME
        return _sha256(path.read_bytes()) if path.is_file() and not path.is_symlink() else None

    def _tracked_changes(self) -> list[str]:
        out = self.repo.git("status", "--porcelain", "-z", "--untracked-files=no", "--no-renames", strip=False)
        return [entry[3:] for entry in out.split("\0") if len(entry) > 3]

    # --- after the run ------------------------------------------------------------------
    def check_and_restore(self) -> list[str]:
        """Every difference from the snapshot as a short reason; the workspace is put back."""
        if self.before is None:
            raise RuntimeError("WorkspaceGuard.check_and_restore() needs snapshot() to be called before the run")
        reasons = self._check_code()
        reasons += self._remove_links()  # before anything below writes through one
        reasons += self._restore_config()  # first of git: the commands below must not obey planted config
        reasons += _restore_folder(self.git_dir / "hooks", self.before.hooks, ".git/hooks")
        reasons += _restore_folder(self.git_dir / "info", self.before.info, ".git/info")
        for step in (self._restore_operation_state, self._restore_refs, self._restore_flags, self._restore_index,
                     self._restore_settings, self._restore_tracked, self._remove_untracked):
            try:
                reasons += step()
            except (GitError, OSError) as e:
                reasons.append(f"could not finish restoring the workspace ({step.__name__[1:]}: {e}); "
                               "check it by hand with `git status` before the next run")
        return reasons

    def _restore_config(self) -> list[str]:
        path = self.git_dir / "config"
        current = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        if current == self.before.config:
            return []
        planted = self.repo.untrusted_config() if current is not None else []
        _write_file(path, self.before.config)
        what = f" (added {', '.join(planted[:5])})" if planted else ""
        return [f".git/config was changed{what}: restored"]

    def _restore_operation_state(self) -> list[str]:
        reasons = []
        for name in sorted(self._operation_state() - self.before.operation_state):
            _remove(self.git_dir / name)
            reasons.append(f".git/{name} was planted (the next commit would have obeyed it): removed")
        return reasons

    def _restore_refs(self) -> list[str]:
        repo, before, reasons = self.repo, self.before, []
        now_symbolic = repo.symbolic_head()
        if now_symbolic != before.symbolic_head:
            reasons.append(f"HEAD was pointed at {now_symbolic or 'a detached commit'}: "
                           f"pointed back at {before.symbolic_head or before.head[:12]}")
        elif not before.symbolic_head and repo.git("rev-parse", "HEAD", check=False) != before.head:
            reasons.append(f"the detached HEAD moved: reset to {before.head[:12]}")
        now = repo.refs()
        for ref in sorted(set(now) - set(before.refs)):
            repo.git("update-ref", "-d", ref)
            reasons.append(f"ref {ref} was created: deleted")
        for ref, commit in sorted(before.refs.items()):
            if now.get(ref) != commit:
                repo.git("update-ref", ref, commit)
                reasons.append(f"ref {ref} was {'moved' if ref in now else 'deleted'}: reset to {commit[:12]}")
        if before.symbolic_head:
            repo.git("symbolic-ref", "HEAD", before.symbolic_head)
        else:
            repo.git("update-ref", "--no-deref", "HEAD", before.head)
        return reasons

    def _restore_flags(self) -> list[str]:
        new = sorted(set(self.repo.hidden_paths()) - self.before.hidden)
        self.repo.unhide(new)
        return [f"{path} was hidden from git (skip-worktree/assume-unchanged): flag cleared" for path in new]

    def _restore_index(self) -> list[str]:
        if self.repo.index_tree() == self.before.index_tree or self.before.index_tree is None:
            return []
        self.repo.git("read-tree", self.before.index_tree)
        return ["the index (what the next commit takes) was changed: restored"]

    def _restore_settings(self) -> list[str]:
        changed = self._settings_sha256() != self.before.settings_sha256
        repairs = self.ws.restore_settings()
        if not changed and not repairs:
            return []
        return [f"{CONFIG_NAME} (the frozen settings) was changed: restored from the committed copy"]

    def _restore_tracked(self) -> list[str]:
        changed = sorted(set(self._tracked_changes()) - self.before.dirty - {CONFIG_NAME})
        if changed:
            self.repo.git("checkout", "-q", "--", *changed)  # from the (restored) index
        return [f"{path} (tracked) was changed: restored" for path in changed]

    def _remove_untracked(self) -> list[str]:
        reasons = self._remove_planted_gitignores()
        for rel in sorted(set(self.repo.untracked_paths()) - self.before.untracked):
            if self._loop_owned(rel):
                continue
            self._remove_with_empty_parents(rel)
            reasons.append(f"{rel} was created by the run: removed")
        return reasons

    def _remove_planted_gitignores(self) -> list[str]:
        """A new .gitignore deeper in the tree could hide what the run planted: drop it first."""
        trusted = self.ws.root / ".gitignore"
        args = ["ls-files", "--others", "-z"] + ([f"--exclude-from={trusted}"] if trusted.is_file() else [])
        info_exclude = self.git_dir / "info" / "exclude"
        if info_exclude.is_file():
            args.append(f"--exclude-from={info_exclude}")
        reasons = []
        for rel in self.repo.git(*args, strip=False).split("\0"):
            if rel.endswith(".gitignore") and Path(rel).name == ".gitignore" and rel not in self.before.untracked \
                    and not self._loop_owned(rel):
                self._remove_with_empty_parents(rel)
                reasons.append(f"{rel} was planted (it hid files from git): removed")
        return reasons

    @staticmethod
    def _loop_owned(rel: str) -> bool:
        return rel.split("/", 1)[0].rstrip("/") in LOOP_FILES

    def _remove_with_empty_parents(self, rel: str) -> None:
        path = self.ws.root / rel.rstrip("/")
        _remove(path)
        parent = path.parent
        while parent != self.ws.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def code_fingerprint() -> dict:
    """sha256 of every file of the installed autoresearch package and of the interpreter's
    start-up hooks (.pth files, sitecustomize): the loop and the evaluator run this code
    outside any sandbox, so a run must not have changed it."""
    import autoresearch

    root = Path(autoresearch.__file__).resolve().parent
    prints = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            prints[str(path.relative_to(root))] = _sha256(path.read_bytes())
    # what every Python process runs at start-up, the loop's helpers included
    for folder in {Path(p) for p in [*site.getsitepackages(), site.getusersitepackages()] if p}:
        for pattern in ("*.pth", "sitecustomize.py", "usercustomize.py"):
            for path in sorted(folder.glob(pattern)):
                if path.is_file():
                    prints[f"{folder}/{path.name}"] = _sha256(path.read_bytes())
    return prints
