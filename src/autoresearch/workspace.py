"""A research workspace: its files, its frozen settings, its git history and its scope."""
from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from autoresearch.config import CONFIG_NAME, ExperimentSettings, Settings, save_settings, settings_from_toml
from autoresearch.gitrepo import GitRepo
from autoresearch.harness.profiles import get_profile

STATE_DIR = ".autoresearch"
RESULTS_FILE = "results.tsv"
LOOP_FILES = (STATE_DIR, RESULTS_FILE, "report.md", "progress.png")  # written by the loop itself, never cleaned
GITIGNORE = """\
# results and run files stay out of the history: the ledger is append-only on disk
results.tsv
run.log
.autoresearch/
__pycache__/
report.md
progress.png
"""
EXPERIMENT_REF = "refs/autoresearch/exp/{id}"
TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class WorkspaceError(ValueError):
    pass


def _template_text(name: str) -> str:
    return importlib.resources.files("autoresearch.templates").joinpath("gpt", name).read_text()


def render_train_py(profile_name: str) -> str:
    """The template with the profile's initial constants filled in."""
    from autoresearch.constants import set_constants

    profile = get_profile(profile_name)
    return set_constants(_template_text("train.py"), dict(profile.template_constants))


def resolve_data(data: str) -> str:
    if data in ("builtin", "climbmix"):
        return data
    path = Path(data).expanduser()
    if not path.exists():
        raise WorkspaceError(f"--data {data!r}: no such file or folder; use builtin, climbmix or a path "
                             "to your .txt, .jsonl or .parquet files")
    return str(path.resolve())


def init_workspace(directory: Path, *, profile: str = "auto", data: str | None = None,
                   budget: float | None = None, tag: str | None = None, prepare_data: bool = True) -> Path:
    """Creates DIR as a git repo holding train.py, program.md, autoresearch.toml, .gitignore."""
    directory = Path(directory).expanduser().resolve()
    if directory.exists() and any(directory.iterdir()):
        raise WorkspaceError(f"{directory} exists and is not empty: choose a new folder for the workspace")
    chosen = get_profile(profile)
    if budget is not None and budget <= 0:
        raise WorkspaceError(f"--budget must be a positive number of seconds, got {budget}")
    tag = tag or "run"
    if not TAG_PATTERN.match(tag):
        raise WorkspaceError(f"--tag {tag!r}: use letters, digits, '.', '_' or '-' (a git branch name part)")
    data = resolve_data(data or chosen.default_data)
    if prepare_data:
        from autoresearch.harness.prepare import prepare

        prepare(data, chosen.vocab_size)
    settings = Settings(experiment=ExperimentSettings(
        profile=chosen.name, data=data, time_budget=float(budget or chosen.time_budget), tag=tag))
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "train.py").write_text(render_train_py(chosen.name))
    (directory / "program.md").write_text(_template_text("program.md"))
    (directory / ".gitignore").write_text(GITIGNORE)
    save_settings(directory, settings)
    repo = GitRepo.init(directory)
    repo.check_identity()
    repo.commit_paths(["train.py", "program.md", ".gitignore", CONFIG_NAME], "baseline: workspace created")
    return directory


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    """Replaces `path` (even a symlink planted in its place) with a regular file holding `data`."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Workspace:
    root: Path
    settings: Settings
    settings_sha256: str = ""  # sha256 of the exact bytes the settings were parsed from
    settings_source: str = ""  # "HEAD:autoresearch.toml", or the worktree file when no commit holds it
    notes: list = field(default_factory=list)  # what open() found wrong and repaired, for the user

    @classmethod
    def open(cls, root: Path | None = None) -> "Workspace":
        """Reads the frozen settings from the committed copy, restoring a worktree copy that differs."""
        root = Path(root or os.getcwd()).expanduser().resolve()
        repo = GitRepo(root)
        frozen = repo.show_bytes("HEAD", CONFIG_NAME) if repo.is_repo() else None
        if frozen is None:
            return cls._open_uncommitted(root)
        source = f"HEAD:{CONFIG_NAME}"
        settings = settings_from_toml(frozen.decode("utf-8"), source=f"{root / CONFIG_NAME} (committed at HEAD)")
        ws = cls(root, settings, _sha256(frozen), source)
        ws.notes = ws.restore_settings()
        return ws

    @classmethod
    def _open_uncommitted(cls, root: Path) -> "Workspace":
        path = root / CONFIG_NAME
        if not path.is_file():
            from autoresearch.config import load_settings

            load_settings(root)  # raises the error that says how to create a workspace
        data = path.read_bytes()
        ws = cls(root, settings_from_toml(data.decode("utf-8"), source=str(path)), _sha256(data), str(path))
        ws.notes = [f"{CONFIG_NAME} is not committed, so the settings were read from the file, which a run "
                    f"could change: commit it (git add {CONFIG_NAME} && git commit)"]
        return ws

    def frozen_settings_bytes(self) -> bytes | None:
        """The committed autoresearch.toml at HEAD, or None when no commit holds it."""
        return self.repo.show_bytes("HEAD", CONFIG_NAME)

    def restore_settings(self) -> list[str]:
        """Makes the worktree and index copies of autoresearch.toml equal the committed one.

        Returns one line per repair: a flag that hid edits from git, an edited worktree file,
        a staged copy that the next commit would have taken.
        """
        frozen = self.frozen_settings_bytes()
        if frozen is None:
            return []
        repo, notes = self.repo, []
        if CONFIG_NAME in repo.hidden_paths():
            repo.unhide([CONFIG_NAME])
            notes.append(f"{CONFIG_NAME} was hidden from git (skip-worktree/assume-unchanged): flag cleared")
        if repo.git("rev-parse", f":{CONFIG_NAME}", check=False) != repo.git("rev-parse", f"HEAD:{CONFIG_NAME}"):
            repo.git("reset", "-q", "HEAD", "--", CONFIG_NAME)
            notes.append(f"{CONFIG_NAME} had a staged change: unstaged")
        path = self.root / CONFIG_NAME
        current = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        if current != frozen:
            _write_atomically(path, frozen)
            seen = "missing or not a regular file" if current is None else f"sha256 {_sha256(current)[:12]}"
            notes.append(f"{CONFIG_NAME} differed from the committed copy ({seen}, committed "
                         f"{_sha256(frozen)[:12]}): restored from HEAD")
        return notes

    @property
    def repo(self) -> GitRepo:
        return GitRepo(self.root)

    @property
    def state_dir(self) -> Path:
        path = self.root / STATE_DIR
        path.mkdir(exist_ok=True)
        return path

    @property
    def branch(self) -> str:
        return f"autoresearch/{self.settings.experiment.tag}"

    def run_dir(self, experiment_id: int) -> Path:
        return self.state_dir / "runs" / f"{experiment_id:04d}"

    def editable(self) -> list[str]:
        return list(self.settings.experiment.editable)

    def read_editable(self) -> dict:
        return {name: (self.root / name).read_text() for name in self.editable()}

    def out_of_scope(self, paths) -> list[str]:
        """Paths an experiment may not change: everything but the editable files."""
        allowed = set(self.editable())
        return sorted(p for p in paths if p not in allowed)
