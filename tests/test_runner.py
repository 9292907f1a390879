"""The runner's failure modes and its boundary, each with a real subprocess."""
import dataclasses
import json
import os
import threading
import time

import pytest

from autoresearch import records as R
from autoresearch.harness.profiles import CPU
from autoresearch.runner import OK, run_experiment

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
    pid_file = tmp_path / "child.pid"
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
              "time.sleep(60)\n")
    started = time.monotonic()
    outcome = _run(tmp_path, script)
    assert outcome.status == R.TIMEOUT and time.monotonic() - started < 15
    pid = int(pid_file.read_text())
    time.sleep(0.5)
    assert not _alive(pid), "the whole process group must be stopped"


DAEMON = """
import os, sys, time
if os.fork() == 0:
    os.setsid()                      # out of the run's process group and session
    if os.fork() == 0:               # and re-parented away from the run
        open({pid_file!r}, 'w').write(str(os.getpid()))
        time.sleep(3)
        open({marker!r}, 'w').write('the daemon outlived its run')
        time.sleep(60)
    os._exit(0)
time.sleep(1)
"""


def test_a_double_forked_daemon_ends_with_its_run(tmp_path):
    pid_file, marker = tmp_path / "daemon.pid", tmp_path / "marker"
    outcome = _run(tmp_path, DAEMON.format(pid_file=str(pid_file), marker=str(marker)))
    assert outcome.status == R.CRASH  # it never submitted
    pid = int(pid_file.read_text())
    time.sleep(3.5)
    assert not _alive(pid) and not marker.exists()


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


def test_a_self_written_fallback_result_is_at_most_in_process(tmp_path):
    script = ("import json, os\n"
              "run = os.environ['AUTORESEARCH_RUN_DIR']\n"
              "json.dump({'val_bpb': 0.01, 'status': 'ok', 'trust': 'sealed', 'reason': 'export failed'},"
              " open(run + '/inprocess_eval.json', 'w'))\n")
    outcome = _run(tmp_path, script)
    assert outcome.trust == "in-process"  # never sealed, whatever the file says
    assert outcome.status == R.INVALID and "clock never started" in outcome.reason  # and no heartbeats


def test_the_run_is_not_told_where_the_workspace_is(tmp_path):
    script = ("import json, os\n"
              "print('ENV', json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ)}))\n"
              "open('written-by-the-run', 'w').write('x')\n")
    lines = []
    _run(tmp_path, script, on_line=lines.append)
    seen = json.loads(next(line for line in lines if line.startswith("ENV "))[4:])
    workspace = str(tmp_path.resolve())
    assert not seen["cwd"].startswith(workspace)
    assert not any(workspace in value for value in seen["env"].values())
    assert "AUTORESEARCH_WORKSPACE" not in seen["env"]
    assert not (tmp_path / "written-by-the-run").exists()
    assert not os.path.exists(seen["cwd"]), "the scratch folder is removed after the run"


def test_secrets_are_not_handed_to_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    monkeypatch.setenv("SOME_TOKEN", "tok")
    lines = []
    _run(tmp_path, "import os\nprint('KEYS', sorted(os.environ))\n", on_line=lines.append)
    keys = next(line for line in lines if line.startswith("KEYS"))
    assert "OPENAI_API_KEY" not in keys and "SOME_TOKEN" not in keys


def test_outputs_are_collected_without_following_links(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "submission.json").write_text(json.dumps({"planted": True}))
    script = ("import os\n"
              "out = os.environ['AUTORESEARCH_RUN_DIR']\n"
              f"os.symlink({str(elsewhere / 'submission.json')!r}, os.path.join(out, 'submission.json'))\n")
    outcome = _run(tmp_path, script)
    assert outcome.status == R.INVALID and "submission.json" in outcome.reason
    assert not (tmp_path / "run" / "submission.json").exists()


def test_a_swapped_output_folder_does_not_redirect_collection(tmp_path):
    earlier = tmp_path / "earlier-run"
    earlier.mkdir()
    (earlier / "submission.json").write_text(json.dumps({"from": "an earlier run"}))
    script = ("import os, shutil\n"
              "out = os.environ['AUTORESEARCH_RUN_DIR']\n"
              "shutil.rmtree(out)\n"
              f"os.symlink({str(earlier)!r}, out)\n")
    outcome = _run(tmp_path, script)
    assert outcome.status == R.CRASH and "without submit" in outcome.reason
    assert not (tmp_path / "run" / "submission.json").exists()


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


def _busy() -> None:
    while True:
        pass


@pytest.mark.slow
def test_honest_runs_are_accepted_on_a_busy_machine_and_a_slowed_clock_is_not(workspace):
    """Two busy processes per core: the unchanged target is accepted every time, judged by the
    runner's own clock; a run whose own clock runs at quarter speed trains four times its budget and is
    refused. (bench/honest_under_load.py does the same with the template, 20 times.)"""
    import multiprocessing

    from autoresearch.loop import sandbox_choice
    from autoresearch.services import LoopServices
    from autoresearch.timing import references_from

    sandbox, _ = sandbox_choice(None)
    load = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(2 * len(os.sched_getaffinity(0)))]
    services = LoopServices(workspace, sandbox=sandbox, warm_start="on").start()
    for worker in load:
        worker.start()
    try:
        accepted = []
        for i in range(1, 4):
            refs = {"warm": references_from(accepted)} if accepted else {}
            outcome = run_experiment(workspace.root, workspace.run_dir(i), workspace.settings.profile(), seed=i,
                                     settings=workspace.settings, sandbox=sandbox, launcher=services.launcher,
                                     evaluator=services.evaluator, refs=refs,
                                     scratch_parent=services.scratch_parent)
            assert outcome.status == OK, (outcome.status, outcome.reason)
            accepted.append(outcome.timing)
        text = (workspace.root / "train.py").read_text()
        slowed = text.replace("import time\n", "import time\n_real = time.monotonic\n_t0 = _real()\n"
                              "time.monotonic = lambda: _t0 + (_real() - _t0) * 0.25\n", 1)
        cheat = run_experiment(workspace.root, workspace.run_dir(9), workspace.settings.profile(), seed=9,
                               settings=workspace.settings, files={"train.py": slowed.encode()}, sandbox=sandbox,
                               launcher=services.launcher, evaluator=services.evaluator,
                               refs={"warm": references_from(accepted)}, scratch_parent=services.scratch_parent)
        assert cheat.status == R.OVER_BUDGET, (cheat.status, cheat.reason)
    finally:
        for worker in load:
            worker.kill()
        services.close()
