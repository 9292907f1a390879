"""Every process of a run ends with it, with or without a sandbox (Linux).

A process that declares itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER) inherits
every orphan among its descendants, whatever they do: a double fork, setsid and a new
process group do not take a process out of its subreaper's tree. So the runner starts
each cold run as

    python -m autoresearch.contain -- python train.py

which runs the command, and when it ends kills whatever it left behind and waits until
nothing is left. No privilege is needed (root and normal users alike); a sandbox with a
PID namespace gives the same guarantee by other means. A warm start's run is forked by the
launcher, which makes the run itself a subreaper and cleans up after it the same way,
and is a subreaper too, for what a killed run leaves.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 22, 2
# The kernel's key store outlives every process and is shared by all processes of a user,
# sandboxed or not: a run could leave trained weights there for the next one. Its system
# calls (add_key, request_key, keyctl) are refused to runs, per architecture.
KEYRING_SYSCALLS = {"x86_64": (0xC000003E, (248, 249, 250)), "aarch64": (0xC00000B7, (217, 218, 219))}
SETTLE_S = 0.02
POLL_S = 0.02
STOP_GRACE_S = 2.0  # after SIGTERM the command gets this long before SIGKILL


def become_subreaper() -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def forbid_kernel_keyrings() -> bool:
    """Installs a seccomp filter on this process (inherited by all it starts, and never lifted)
    that fails the key store's system calls with EPERM. False where it cannot (not Linux, an
    unknown architecture): the threat model says so."""
    import platform
    import struct

    arch = KEYRING_SYSCALLS.get(platform.machine())
    if arch is None or not sys.platform.startswith("linux"):
        return False
    audit_arch, numbers = arch
    ld_w_abs, jeq_k, ret_k = 0x20, 0x15, 0x06
    allow, deny = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    program = [(ld_w_abs, 0, 0, 4), (jeq_k, 1, 0, audit_arch), (ret_k, 0, 0, allow), (ld_w_abs, 0, 0, 0)]
    for i, number in enumerate(numbers):  # a match jumps to the deny at the end
        program.append((jeq_k, len(numbers) - i, 0, number))
    program += [(ret_k, 0, 0, allow), (ret_k, 0, 0, deny)]
    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buffer = ctypes.create_string_buffer(raw)

    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = Program(len(program), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) == 0


def _children() -> list[int]:
    from autoresearch.proctree import process_table

    me = os.getpid()
    return [pid for pid, (parent, _) in process_table().items() if parent == me]


def end_all_descendants(keep: frozenset = frozenset(), timeout: float = 30.0) -> int:
    """SIGKILLs and reaps every child but `keep` until none is left (orphans keep arriving
    while their parents die); returns how many were killed. `keep` is never reaped here."""
    killed = 0
    deadline = time.monotonic() + timeout
    while True:
        targets = [pid for pid in _children() if pid not in keep]
        if not targets or time.monotonic() > deadline:
            return killed
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        time.sleep(SETTLE_S)
        for pid in targets:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "--" or len(argv) < 2:
        print("usage: python -m autoresearch.contain -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    if not become_subreaper():
        print("autoresearch.contain: cannot become a child subreaper (Linux 3.4+ needed)", file=sys.stderr)
        return 2
    set_parent_death_signal(signal.SIGTERM)  # a killed loop: the run is stopped, not left running
    stopping: list[float] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(time.monotonic()))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(time.monotonic()))
    command = argv[1:]
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            forbid_kernel_keyrings()
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    code = _wait_command(pid, stopping)
    end_all_descendants()
    return code if code >= 0 else 128 - code


def _wait_command(pid: int, stopping: list) -> int:
    """Waits for the command; once asked to stop, passes SIGTERM on, then SIGKILL after a grace."""
    told = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return os.waitstatus_to_exitcode(status)
        if stopping and not told:
            _signal(pid, signal.SIGTERM)
            told = True
        if stopping and time.monotonic() - stopping[0] > STOP_GRACE_S:
            _signal(pid, signal.SIGKILL)
        time.sleep(POLL_S)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def set_parent_death_signal(sig: int) -> None:
    """This process gets `sig` when its parent dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
