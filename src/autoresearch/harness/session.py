"""What a training run knows about where it runs: workspace, run folder, seed, profile.

The runner passes these through environment variables and never tells a run where the
workspace is: a run gets the frozen settings as data (AUTORESEARCH_SETTINGS), a private
scratch folder to write into, and a pipe for the harness's heartbeats. `python train.py`
alone finds the workspace from the current folder and writes to a fresh run folder.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from autoresearch.config import CONFIG_NAME, Settings, dump_settings, load_settings, settings_from_toml
from autoresearch.harness.profiles import Profile

ENV_WORKSPACE = "AUTORESEARCH_WORKSPACE"
ENV_RUN_DIR = "AUTORESEARCH_RUN_DIR"
ENV_SEED = "AUTORESEARCH_SEED"
ENV_MANAGED = "AUTORESEARCH_MANAGED"  # set by the runner: it evaluates, not submit()
ENV_SETTINGS = "AUTORESEARCH_SETTINGS"  # the frozen settings as TOML text, from the runner's own copy
ENV_EVENTS = "AUTORESEARCH_EVENTS"  # a FIFO: the runner stamps each heartbeat with its own clock
DEFAULT_SEED = 42

SUBMISSION_FILE = "submission.json"  # written by submit(): export path, checksum, counters
MODEL_FILE = "model.pt2"  # the exported program
EVAL_FILE = "eval.json"  # written only by the evaluator process
TELEMETRY_FILE = "telemetry.jsonl"  # log(...) lines
LOG_FILE = "run.log"
ABORTED_FILE = "aborted.txt"  # why a run stopped itself early
INPROCESS_EVAL_FILE = "inprocess_eval.json"  # export failed: the lower-trust result
ABORT_EXIT_CODE = 3  # the runner records this exit as `aborted`


@dataclass(frozen=True)
class Session:
    workspace: Path | None  # None for a managed run: it is not told where the workspace is
    run_dir: Path
    seed: int
    managed: bool
    settings: Settings

    @property
    def profile(self) -> Profile:
        return self.settings.profile()


def find_workspace(start: Path | None = None) -> Path:
    env = os.environ.get(ENV_WORKSPACE)
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_NAME).exists():
            return folder
    raise FileNotFoundError(
        f"no {CONFIG_NAME} in {here} or above: run train.py inside a workspace made by "
        "`autoresearch init DIR`, or set AUTORESEARCH_WORKSPACE"
    )


def current_session() -> Session:
    given = os.environ.get(ENV_SETTINGS)
    if given:
        workspace, settings = None, settings_from_toml(given)
    else:
        workspace = find_workspace()
        settings = load_settings(workspace)
    run_dir_env = os.environ.get(ENV_RUN_DIR)
    if run_dir_env:
        run_dir = Path(run_dir_env)
    elif workspace is not None:
        run_dir = workspace / ".autoresearch" / "runs" / time.strftime("manual-%Y%m%d-%H%M%S")
    else:
        raise RuntimeError(f"{ENV_SETTINGS} is set but {ENV_RUN_DIR} is not: the runner sets both")
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = int(os.environ.get(ENV_SEED, DEFAULT_SEED))
    managed = os.environ.get(ENV_MANAGED) == "1"
    return Session(workspace, run_dir.resolve(), seed, managed, settings)


def settings_env(settings: Settings) -> str:
    """The value of ENV_SETTINGS for a run."""
    return dump_settings(settings)
