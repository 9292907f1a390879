"""A helper process the loop talks to in JSON lines: requests on its stdin, messages on
its stdout, its stderr appended to a log; in a session of its own, so a Ctrl-C meant
for the loop does not reach it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path


def spawn_service(command: list[str], *, cwd: Path, env: dict, log_path: Path, on_message) -> subprocess.Popen:
    """Starts `command`; `on_message(dict)` is called for every JSON line it writes, and
    `on_message(None)` once its output ends."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=log, start_new_session=True)
    threading.Thread(target=_read, args=(proc, on_message), daemon=True).start()
    return proc


def send(proc: subprocess.Popen | None, message: dict) -> None:
    """One request; OSError when the process is gone."""
    if proc is None or proc.stdin is None:
        raise OSError("the helper process is not running")
    proc.stdin.write((json.dumps(message) + "\n").encode())
    proc.stdin.flush()


def stop_service(proc: subprocess.Popen | None, *, grace: float = 0.0) -> None:
    """Closes its input (a helper that reads EOF stops itself and what it started), waits
    `grace` seconds, then kills its process group."""
    if proc is None:
        return
    try:
        proc.stdin.close()
    except OSError:
        pass
    if grace > 0:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=10)


def _read(proc: subprocess.Popen, on_message) -> None:
    for raw in iter(proc.stdout.readline, b""):
        try:
            message = json.loads(raw)
        except ValueError:
            continue  # not ours: a library that printed to stdout
        if isinstance(message, dict):
            on_message(message)
    proc.stdout.close()
    on_message(None)
