"""A pre-warmed launcher: pays torch's import and compiler start-up once per loop, then
forks a fresh process for every experiment.

    python -m autoresearch.harness.zygote        (started by the runner; see warmstart.py)

Importing torch, its compiler stack and the harness takes about 5 s on two cores and
the first compilation another 1-2 s; every experiment used to pay both. This process
pays them once, then waits. For each run it forks a child that looks like
`python train.py` started afresh: its own session and process group, the run's
environment, working folder, argv and sys.path, output to the run's log, reseeded
random modules, and the default thread counts. The child runs only after the fork, so
nothing the agent's code does reaches the next experiment.

Protocol, one JSON object per line: the runner writes {"run": {...}} or
{"signal": {"pid": P, "sig": S}} to stdin; this process answers {"ready": ...},
{"started": P} and {"exited": P, "code": C} on stdout. EOF on stdin stops it and its
children.

Containment: this process and every run it forks are child subreapers, so nothing a run
starts can leave it: when the run's script ends, the run kills what it left behind before
it exits, and an orphan of a run that was killed outright comes back to this process,
which kills it.

Isolation between runs: the launcher is not dumpable, so a run (which has dropped its
capabilities in the sandbox) cannot open its pipes or memory through /proc; every start
request carries a nonce that the answer echoes. In a sandbox shared by every warm run,
the launcher empties what is writable there (/dev/shm, System V IPC objects) before it
forks the next run, so nothing a run leaves reaches the next one.

Fork safety: the warm-up runs with one intra-op thread and no compile workers, so no
OpenMP team or worker pool exists when the children are forked; CUDA is never touched.
"""
from __future__ import annotations

import json
import os
import select
import signal
import sys
import time

PROTOCOL_OUT = 1  # the runner reads our events from stdout
POLL_S = 0.05  # how often exited children are reaped between messages
SHARED_SANDBOX_ENV = "AUTORESEARCH_SHARED_SANDBOX"  # set when this launcher is alone in its sandbox
PR_SET_DUMPABLE = 4
ORPHAN_SWEEP_S = 1.0  # how often orphans of killed runs are looked for
_last_sweep = 0.0


def _send(message: dict) -> None:
    os.write(PROTOCOL_OUT, (json.dumps(message) + "\n").encode())


def warm_up() -> dict:
    """Imports and first-use costs that do not depend on the experiment; returns the
    defaults a child must get back."""
    import torch
    import torch._dynamo  # noqa: F401  (imported by every optimizer and by torch.compile)
    import torch._inductor.config as inductor_config
    import torch.export  # noqa: F401  (submit() exports the model)

    defaults = {"threads": torch.get_num_threads(), "compile_threads": inductor_config.compile_threads}
    torch.set_num_threads(1)  # no OpenMP team before fork: a forked child could not use it
    inductor_config.compile_threads = 1  # no compile worker pool either: its pipes would be shared

    def probe(x):
        return (x * 2.0).relu().sum()

    x = torch.randn(4, 4, requires_grad=True)
    torch.compile(probe)(x).backward()  # loads the compiler's caches and code paths
    torch._dynamo.reset()
    # harness modules a run imports anyway (not the api: it reads the run's session)
    import autoresearch.harness.dataloader  # noqa: F401
    import autoresearch.harness.export  # noqa: F401
    import autoresearch.harness.prepare  # noqa: F401
    return defaults


def _set_parent_death_signal() -> None:
    """The child dies with this process (Linux); without it a killed zygote leaves runs behind."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _redirect_output(log_path: str) -> None:
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def _restore_defaults(defaults: dict) -> None:
    import random

    import torch
    import torch._inductor.config as inductor_config

    torch.set_num_threads(defaults["threads"])
    inductor_config.compile_threads = defaults["compile_threads"]
    random.seed()  # a fresh interpreter seeds from the OS; forked ones would all share a state
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    # as a fresh interpreter has them (SIGPIPE stays ignored, as Python sets it at start-up)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def run_child(spec: dict, defaults: dict) -> None:
    """In the forked child: become `python SCRIPT` in the run's environment; never returns."""
    import atexit
    import runpy
    import traceback

    from autoresearch.contain import become_subreaper, end_all_descendants, forbid_kernel_keyrings

    code = 1
    try:
        os.setsid()
        become_subreaper()
        forbid_kernel_keyrings()
        _set_parent_death_signal()
        _redirect_output(spec["log"])
        os.environ.clear()
        os.environ.update(spec["env"])
        os.chdir(spec["cwd"])
        _restore_defaults(defaults)
        script = os.path.abspath(spec["script"])
        sys.argv = [script, *spec.get("args", [])]
        if sys.flags.safe_path:  # started with -P: the script's folder is not on the path yet
            sys.path.insert(0, os.path.dirname(script))
        else:
            sys.path[0] = os.path.dirname(script)
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:  # what the interpreter does with sys.exit(...)
            if exc.code is None:
                code = 0
            elif isinstance(exc.code, int):
                code = exc.code
            else:
                print(exc.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
    finally:
        try:
            end_all_descendants()  # what the run started does not outlive it
        except Exception:
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code & 0xFF)


def _exit_code(status: int) -> int:
    return os.waitstatus_to_exitcode(status)


def serve(defaults: dict) -> int:
    children: set[int] = set()
    pending = b""
    stdin_open = True
    while stdin_open or children:
        if stdin_open:
            readable, _, _ = select.select([0], [], [], POLL_S)
        else:
            time.sleep(POLL_S)
            readable = []
        if readable:
            chunk = os.read(0, 65536)
            if not chunk:
                stdin_open = False
                for pid in children:  # the runner is gone: so are its runs
                    _signal_group(pid, signal.SIGKILL)
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                _handle(json.loads(line), children, defaults)
        _reap(children)
    return 0


def _handle(message: dict, children: set, defaults: dict) -> None:
    if "run" in message:
        if not children and os.environ.get(SHARED_SANDBOX_ENV) == "1":
            _empty_shared_state()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            run_child(message["run"], defaults)
        children.add(pid)
        _send({"started": pid, "nonce": message.get("nonce")})
    elif "signal" in message:
        target = int(message["signal"]["pid"])
        if target in children:
            _signal_group(target, int(message["signal"]["sig"]))


def _signal_group(pid: int, sig: int, *, reaped: bool = False) -> None:
    """The run's whole group; the run itself also, when it has not made its group yet
    (never once reaped: its pid may belong to another process by then)."""
    for send in (os.killpg,) if reaped else (os.killpg, os.kill):
        try:
            send(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _reap(children: set) -> None:
    from autoresearch.contain import end_all_descendants

    for pid in list(children):
        try:
            done, status, usage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            children.discard(pid)
            continue
        if done:
            children.discard(pid)
            _signal_group(pid, signal.SIGKILL, reaped=True)  # workers the run left behind
            _send({"exited": pid, "code": _exit_code(status),
                   "cpu": round(usage.ru_utime + usage.ru_stime, 3)})
    # anything else that is our child is an orphan of a run killed outright: it goes too
    global _last_sweep
    if time.monotonic() - _last_sweep > ORPHAN_SWEEP_S:
        _last_sweep = time.monotonic()
        end_all_descendants(keep=frozenset(children), timeout=1.0)


def _empty_shared_state() -> None:
    """What a run could leave in the launcher's sandbox for the next one: files in /dev/shm and
    System V shared memory, semaphores and message queues (this sandbox's IPC namespace)."""
    import ctypes
    import shutil

    for entry in os.scandir("/dev/shm"):
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)
        except OSError:
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    IPC_RMID = 0
    for kind, remove in (("shm", lambda i: libc.shmctl(i, IPC_RMID, None)),
                         ("sem", lambda i: libc.semctl(i, 0, IPC_RMID)),
                         ("msg", lambda i: libc.msgctl(i, IPC_RMID, None))):
        try:
            lines = open(f"/proc/sysvipc/{kind}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 1:
                remove(int(fields[1]))  # the id is the second column


def _make_undumpable() -> None:
    """Other processes of this user without CAP_SYS_PTRACE (a sandboxed run) cannot open this
    process's pipes or memory through /proc; forked runs inherit it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _python_threads() -> int:
    """Python threads alive: fork copies only the calling one, so this must be 1. (Native
    threads exist: numpy's OpenBLAS pool, which rebuilds itself in a forked child.)"""
    import threading

    return threading.active_count()


def main() -> int:
    from autoresearch.contain import become_subreaper

    _set_parent_death_signal()
    become_subreaper()
    _make_undumpable()
    started = time.monotonic()
    try:
        defaults = warm_up()
    except Exception as exc:  # the runner falls back to cold starts
        _send({"failed": f"{type(exc).__name__}: {exc}"})
        return 1
    _send({"ready": True, "warm_up_seconds": round(time.monotonic() - started, 3),
           "warm_up_cpu": round(time.process_time(), 3), "pid": os.getpid(),
           "threads": _python_threads()})
    return serve(defaults)


if __name__ == "__main__":
    sys.exit(main())
