"""A run's private scratch folder, outside the workspace, and the collection of its outputs.

A run is untrusted code. It gets a fresh folder of its own, made for it and removed
after it: `work/` holds copies of the editable files (its working folder), `out/` is
where the harness writes the submission, the exported model and telemetry, `home/`,
`tmp/` and `cache/` stand in for the home folder, the temporary folder and the compiler
caches. The workspace, its .git and other runs' folders are never named to it.

After every process of the run has ended, the runner collects the few outputs it reads
(`collect_outputs`): each opened without following links, only a regular file, each with
a size cap. Anything else the run wrote is ignored and deleted with the folder.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from autoresearch.harness import session as S

SCRATCH_ROOT_ENV = "AUTORESEARCH_SCRATCH"  # where scratch folders are made (default: the temp folder)
PREFIX = "autoresearch-run-"
EVENTS_FIFO = "events"
# what the runner takes back from a run, with the most it reads of each
OUTPUT_CAPS = {
    S.SUBMISSION_FILE: 1 << 20,
    S.MODEL_FILE: 16 << 30,
    S.TELEMETRY_FILE: 64 << 20,
    S.ABORTED_FILE: 16 << 10,
    S.INPROCESS_EVAL_FILE: 1 << 20,
}
LOG_CAP = 64 << 20  # a log is copied from its end: the last 64 MiB


class OutputRefused(Exception):
    """An output was a link, not a regular file, or too big."""


def scratch_root() -> Path:
    root = Path(os.environ.get(SCRATCH_ROOT_ENV) or tempfile.gettempdir()) / "autoresearch-scratch"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root.resolve()


@dataclass
class Scratch:
    root: Path
    out_fd: int = -1  # held from creation: a run that swaps out/ for a link cannot redirect collection

    @property
    def work(self) -> Path:
        return self.root / "work"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def events(self) -> Path:
        return self.root / EVENTS_FIFO

    @classmethod
    def create(cls, files: dict[str, bytes], *, label: str = "", parent: Path | None = None) -> "Scratch":
        """A fresh folder holding copies of `files` (relative name -> content) in work/."""
        root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{label}-" if label else PREFIX,
                                     dir=parent or scratch_root()))
        scratch = cls(root)
        for folder in (scratch.work, scratch.out, scratch.home, scratch.tmp, scratch.cache):
            folder.mkdir(mode=0o700)
        for name, content in files.items():
            path = scratch.work / name
            if path.resolve().parent != scratch.work.resolve() and scratch.work.resolve() not in path.resolve().parents:
                raise ValueError(f"editable file {name!r} lies outside the run's folder")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        os.mkfifo(scratch.events, 0o600)
        scratch.out_fd = os.open(scratch.out, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        return scratch

    def run_env(self) -> dict:
        """Variables that keep a run's own files inside its scratch folder."""
        cache = str(self.cache)
        return {
            "HOME": str(self.home), "TMPDIR": str(self.tmp),
            "TORCHINDUCTOR_CACHE_DIR": os.path.join(cache, "inductor"),
            "TRITON_CACHE_DIR": os.path.join(cache, "triton"),
            "CUDA_CACHE_PATH": os.path.join(cache, "nv"),
            "XDG_CACHE_HOME": cache, "MPLCONFIGDIR": os.path.join(cache, "matplotlib"),
            "PYTHONPYCACHEPREFIX": os.path.join(cache, "pycache"),
        }

    def remove(self) -> None:
        if self.out_fd >= 0:
            os.close(self.out_fd)
            self.out_fd = -1
        # rmtree unlinks links rather than following them; a run's leftovers cannot redirect it
        shutil.rmtree(self.root, ignore_errors=True)


def loop_folder() -> Path:
    """A folder of one loop's own, for the scratch folders of its runs."""
    return Path(tempfile.mkdtemp(prefix="loop-", dir=scratch_root()))


def sweep(folder: Path) -> None:
    """Empties a loop's folder: what a run left beside its own scratch folder (possible where
    runs are forked inside one sandbox) must not reach the next run."""
    for entry in Path(folder).iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def open_regular(path, cap: int, *, dir_fd: int | None = None) -> int:
    """An fd for `path` if it is a regular file no bigger than `cap`, never through a link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutputRefused("not a regular file")
        if info.st_size > cap:
            raise OutputRefused(f"{info.st_size} bytes, more than the {cap} allowed")
    except BaseException:
        os.close(fd)
        raise
    return fd


def copy_capped(fd: int, dest: Path, cap: int, *, tail: bool = False) -> None:
    """Copies at most `cap` bytes from `fd` into a new file `dest` (the last ones if `tail`)."""
    if tail:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - cap), os.SEEK_SET)
    tmp = dest.with_name(f".{dest.name}.collecting")
    left = cap
    with open(tmp, "wb") as out:
        while left > 0:
            chunk = os.read(fd, min(1 << 20, left))
            if not chunk:
                break
            out.write(chunk)
            left -= len(chunk)
    os.replace(tmp, dest)


def collect_outputs(scratch: Scratch, run_dir: Path) -> list[str]:
    """Copies the run's outputs into `run_dir` (the runner's own folder); returns why any
    present output was refused. Call only once every process of the run has ended."""
    problems = []
    for name, cap in OUTPUT_CAPS.items():
        try:
            fd = open_regular(name, cap, dir_fd=scratch.out_fd)
        except FileNotFoundError:
            continue
        except (OutputRefused, OSError) as error:
            problems.append(f"{name}: {error}")
            continue
        try:
            copy_capped(fd, run_dir / name, cap)
        finally:
            os.close(fd)
    return problems


def collect_log(scratch: Scratch, name: str, dest: Path) -> None:
    """The run's own log (warm starts write it in out/), its last LOG_CAP bytes appended to `dest`."""
    try:
        fd = open_regular(name, 1 << 62, dir_fd=scratch.out_fd)
    except (OSError, OutputRefused):
        return
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - LOG_CAP), os.SEEK_SET)
        with open(dest, "ab") as out:
            while chunk := os.read(fd, 1 << 20):
                out.write(chunk)
    finally:
        os.close(fd)
