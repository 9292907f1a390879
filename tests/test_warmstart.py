"""Warm starts from the runner's side: when they are used, runs forked through a real
launcher, and every way the launcher can fail ending in a cold start, not a lost run."""
from __future__ import annotations

import dataclasses
import os
import signal
import sys
import time

import pytest

from autoresearch import records as R
from autoresearch.harness.profiles import CPU
from autoresearch.runner import OK, run_experiment
from autoresearch.warmstart import WarmStarter, cold_start_reason, warm_start_wanted

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm starts are Linux-only")
FAST = dataclasses.replace(CPU, time_budget=1.0, startup_allowance=2.0, eval_allowance=5.0)


@pytest.mark.parametrize("source, cold", [
    ("import torch\nx = 1\n", False),
    ("import os\nprint(os.environ.get('HOME'))\n", False),
    ("import os\nos.environ['OMP_NUM_THREADS'] = '1'\nimport torch\n", True),
    ("import os\nos.environ.setdefault('PYTORCH_CUDA_ALLOC_CONF', 'expandable_segments:True')\n", True),
    ("from os import environ\nenviron.update(A='1')\n", True),
    ("import os\ndef main():\n    os.putenv('A', '1')\n", True),
    ("import os\ndel os.environ['A']\n", True),
    ("this is not python", False),
])
def test_scripts_that_set_environment_variables_start_cold(source, cold):
    reason = cold_start_reason(source)
    assert bool(reason) == cold
    if cold:
        assert "environment variable" in reason


def test_modes(monkeypatch):
    assert warm_start_wanted("off") == (False, "warm_start = off")
    with pytest.raises(ValueError, match="auto, on, off"):
        warm_start_wanted("sometimes")
    if sys.platform.startswith("linux"):
        assert warm_start_wanted("on")[0] is True
        monkeypatch.setattr("autoresearch.warmstart.GPU_DEVICE_NODES", (sys.executable,))  # "a GPU is present"
        wanted, why = warm_start_wanted("auto")
        assert not wanted and "GPU" in why
        assert warm_start_wanted("on")[0] is True  # forced


@pytest.fixture(scope="module")
def launcher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("launcher")
    starter = WarmStarter(folder, env=dict(os.environ, PYTHONUNBUFFERED="1"), log_path=folder / "launcher.log")
    starter.start()
    yield starter
    starter.close()


@linux_only
def test_a_warm_run_is_measured_like_a_cold_one(workspace, launcher):
    run_dir = workspace.run_dir(1)
    outcome = run_experiment(workspace.root, run_dir, workspace.settings.profile(), seed=3, launcher=launcher)
    assert outcome.start == "warm", outcome.start
    assert outcome.status == OK and outcome.trust == "sealed" and outcome.val_bpb > 0
    assert outcome.seed == 3 and outcome.account["seed"] == 3  # the run's environment reached the harness
    assert launcher.threads == 1
    assert "val_bpb:" in (run_dir / "run.log").read_text()  # output went to the run's log


@linux_only
def test_a_script_that_sets_the_environment_is_started_cold(workspace, launcher):
    train = workspace.root / "train.py"
    train.write_text("import os\nos.environ['OMP_NUM_THREADS'] = '1'\n" + train.read_text())
    outcome = run_experiment(workspace.root, workspace.run_dir(1), workspace.settings.profile(), seed=3,
                             launcher=launcher)
    assert outcome.start.startswith("cold: line 2 sets an environment variable")
    assert outcome.status == OK


@linux_only
def test_warm_failures_are_recorded_like_cold_ones(tmp_path, launcher):
    (tmp_path / "train.py").write_text("raise RuntimeError('boom at step 3')\n")
    outcome = run_experiment(tmp_path, tmp_path / "run", FAST, seed=7, launcher=launcher)
    assert outcome.start == "warm"
    assert outcome.status == R.CRASH and "exited with code 1" in outcome.reason
    assert "boom at step 3" in outcome.log_tail


@linux_only
def test_a_double_forked_daemon_of_a_warm_run_ends_with_it(tmp_path, launcher):
    pid_file, marker = tmp_path / "daemon.pid", tmp_path / "marker"
    (tmp_path / "train.py").write_text(
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
        "        time.sleep(3)\n"
        f"        open({str(marker)!r}, 'w').write('outlived its run')\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(1)\n")
    outcome = run_experiment(tmp_path, tmp_path / "run", FAST, seed=7, launcher=launcher)
    assert outcome.start == "warm"
    time.sleep(3.5)
    pid = int(pid_file.read_text())
    assert (not os.path.exists(f"/proc/{pid}") or _zombie(pid)) and not marker.exists()


@linux_only
def test_a_hung_warm_run_is_killed_with_its_children(tmp_path, launcher):
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen(['sleep', '60'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
              "time.sleep(60)\n")
    (tmp_path / "train.py").write_text(script)
    started = time.monotonic()
    outcome = run_experiment(tmp_path, tmp_path / "run", FAST, seed=7, launcher=launcher)
    assert outcome.start == "warm" and outcome.status == R.TIMEOUT
    assert time.monotonic() - started < 15
    pid = int(pid_file.read_text())
    time.sleep(0.5)
    assert not os.path.exists(f"/proc/{pid}") or _zombie(pid), "the run's whole group must be stopped"


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


@linux_only
def test_a_dead_launcher_is_replaced_and_its_run_recorded(tmp_path):
    starter = WarmStarter(tmp_path, env=dict(os.environ), log_path=tmp_path / "launcher.log")
    starter.start()
    try:
        script = tmp_path / "train.py"
        script.write_text("import time\nprint('up', flush=True)\ntime.sleep(60)\n")
        process = starter.launch(str(script), cwd=tmp_path, env=dict(os.environ), log=tmp_path / "a.log")
        assert process is not None and process.poll() is None
        first = starter.proc.pid
        os.killpg(first, signal.SIGKILL)  # the launcher dies under a running experiment
        starter.proc.wait(timeout=10)
        assert process.poll() == -signal.SIGKILL  # its run is reported dead, not waited on forever
        script.write_text("print('second run')\n")
        again = starter.launch(str(script), cwd=tmp_path, env=dict(os.environ), log=tmp_path / "b.log")
        assert again is not None and starter.proc.pid != first
        deadline = time.monotonic() + 30
        while again.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert again.poll() == 0 and "second run" in (tmp_path / "b.log").read_text()
    finally:
        starter.close()


def _launcher_running(tmp_path, code: str) -> WarmStarter:
    """A WarmStarter whose launcher is replaced by `python -c code`."""
    command = [sys.executable, "-c", code]
    return WarmStarter(tmp_path, env=dict(os.environ), log_path=tmp_path / "launcher.log",
                       wrap=lambda cmd: command)


def test_a_launcher_whose_warm_up_fails_means_cold_starts(tmp_path):
    starter = _launcher_running(tmp_path, "print('{\"failed\": \"ImportError: no torch\"}', flush=True)")
    starter.start()
    try:
        (tmp_path / "train.py").write_text("print('ran cold')\n")
        outcome = run_experiment(tmp_path, tmp_path / "run", FAST, seed=7, launcher=starter)
        assert outcome.start == "cold: the launcher's warm-up failed: ImportError: no torch"
        assert "ran cold" in (tmp_path / "run" / "run.log").read_text()
        assert starter.gave_up and not starter.usable()  # not retried for every run
    finally:
        starter.close()


def test_a_launcher_that_keeps_dying_is_given_up(tmp_path):
    starter = _launcher_running(tmp_path, "raise SystemExit(1)")
    try:
        results = [starter.usable(timeout=30) for _ in range(5)]
        assert results == [False] * 5
        assert starter.starts == 3 and starter.gave_up  # three tries, then cold starts for good
        assert "died 3 times" in starter.failure
    finally:
        starter.close()


def test_a_launcher_that_never_gets_ready_is_given_up_and_stopped(tmp_path):
    starter = _launcher_running(tmp_path, "import time; time.sleep(60)")
    starter.start()
    proc = starter.proc
    try:
        assert starter.usable(timeout=0.5) is False
        assert starter.gave_up and "not ready after" in starter.failure
        assert proc.wait(timeout=10) is not None  # not left running
        assert starter.launch("train.py", cwd=tmp_path, env={}, log=tmp_path / "x.log") is None
    finally:
        starter.close()


def test_a_launcher_that_cannot_be_spawned_means_cold_starts(tmp_path):
    starter = WarmStarter(tmp_path, env=dict(os.environ), log_path=tmp_path / "launcher.log",
                          wrap=lambda cmd: [str(tmp_path / "no-such-program"), *cmd])
    (tmp_path / "train.py").write_text("print('ran cold')\n")
    outcome = run_experiment(tmp_path, tmp_path / "run", FAST, seed=7, launcher=starter)
    assert outcome.start.startswith("cold: the launcher cannot start:")
    assert "ran cold" in (tmp_path / "run" / "run.log").read_text()
