"""A research workspace: its files, its frozen settings, its git history and its scope."""
from __future__ import annotations

import importlib.resources
import os
import re
from dataclasses import dataclass
from pathlib import Path

from autoresearch.config import CONFIG_NAME, ExperimentSettings, Settings, load_settings, save_settings
from autoresearch.gitrepo import GitRepo
from autoresearch.harness.profiles import get_profile

STATE_DIR = ".autoresearch"
RESULTS_FILE = "results.tsv"
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


@dataclass
class Workspace:
    root: Path
    settings: Settings

    @classmethod
    def open(cls, root: Path | None = None) -> "Workspace":
        root = Path(root or os.getcwd()).expanduser().resolve()
        return cls(root, load_settings(root))

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
