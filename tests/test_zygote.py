"""The pre-warmed launcher, spoken to over its real protocol: each run it forks must
behave like `python script.py` started afresh."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm starts are Linux-only")

SIGNALS = "lambda: [str(signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE)]"
PROBE = """\
import json, os, random, signal, sys
SIGNALS = SIGNALS_EXPR
import numpy, torch
torch.randn(512, 512) @ torch.randn(512, 512)  # thread pools work after the fork (no hang)
numpy.ones((512, 512)) @ numpy.ones((512, 512))
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "name": __name__, "path0": sys.path[0],
                  "marker": os.environ.get("PROBE_MARKER"), "leak": os.environ.get("ZYGOTE_ONLY"),
                  "random": random.random(), "threads": torch.get_num_threads(),
                  "pid": os.getpid(), "pgid": os.getpgid(0), "signals": SIGNALS()}))
""".replace("SIGNALS_EXPR", SIGNALS)


class Zygote:
    def __init__(self, tmp_path: Path):
        env = dict(os.environ, ZYGOTE_ONLY="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-P", "-m", "autoresearch.harness.zygote"], cwd=tmp_path,
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        self.ready = self.read()

    def read(self) -> dict:
        line = self.proc.stdout.readline()
        assert line, "the launcher closed its output"
        return json.loads(line)

    def send(self, message: dict) -> None:
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()

    def run(self, script: Path, log: Path, env: dict | None = None) -> int:
        self.send({"run": {"script": str(script), "cwd": str(script.parent), "log": str(log),
                           "env": env or {"PROBE_MARKER": "x", "PATH": os.environ["PATH"]}}})
        return self.read()["started"]

    def wait_exit(self, pid: int) -> int:
        event = self.read()
        assert event.get("exited") == pid, event
        return event["code"]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def test_warm_up_leaves_a_single_thread_to_fork(zygote):
    assert zygote.ready["ready"] is True
    assert zygote.ready["threads"] == 1  # a second thread could hold a lock the children inherit
    children = subprocess.run(["ps", "--ppid", str(zygote.ready["pid"]), "-o", "pid="],
                              capture_output=True, text=True).stdout.split()
    assert children == []  # no compile worker pool whose pipes the children would share


def test_a_run_looks_like_a_fresh_python_script(zygote, tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    seen = []
    for i in range(2):
        log = tmp_path / f"run{i}.log"
        pid = zygote.run(script, log)
        assert zygote.wait_exit(pid) == 0
        seen.append(json.loads(log.read_text()))
    first, second = seen
    assert first["argv"] == [str(script)] and first["name"] == "__main__"
    assert first["cwd"] == str(tmp_path) and first["path0"] == str(tmp_path)
    assert first["marker"] == "x" and first["leak"] is None  # exactly the run's environment
    assert first["threads"] == (torch_default_threads())
    assert first["pgid"] == first["pid"]  # its own process group: the runner kills it whole
    assert first["random"] != second["random"]  # reseeded, not the launcher's state
    fresh = subprocess.run([sys.executable, "-c", f"import signal; print(({SIGNALS})())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert str(first["signals"]) == fresh  # signal handling as in a fresh interpreter


def torch_default_threads() -> int:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                         capture_output=True, text=True, check=True).stdout
    return int(out)


@pytest.mark.parametrize("body, code, text", [
    ("import sys; sys.exit(3)", 3, None),
    ("import os; os._exit(5)", 5, None),
    ("raise ValueError('broken script')", 1, "ValueError: broken script"),
    ("import sys; sys.exit('bad arguments')", 1, "bad arguments"),
    ("import atexit; atexit.register(lambda: print('atexit ran'))", 0, "atexit ran"),
])
def test_exit_codes_and_output_match_the_interpreter(zygote, tmp_path, body, code, text):
    script = tmp_path / "exit.py"
    script.write_text(body + "\n")
    log = tmp_path / "exit.log"
    assert zygote.wait_exit(zygote.run(script, log)) == code
    if text:
        assert text in log.read_text()


def test_a_signal_stops_the_run_and_its_group(zygote, tmp_path):
    script = tmp_path / "sleep.py"
    script.write_text("import subprocess, time\nsubprocess.Popen(['sleep', '60'])\nprint('up', flush=True)\n"
                      "time.sleep(60)\n")
    log = tmp_path / "sleep.log"
    pid = zygote.run(script, log)
    deadline = time.monotonic() + 20
    while "up" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    zygote.send({"signal": {"pid": pid, "sig": int(signal.SIGTERM)}})
    assert zygote.wait_exit(pid) == -signal.SIGTERM
    assert _group_members(pid) == []


def _group_members(pgid: int) -> list[str]:
    time.sleep(0.3)
    out = subprocess.run(["ps", "-eo", "pgid=,pid=,stat="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines()  # zombies are dead, only not yet reaped by init
            if line.split()[0] == str(pgid) and not line.split()[2].startswith("Z")]


def test_runs_die_with_the_launcher(tmp_path):
    z = Zygote(tmp_path)
    script = tmp_path / "long.py"
    script.write_text("import time\nprint('up', flush=True)\ntime.sleep(60)\n")
    log = tmp_path / "long.log"
    pid = z.run(script, log)
    deadline = time.monotonic() + 20
    while "up" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(z.proc.pid, signal.SIGKILL)  # a launcher killed outright: no chance to clean up
    z.proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{pid}").exists()


def test_closing_its_input_stops_the_launcher_and_its_runs(tmp_path):
    z = Zygote(tmp_path)
    script = tmp_path / "long.py"
    script.write_text("import time\ntime.sleep(60)\n")
    pid = z.run(script, tmp_path / "long.log")
    z.proc.stdin.close()
    assert z.wait_exit(pid) == -signal.SIGKILL
    assert z.proc.wait(timeout=10) == 0
