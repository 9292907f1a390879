"""Confines a training process: no network, validation files unreadable, little writable.

train.py is code an agent wrote. Wrapped by `wrap_command`, it runs in fresh network,
mount and PID namespaces: only loopback exists, every hidden path reads as nothing, the
filesystem is read-only except the writable folders, /tmp and a private /dev/shm, and
capabilities are dropped so the process cannot undo the mounts. The wrapper stays in
the caller's process group, so os.killpg on the wrapper's pid stops everything inside.

Bubblewrap (`bwrap`) is preferred; util-linux `unshare` + `setpriv` is the fallback.
"""
from __future__ import annotations

import functools
import glob
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

BWRAP = "bwrap"
UNSHARE = "unshare"
MECHANISMS = (BWRAP, UNSHARE)
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
# GPU device nodes: a fresh /dev lacks them, so they are bound in when present.
GPU_DEVICE_GLOBS = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri", "/dev/kfd")
# Compiler caches that live in the home folder: Triton fails when it cannot write its own.
HOME_CACHES = (".triton", ".nv")
PROBE_TIMEOUT_S = 20


class SandboxUnavailable(RuntimeError):
    """No working sandbox here; the message says what to install."""


def sandbox_available(mechanism: str | None = None) -> tuple[bool, str]:
    """(True, mechanism name) when a sandbox works here, else (False, why not)."""
    try:
        return True, _choose(mechanism)
    except SandboxUnavailable as exc:
        return False, str(exc)


def wrap_command(cmd: list[str], *, hidden_paths: list[Path], writable: list[Path],
                 mechanism: str | None = None) -> list[str]:
    """`cmd` prefixed so that it runs confined; raises SandboxUnavailable if it cannot be."""
    name = _choose(mechanism)
    hidden = _outermost(_existing(hidden_paths))
    rw = _existing([Path("/tmp"), *writable, *_home_caches()])
    build = _bwrap_command if name == BWRAP else _unshare_command
    return build(list(cmd), hidden, rw, _protected(rw))


def _protected(rw: list[Path]) -> list[Path]:
    """The interpreter and the harness's own code stay read-only even where they lie inside a
    writable folder (a virtual environment under /tmp): the evaluator runs that code next.
    A folder that holds a writable one is left as it is, or the writable one would vanish."""
    import autoresearch

    code = Path(autoresearch.__file__).resolve().parent
    candidates = _existing([Path(sys.prefix), Path(sys.base_prefix), code])
    resolved_rw = [p.resolve() for p in rw]
    return [p for p in candidates if not any(w == p.resolve() or p.resolve() in w.parents for w in resolved_rw)]


def validation_paths(source: str, vocab_size: int) -> list[Path]:
    """Everything from which the validation text of `source` could be read.

    That is the val token files at every vocabulary (another vocabulary's files hold the
    same text), the climbmix val shard, and the raw text of the builtin and file sources:
    train.py needs none of these, only the train split and the tokenizer.
    """
    from autoresearch.harness import prepare, sources

    src = sources.parse_source(source)
    root = prepare.dataset_dir(source)
    paths = [prepare.prepared_dir(source, vocab_size) / f"val{suffix}" for suffix in (".tokens", ".offsets.npy")]
    paths += sorted(root.glob("*/val.*"))  # other vocabularies and unfinished prepares
    if src.kind == sources.CLIMBMIX:
        paths.append(root / "raw" / sources.climbmix_shard_name(sources.CLIMBMIX_VAL_SHARD))
    elif src.kind == sources.BUILTIN:
        try:
            paths.append(sources.builtin_data_file())
        except sources.DataError:
            pass  # not installed, so there is nothing to hide
    elif src.path is not None:
        paths.append(src.path)
    return _existing(paths)


def _existing(paths) -> list[Path]:
    """Resolved, de-duplicated paths that exist: a mount needs a real target."""
    out: list[Path] = []
    for p in paths:
        p = Path(p).resolve()
        if p.exists() and p not in out:
            out.append(p)
    return out


def _outermost(paths: list[Path]) -> list[Path]:
    """Drops paths inside another hidden folder: it is covered already, and is gone beneath the cover."""
    return [p for p in paths if not any(o != p and o.is_dir() and p.is_relative_to(o) for o in paths)]


def _home_caches() -> list[Path]:
    caches = []
    for name in HOME_CACHES:
        path = Path.home() / name
        try:
            path.mkdir(exist_ok=True)
        except OSError:
            continue  # a read-only home: the tool then falls back or fails as it would anyway
        caches.append(path)
    return caches


def _gpu_devices() -> list[str]:
    return sorted({p for pattern in GPU_DEVICE_GLOBS for p in glob.glob(pattern)})


def _block_devices() -> list[Path]:
    found = []
    for entry in Path("/dev").iterdir():
        try:
            if stat.S_ISBLK(entry.lstat().st_mode):
                found.append(entry)
        except OSError:
            continue
    return sorted(found)


def _bwrap_command(cmd: list[str], hidden: list[Path], rw: list[Path], protected: list[Path]) -> list[str]:
    # No --new-session: it would move the command out of the runner's process group.
    args = [shutil.which(BWRAP) or BWRAP, "--unshare-net", "--unshare-pid", "--die-with-parent",
            "--cap-drop", "ALL",  # as root bwrap keeps capabilities, enough to unmount the covers
            "--ro-bind", "/", "/",
            "--dev", "/dev",  # fresh: the host's block devices would expose the raw disk
            "--proc", "/proc"]  # fresh: the host's /proc/<pid>/root leads around the covers
    for dev in _gpu_devices():
        args += ["--dev-bind", dev, dev]
    for path in rw:
        args += ["--bind", str(path), str(path)]
    for path in protected:  # after the writable binds, so read-only wins inside them
        args += ["--ro-bind", str(path), str(path)]
    for path in hidden:  # last, so that a cover wins over a writable bind above it
        args += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    return [*args, "--", *cmd]


def _unshare_command(cmd: list[str], hidden: list[Path], rw: list[Path], protected: list[Path]) -> list[str]:
    q = shlex.quote
    lines = ["set -e", "ip link set lo up 2>/dev/null || true"]  # loopback is a convenience, not a need
    lines += [f"mount --bind {q(str(p))} {q(str(p))}" for p in rw]
    lines.append("mount -o remount,bind,ro / 2>/dev/null || true")  # only the root mount: best effort
    lines += [f"mount --bind {q(str(p))} {q(str(p))} && mount -o remount,bind,ro {q(str(p))}" for p in protected]
    for path in [*hidden, *_block_devices()]:  # the host's /dev stays: its disks would expose raw data
        lines.append(f"mount -t tmpfs -o ro,size=4k,mode=0555 none {q(str(path))}" if path.is_dir()
                     else f"mount --bind /dev/null {q(str(path))}")
    # Dropping every capability (bounding set included) keeps uid 0 from unmounting the covers.
    # No exec: the shell stays PID 1 of the namespace, which ignores SIGTERM, so the
    # command must be its child to die from the runner's SIGTERM (unshare blocks it too).
    lines += ["set +e", 'setpriv --no-new-privs --inh-caps=-all --ambient-caps=-all --bounding-set=-all -- "$@"',
              "exit $?"]
    prefix = [shutil.which(UNSHARE) or UNSHARE, "--net", "--mount", "--pid", "--fork", "--mount-proc",
              "--kill-child", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix.append("--map-root-user")  # mounts need privilege inside the new namespaces
    return [*prefix, "--", "sh", "-c", "\n".join(lines), "sandbox", *cmd]


@functools.lru_cache(maxsize=None)
def _choose(mechanism: str | None) -> str:
    """The first mechanism that really confines a trivial command here (probed once)."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"--sandbox needs Linux (this is {sys.platform})")
    if mechanism is not None and mechanism not in MECHANISMS:
        raise SandboxUnavailable(f"unknown sandbox mechanism {mechanism!r}; valid: {', '.join(MECHANISMS)}")
    reasons = []
    for name in [mechanism] if mechanism else MECHANISMS:
        problem = _probe(name)
        if problem is None:
            return name
        reasons.append(f"{name}: {problem}")
    raise SandboxUnavailable(f"--sandbox found no working sandbox ({'; '.join(reasons)}); {INSTALL_HINT}")


def _probe(name: str) -> str | None:
    tools = [BWRAP] if name == BWRAP else [UNSHARE, "setpriv", "mount"]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    build = _bwrap_command if name == BWRAP else _unshare_command
    try:
        done = subprocess.run(build(["true"], [], [Path("/tmp")], []), capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return None
