"""JSON-lines helper processes: messages in order, stray output skipped, the end seen."""
from __future__ import annotations

import os
import sys
import threading

import pytest

from autoresearch.service_process import send, spawn_service

ECHO = """\
import json, sys
print("a library's stray line")
print(json.dumps([1, 2]))
for line in sys.stdin:
    print(json.dumps({"echo": json.loads(line)}), flush=True)
print("to the log", file=sys.stderr)
"""


def test_requests_answers_and_the_end(tmp_path):
    messages, ended = [], threading.Event()

    def on_message(message):
        messages.append(message)
        if message is None:
            ended.set()

    log = tmp_path / "helper.log"
    proc = spawn_service([sys.executable, "-c", ECHO], cwd=tmp_path, env=dict(os.environ), log_path=log,
                         on_message=on_message)
    assert os.getsid(proc.pid) == proc.pid  # a session of its own: the loop's Ctrl-C is not for it
    send(proc, {"n": 1})
    send(proc, {"n": 2})
    proc.stdin.close()
    assert ended.wait(30)
    assert messages == [{"echo": {"n": 1}}, {"echo": {"n": 2}}, None]  # non-objects and stray lines skipped
    assert proc.wait(10) == 0
    assert "to the log" in log.read_text()


def test_sending_to_a_process_that_is_gone_is_an_os_error(tmp_path):
    proc = spawn_service([sys.executable, "-c", "pass"], cwd=tmp_path, env=dict(os.environ),
                         log_path=tmp_path / "helper.log", on_message=lambda m: None)
    proc.wait(10)
    with pytest.raises(OSError):
        for _ in range(50):  # the pipe's buffer may take the first writes
            send(proc, {"n": "x" * 10000})
    with pytest.raises(OSError):
        send(None, {"n": 1})
