"""Confines a process: no network, nothing of the machine but what it needs, little writable.

train.py is code an agent wrote, and the exported program it submits is run by the
evaluator. Wrapped by `wrap_command`, either runs in fresh network, mount and PID
namespaces whose filesystem is built from an allow-list, not from the host's root: the
system's programs and libraries (/usr, /etc, ...), the interpreter and its packages, the
harness's own code, and the files named `readable`, all read-only; the `writable`
folders; a private /tmp, /dev and /proc. Home folders, other caches (pip's, other data
roots), the workspace and every other run's folder are simply not there. `hidden_paths`
are covered even inside allowed trees (a package that ships the validation text).
Capabilities are dropped so the process cannot undo the mounts. The wrapper stays in the
caller's process group, and the PID namespace ends every process inside when its first
process ends.

Bubblewrap (`bwrap`) is preferred; util-linux `unshare` + `setpriv` + `chroot` is the fallback.
"""
from __future__ import annotations

import functools
import glob
import os
import shlex
import shutil
import site
import subprocess
import sys
from pathlib import Path

BWRAP = "bwrap"
UNSHARE = "unshare"
MECHANISMS = (BWRAP, UNSHARE)
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install bubblewrap)"
# GPU device nodes: a fresh /dev lacks them, so they are bound in when present.
GPU_DEVICE_GLOBS = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri", "/dev/kfd")
# The system's programs, libraries and configuration: needed to run anything, hold no data of ours.
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/sys")
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
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
                 readable: list[Path] = (), mechanism: str | None = None, shared: bool = False) -> list[str]:
    """`cmd` prefixed so that it runs confined; raises SandboxUnavailable if it cannot be.

    `shared`: one sandbox for many runs (the warm launcher): then /tmp is read-only too, and
    only /dev/shm is writable besides `writable`, which the launcher empties between runs."""
    name = _choose(mechanism)
    rw = _existing(writable)
    links, system = _system_paths()
    ro = [p for p in _existing([*system, *python_paths(), *readable]) if p not in rw]
    # a cover is needed only where an allowed tree would show the path; elsewhere it is absent anyway
    hidden = [h for h in _outermost(_existing(hidden_paths)) if any(h == p or p in h.parents for p in [*ro, *rw])]
    build = _bwrap_command if name == BWRAP else _unshare_command
    return build(list(cmd), _outermost(ro), rw, hidden, links, shared)


def _system_paths() -> tuple[list[tuple[str, Path]], list[Path]]:
    """(symlinks to recreate, folders to bind): on a merged-/usr system /bin, /lib64, ... are
    links into /usr, and programs name their loader by the link's path."""
    links, folders = [], []
    for name in SYSTEM_PATHS:
        path = Path(name)
        if path.is_symlink():
            links.append((os.readlink(path), path))
        elif path.exists():
            folders.append(path)
    return links, folders


def python_paths() -> list[Path]:
    """What the interpreter needs to run the harness: its prefixes, its packages, our code.
    (The current folder, '' on sys.path, is left out: it may be a workspace.)"""
    import autoresearch

    paths = [Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).parent,
             Path(autoresearch.__file__).resolve().parent]
    paths += [Path(p) for p in site.getsitepackages() if p]
    paths += [Path(p) for p in sys.path if p and Path(p).is_absolute() and Path(p).is_dir()
              and Path(p).resolve() != Path.cwd().resolve()]
    return paths


def prepared_paths(source: str, vocab_size: int, *, include_validation: bool) -> list[Path]:
    """The prepared files of `source` a confined process may read: the tokenizer and the
    training split (and the validation split for the evaluator), one by one, so that
    nothing else of the data cache is there."""
    from autoresearch.harness import prepare

    folder = prepare.prepared_dir(source, vocab_size)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and (include_validation or not p.name.startswith("val")))


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


def _gpu_devices() -> list[str]:
    return sorted({p for pattern in GPU_DEVICE_GLOBS for p in glob.glob(pattern)})


def _bwrap_command(cmd: list[str], ro: list[Path], rw: list[Path], hidden: list[Path], links=(),
                   shared: bool = False) -> list[str]:
    # No --new-session: it would move the command out of the runner's process group.
    args = [shutil.which(BWRAP) or BWRAP, "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--die-with-parent",
            "--cap-drop", "ALL",  # as root bwrap keeps capabilities, enough to unmount the covers
            "--dev", "/dev",  # fresh: the host's block devices would expose the raw disk
            "--proc", "/proc",  # fresh: the host's /proc/<pid>/root leads around the covers
            "--tmpfs", "/dev/shm", "--tmpfs", "/tmp"]
    for target, path in links:
        args += ["--symlink", target, str(path)]
    for path in ro:
        args += ["--ro-bind", str(path), str(path)]
    for dev in _gpu_devices():
        args += ["--dev-bind", dev, dev]
    for path in rw:
        args += ["--bind", str(path), str(path)]
    for path in ro:  # read-only wins where an allowed tree lies inside a writable one (a venv in /tmp)
        if any(path != w and w in path.parents for w in rw):
            args += ["--ro-bind", str(path), str(path)]
    for path in hidden:  # last, so that a cover wins over everything above it
        args += ["--tmpfs", str(path)] if path.is_dir() else ["--ro-bind", "/dev/null", str(path)]
    # bwrap's own root and /dev are writable tmpfs: nothing may be left there for a later run
    args += ["--remount-ro", "/dev", "--remount-ro", "/"]
    if shared:
        args += ["--remount-ro", "/tmp"]
    return [*args, "--", *cmd]


def _unshare_command(cmd: list[str], ro: list[Path], rw: list[Path], hidden: list[Path], links=(),
                     shared: bool = False) -> list[str]:
    """The same root, built by hand: a tmpfs with the allowed paths bound in, then chroot."""
    q = shlex.quote
    lines = ["set -e", "ip link set lo up 2>/dev/null || true",  # loopback is a convenience, not a need
             'R=$(mktemp -d "${TMPDIR:-/tmp}/.autoresearch-root.XXXXXX")', 'mount -t tmpfs -o mode=0755 none "$R"']

    def bind(path: Path, read_only: bool) -> None:
        target = f'"$R"{q(str(path))}'
        make = f"mkdir -p {target}" if path.is_dir() else f"mkdir -p \"$(dirname {target})\" && touch {target}"
        lines.append(f"{make} && mount --rbind {q(str(path))} {target}")
        if read_only:
            lines.append(f"mount -o remount,bind,ro {target}")

    lines += ['mkdir -p "$R/tmp" "$R/proc" "$R/dev/shm"', 'mount -t tmpfs -o mode=1777 none "$R/tmp"',
              'mount -t tmpfs -o mode=1777 none "$R/dev/shm"', 'mount -t proc proc "$R/proc"']
    for dev in DEVICES:
        lines.append(f'touch "$R/dev/{dev}" && mount --bind /dev/{dev} "$R/dev/{dev}"')
    for dev in _gpu_devices():
        make = "mkdir -p" if os.path.isdir(dev) else "touch"
        lines.append(f'{make} "$R"{q(dev)} && mount --rbind {q(dev)} "$R"{q(dev)}')
    for target, path in links:
        lines.append(f'ln -s {q(target)} "$R"{q(str(path))}')
    for path in ro:
        bind(path, True)
    for path in rw:
        bind(path, False)
    for path in ro:
        if any(path != w and w in path.parents for w in rw):
            lines.append(f'mount --bind {q(str(path))} "$R"{q(str(path))} && mount -o remount,bind,ro "$R"{q(str(path))}')
    for path in hidden:
        target = f'"$R"{q(str(path))}'
        lines.append(f"mount -t tmpfs -o ro,size=4k,mode=0555 none {target}" if path.is_dir()
                     else f"mount --bind /dev/null {target}")
    lines.append('mount -o remount,ro,bind "$R" 2>/dev/null || mount -o remount,ro "$R"')  # the root itself
    if shared:
        lines.append('mount -o remount,ro "$R/tmp"')
    # Dropping every capability (bounding set included) keeps uid 0 from unmounting the covers.
    # No exec: the shell stays PID 1 of the namespace, which ignores SIGTERM, so the
    # command must be its child to die from the runner's SIGTERM (unshare blocks it too).
    lines += ["set +e", 'HERE=$(pwd)',
              'chroot "$R" setpriv --no-new-privs --inh-caps=-all --ambient-caps=-all --bounding-set=-all '
              '-- sh -c \'cd "$0" 2>/dev/null || cd /; exec "$@"\' "$HERE" "$@"',
              "exit $?"]
    prefix = [shutil.which(UNSHARE) or UNSHARE, "--net", "--mount", "--pid", "--ipc", "--uts", "--fork",
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
    tools = [BWRAP] if name == BWRAP else [UNSHARE, "setpriv", "mount", "chroot"]
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    build = _bwrap_command if name == BWRAP else _unshare_command
    try:
        links, system = _system_paths()
        done = subprocess.run(build(["true"], system, [], [], links, True), capture_output=True, text=True,
                              timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return None
