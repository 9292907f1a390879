"""Warm starts: the loop keeps one pre-warmed launcher (harness/zygote.py) and starts
every training run as a fork of it, so no experiment pays torch's import and compiler
start-up again (about 7 s of each experiment on two cores).

A run started this way behaves like `python train.py`: fresh process, own process
group, the run's environment, output to its log. It differs in one way a script can
notice: torch is imported before the script runs, so environment variables that torch
reads at import time cannot be set by the script. A script that sets environment
variables therefore gets a cold start (`cold_start_reason`).

Warm starts are used on Linux machines without a GPU (`warm_start = "auto"`): forking
after torch's import is only known safe there. `warm_start = "on"` forces them.
"""
from __future__ import annotations

import ast
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from autoresearch.config import WARM_START_MODES as MODES
from autoresearch.service_process import send, spawn_service, stop_service

READY_TIMEOUT_S = 180.0  # warm-up on a cold compiler cache, on a slow machine
REPLY_TIMEOUT_S = 10.0
MAX_STARTS = 3  # a launcher that keeps dying is given up: runs start cold
KILL_WAITS = ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0))  # a run is asked to stop, then killed
GPU_DEVICE_NODES = ("/dev/nvidiactl", "/dev/kfd")  # NVIDIA and AMD compute devices


def warm_start_wanted(mode: str) -> tuple[bool, str]:
    """Whether this machine should use warm starts under `mode`, and why not."""
    if mode not in MODES:
        raise ValueError(f"warm_start must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return False, "warm_start = off"
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False, f"warm starts need Linux (this is {sys.platform})"
    if mode == "auto":
        gpu = next((node for node in GPU_DEVICE_NODES if os.path.exists(node)), None)
        if gpu:
            return False, f"a GPU is present ({gpu}): forking after torch's import is untested there"
    return True, ""


def cold_start_reason(source: str) -> str:
    """Why a script must start in a fresh interpreter, or '' (it may be forked warm)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""  # it fails the same way either way
    for node in ast.walk(tree):
        target = None
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            target = next((t for t in targets if isinstance(t, ast.Subscript) and _is_environ(t.value)), None)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("putenv", "unsetenv") or (
                    node.func.attr in ("update", "setdefault", "pop", "clear") and _is_environ(node.func.value)):
                target = node
        if target is not None:
            return (f"line {node.lineno} sets an environment variable, which torch may read at import: "
                    "started cold")
    return ""


def _is_environ(node) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "environ" or (
        isinstance(node, ast.Name) and node.id == "environ")


class WarmProcess:
    """A run forked by the launcher; the same interface as the runner's cold process."""

    def __init__(self, starter: "WarmStarter", pid: int, generation: int):
        self.starter, self.pid, self.generation = starter, pid, generation

    def host_pid(self) -> int | None:
        """The run's pid outside the launcher's sandbox (the same pid when there is none)."""
        if not self.starter.sandboxed:
            return self.pid
        from autoresearch.proctree import host_pid

        proc = self.starter.proc
        return None if proc is None else host_pid(self.pid, proc.pid)

    @property
    def exit_cpu(self) -> float | None:
        """CPU seconds of the run and what it waited for, as the launcher reaped it."""
        return self.starter.exit_cpus.get((self.generation, self.pid))

    def poll(self):
        return self.starter.exit_code(self.pid, self.generation)

    def kill_group(self) -> None:
        for sig, wait in KILL_WAITS:
            if self.poll() is not None:
                return
            self.starter.signal(self.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.poll() is not None:
                    return
                time.sleep(0.05)
        self.starter.close()  # the launcher does not answer: its death takes the run with it

    def finish(self) -> None:
        pass


class WarmStarter:
    """One launcher process per loop, started in the background, replaced if it dies."""

    def __init__(self, folder: Path, *, env: dict, log_path: Path, wrap=None):
        self.folder = Path(folder)  # its working folder: the scratch root, never the workspace
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.sandboxed = wrap is not None  # then its pids are those of the sandbox's PID namespace
        self.wrap = wrap or (lambda cmd: cmd)  # the sandbox, when the loop uses one
        self.proc: subprocess.Popen | None = None
        self.ready = threading.Event()
        self.failure = ""
        self.gave_up = False  # the warm-up failed or kept failing: restarting would not help
        self.warm_up_seconds: float | None = None
        self.warm_up_cpu: float | None = None  # CPU seconds of the imports a cold start pays again
        self.threads: int | None = None
        self.starts = 0
        # per launcher generation: in a sandbox's pid namespace a new launcher reuses pids
        self.generation = 0
        self._started: queue.Queue = queue.Queue()
        self._exits: dict[tuple[int, int], int] = {}
        self.exit_cpus: dict[tuple[int, int], float] = {}
        self._ended: dict[int, threading.Event] = {}
        self._lock = threading.Lock()

    # --- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        """Spawns the launcher; call from the thread that outlives it (the parent-death
        signal follows the spawning thread)."""
        if self.gave_up or (self.proc is not None and self.proc.poll() is None):
            return
        if self.starts >= MAX_STARTS:
            self.gave_up = True
            self.failure = f"the launcher died {self.starts} times"
            return
        self.starts += 1
        self.generation += 1
        generation = self.generation
        self.ready.clear()
        self.failure = ""
        self._started = queue.Queue()
        self._ended[generation] = threading.Event()
        command = self.wrap([sys.executable, "-P", "-m", "autoresearch.harness.zygote"])
        self.proc = spawn_service(command, cwd=self.folder, env=self.env, log_path=self.log_path,
                                  on_message=lambda event: self._on_event(event, generation))

    def close(self) -> None:
        proc, self.proc = self.proc, None
        self.ready.clear()
        stop_service(proc, grace=5.0)  # on EOF the launcher kills its runs and exits

    def usable(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Waits for the warm-up; False when the launcher failed (the caller starts cold)."""
        if self.proc is None or self.proc.poll() is not None:
            try:
                self.start()
            except OSError as error:  # e.g. the sandbox's program is missing
                self.failure, self.gave_up = f"the launcher cannot start: {error}", True
        if self.gave_up:
            return False
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.failure or self.proc is None or self.proc.poll() is not None:
                self.failure = self.failure or "the launcher exited during its warm-up"
                return False
            if time.monotonic() > deadline:
                self.failure = f"the launcher was not ready after {timeout:.0f} s"
                self.gave_up = True  # waiting that long again for every run would cost more than it saves
                self.close()
                return False
        return True

    # --- runs -----------------------------------------------------------------------------
    def launch(self, script: str, *, cwd: Path, env: dict, log: Path) -> WarmProcess | None:
        """Forks a run; None when the launcher cannot (the caller starts it cold)."""
        if not self.usable():
            return None
        spec = {"script": str(script), "cwd": str(cwd), "env": env, "log": str(log)}
        nonce = secrets.token_hex(16)
        try:
            self._write({"run": spec, "nonce": nonce})
            pid = self._wait_started(nonce)
        except (OSError, queue.Empty):
            self.failure = "the launcher did not start the run"
            self.close()
            return None
        return WarmProcess(self, pid, self.generation)

    def _wait_started(self, nonce: str) -> int:
        """The pid of the run started for `nonce`; answers to anything else are not ours."""
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while True:
            got_nonce, pid = self._started.get(timeout=max(0.01, deadline - time.monotonic()))
            if got_nonce == nonce:
                return pid

    def signal(self, pid: int, sig: int) -> None:
        try:
            self._write({"signal": {"pid": pid, "sig": int(sig)}})
        except OSError:
            pass

    def exit_code(self, pid: int, generation: int):
        with self._lock:
            if (generation, pid) in self._exits:
                return self._exits[(generation, pid)]
        alive = generation == self.generation and self.proc is not None and self.proc.poll() is None
        if alive:
            return None
        self._ended[generation].wait(2.0)  # the launcher's last words may still be in the pipe
        with self._lock:
            # no exit reported by a launcher that is gone: the run died with it
            return self._exits.get((generation, pid), -signal.SIGKILL)

    def _write(self, message: dict) -> None:
        send(self.proc, message)

    def _on_event(self, event: dict | None, generation: int) -> None:
        if event is None:
            self._ended[generation].set()
            return
        if generation != self.generation and "exited" not in event:
            return  # a replaced launcher's late words
        if "ready" in event:
            self.warm_up_seconds = event.get("warm_up_seconds")
            self.warm_up_cpu = event.get("warm_up_cpu")
            self.threads = event.get("threads")
            self.ready.set()
        elif "failed" in event:
            self.failure = f"the launcher's warm-up failed: {event['failed']}"
            self.gave_up = True
        elif "started" in event:
            self._started.put((event.get("nonce"), int(event["started"])))
        elif "exited" in event:
            with self._lock:
                key = (generation, int(event["exited"]))
                if isinstance(event.get("cpu"), (int, float)):
                    self.exit_cpus[key] = float(event["cpu"])
                self._exits[key] = int(event["code"])
