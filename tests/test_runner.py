"""The runner's failure modes, each with a real subprocess."""
import dataclasses
import threading
import time

from autoresearch import records as R
from autoresearch.harness.profiles import CPU
from autoresearch.runner import OK, RunOutcome, judge_budget, run_experiment

FAST = dataclasses.replace(CPU, time_budget=1.0, startup_allowance=2.0, eval_allowance=5.0)


def _run(tmp_path, script: str, **kwargs):
    (tmp_path / "train.py").write_text(script)
    return run_experiment(tmp_path, tmp_path / "run", FAST, seed=7, **kwargs)


def test_crash_is_recorded_with_the_log_tail(tmp_path):
    outcome = _run(tmp_path, "print('warming up')\nraise RuntimeError('boom at step 3')\n")
    assert outcome.status == R.CRASH
    assert "exited with code 1" in outcome.reason
    assert "boom at step 3" in outcome.log_tail
    assert "val_bpb:          0.000000" in outcome.summary


def test_hang_is_killed_with_its_children(tmp_path):
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "open('child.pid', 'w').write(str(child.pid))\n"
              "time.sleep(60)\n")
    started = time.monotonic()
    outcome = _run(tmp_path, script)
    assert outcome.status == R.TIMEOUT and time.monotonic() - started < 15
    pid = int((tmp_path / "child.pid").read_text())
    time.sleep(0.5)
    assert not _alive(pid), "the whole process group must be stopped"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_exit_without_submit_has_no_result(tmp_path):
    outcome = _run(tmp_path, "print('val_bpb: 0.1')\n")
    assert outcome.status == R.CRASH and outcome.val_bpb is None
    assert "without submit" in outcome.reason


def test_self_written_eval_file_is_not_trusted(tmp_path):
    script = ("import json, os\n"
              "run = os.environ['AUTORESEARCH_RUN_DIR']\n"
              "json.dump({'val_bpb': 0.01, 'status': 'ok', 'trust': 'sealed'}, open(run + '/eval.json', 'w'))\n")
    outcome = _run(tmp_path, script)
    assert outcome.val_bpb is None and outcome.status == R.CRASH


def test_abort_exit_code_is_aborted(tmp_path):
    script = ("import os\nopen(os.environ['AUTORESEARCH_RUN_DIR'] + '/aborted.txt', 'w').write('loss is nan')\n"
              "raise SystemExit(3)\n")
    outcome = _run(tmp_path, script)
    assert outcome.status == R.ABORTED and outcome.reason == "loss is nan"


def test_stop_event_interrupts(tmp_path):
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    outcome = _run(tmp_path, "import time\ntime.sleep(30)\n", stop_event=stop)
    assert outcome.status == R.INTERRUPTED


def test_seed_and_run_dir_reach_the_script(tmp_path):
    lines = []
    _run(tmp_path, "import os\nprint(os.environ['AUTORESEARCH_SEED'], os.environ['AUTORESEARCH_MANAGED'])\n",
         on_line=lines.append)
    assert "7 1" in lines


def test_over_budget_is_judged_by_the_harness_clock():
    profile = dataclasses.replace(CPU, time_budget=60.0)
    within = judge_budget(RunOutcome(OK, val_bpb=1.0, training_seconds=64.0), profile)
    over = judge_budget(RunOutcome(OK, val_bpb=1.0, training_seconds=70.0), profile)
    assert within.status == OK
    assert over.status == R.OVER_BUDGET and "70.0 s" in over.reason
