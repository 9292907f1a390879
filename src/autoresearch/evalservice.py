"""The loop's evaluation service: one sealed evaluator process that stays up between
experiments, so each evaluation skips the interpreter's start, torch's import, the
validation set-up and the first load (about 6 s of each experiment on two cores).

It runs harness code only, like the one-shot evaluator, loads each submitted program
afresh and gets a fresh copy of the validation batches for every run; with the sandbox it
has no network and nothing writable. It answers with the result; the runner writes it. A timeout or an interrupt kills it; the next
evaluation starts a new one. Whenever it cannot answer, the runner falls back to the
one-shot evaluator, so results never depend on it being there.
"""
from __future__ import annotations

import secrets
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

from autoresearch.service_process import send, spawn_service, stop_service

READY_TIMEOUT_S = 120.0


class EvaluatorService:
    def __init__(self, spec: dict, *, folder: Path, env: dict, log_path: Path, wrap=None):
        self.spec = dict(spec)  # the validation settings (harness.evaluate.validation_spec)
        self.folder = Path(folder)
        self.env = dict(env)
        self.log_path = Path(log_path)
        self.wrap = wrap or (lambda cmd: cmd)
        self.proc: subprocess.Popen | None = None
        self.ready = threading.Event()
        self.failure = ""
        self._answers: queue.Queue = queue.Queue()

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.ready.clear()
        self._answers = answers = queue.Queue()

        def on_message(message):
            if message is None:
                answers.put({"done": None})  # its output ended: it died
            elif message.get("ready"):
                self.ready.set()
            elif "done" in message:
                answers.put(message)

        command = self.wrap([sys.executable, "-P", "-m", "autoresearch.harness.evaluate", "--serve",
                             "--validation", json.dumps(self.spec)])
        self.proc = spawn_service(command, cwd=self.folder, env=self.env, log_path=self.log_path,
                                  on_message=on_message)

    def close(self) -> None:
        proc, self.proc = self.proc, None
        self.ready.clear()
        stop_service(proc)  # at once: nothing of value is in flight between evaluations

    def usable(self, timeout: float = READY_TIMEOUT_S) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            try:
                self.start()
            except OSError as error:
                self.failure = f"the evaluation service cannot start: {error}"
                return False
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                self.failure = "the evaluation service exited or did not get ready in time"
                self.close()
                return False
        return True

    def evaluate(self, model: Path, submission: dict, *, timeout: float, stop_event=None):
        """Returns (result dict | 'timeout' | 'interrupted' | None when unavailable, seconds)."""
        started = time.monotonic()
        if not self.usable():
            return None, time.monotonic() - started
        answers = self._answers
        request_id = secrets.token_hex(16)  # made after the run ended: no run can have forged its answer
        try:
            send(self.proc, {"id": request_id, "model": str(Path(model).resolve()), "submission": submission})
        except OSError:
            self.close()
            return None, time.monotonic() - started
        while True:
            try:
                answer = answers.get(timeout=0.05)
            except queue.Empty:
                answer = None
            if answer is not None:
                if answer.get("done") is None:  # the process ended (end-of-output marker)
                    self.close()
                    return None, time.monotonic() - started
                if answer.get("done") != request_id or not isinstance(answer.get("result"), dict):
                    continue  # a late answer to a request given up on
                return answer["result"], time.monotonic() - started
            if time.monotonic() - started > timeout:
                self.close()
                return "timeout", time.monotonic() - started
            if stop_event is not None and stop_event.is_set():
                self.close()
                return "interrupted", time.monotonic() - started
