"""Containment: whatever a command starts ends with it, for real processes."""
import os
import subprocess
import sys
import time

import pytest

from autoresearch.proctree import descendants, tree_cpu_seconds

DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1], 'w').write(str(os.getpid()))
        time.sleep(60)
    os._exit(0)
time.sleep(0.5)
sys.exit(7)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_daemon_dies_with_the_contained_command_and_the_exit_code_is_kept(tmp_path):
    pid_file = tmp_path / "pid"
    done = subprocess.run([sys.executable, "-m", "autoresearch.contain", "--", sys.executable, "-c", DAEMON,
                           str(pid_file)], timeout=30)
    assert done.returncode == 7
    assert not _alive(int(pid_file.read_text()))


def test_uncontained_the_same_daemon_survives(tmp_path):
    """The control: without the wrapper the daemon does escape (so the test above means something)."""
    pid_file = tmp_path / "pid"
    subprocess.run([sys.executable, "-c", DAEMON, str(pid_file)], timeout=30)
    pid = int(pid_file.read_text())
    try:
        assert _alive(pid)
    finally:
        os.kill(pid, 9)


def test_sigterm_stops_the_command_and_everything_it_started(tmp_path):
    pid_file = tmp_path / "pid"
    code = DAEMON.replace("time.sleep(0.5)", "time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-m", "autoresearch.contain", "--", sys.executable, "-c", code,
                             str(pid_file)])
    deadline = time.monotonic() + 20
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)
    proc.terminate()
    proc.wait(timeout=20)
    assert not _alive(int(pid_file.read_text()))


def test_tree_cpu_counts_work_done_in_a_forked_child():
    code = ("import os, time\n"
            "if os.fork() == 0:\n"
            "    t = time.process_time()\n"
            "    while time.process_time() - t < 0.6: pass\n"
            "    time.sleep(5)\n"
            "    os._exit(0)\n"
            "time.sleep(5)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        time.sleep(1.5)
        assert len(descendants(proc.pid)) == 1
        assert tree_cpu_seconds(proc.pid) >= 0.5
    finally:
        proc.kill()
        proc.wait()
    assert tree_cpu_seconds(proc.pid) is None


KEYRING = """
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
numbers = {"x86_64": 248, "aarch64": 217}
import platform
r = libc.syscall(numbers[platform.machine()], b"user", sys.argv[1].encode(), b"weights", 7, -4)
print("added" if r > 0 else f"refused {ctypes.get_errno()}")
"""


def test_a_contained_process_cannot_use_the_kernel_key_store():
    """The key store outlives processes and sandboxes alike: a run could leave weights there."""
    import platform
    import uuid

    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("no system call numbers for this architecture")
    name = f"autoresearch-test-{uuid.uuid4().hex}"
    contained = subprocess.run([sys.executable, "-m", "autoresearch.contain", "--", sys.executable, "-c", KEYRING,
                                name], capture_output=True, text=True, timeout=30)
    assert contained.stdout.strip() == "refused 1"  # EPERM
    control = subprocess.run([sys.executable, "-c", KEYRING, name], capture_output=True, text=True, timeout=30)
    assert control.stdout.strip() == "added"  # the control: the call itself works here
