"""The trust boundary, tried as an adversarial agent would: each class of attack on the
result is proposed as an edit of train.py and run through the real loop, in the modes the
loop runs in (cold and warm starts, without and with the sandbox). Each must end refused
or without effect: never kept with a faked figure, and nothing outside the run changed.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from autoresearch import records as R
from autoresearch.agents.base import Proposal
from autoresearch.loop import Job, ResearchLoop
from autoresearch.sandbox import sandbox_available

MODES = {"cold-open": ("off", False), "cold-sandbox": ("off", True),
         "warm-open": ("on", False), "warm-sandbox": ("on", True)}
REFUSED = (R.INVALID, R.OVER_BUDGET, R.CRASH)
ANCHOR = "torch.manual_seed(SEED)"


# The weakest mode and the default one cover both start kinds and both confinements; the
# cheapest test also runs in the other two.
PAIRED = ["cold-open", "warm-sandbox"]


def _mode(name: str) -> str:
    if MODES[name][1] and not sandbox_available()[0]:
        pytest.skip(sandbox_available()[1])
    return name


@pytest.fixture(params=PAIRED)
def mode(request):
    return _mode(request.param)


@pytest.fixture(params=list(MODES))
def every_mode(request):
    return _mode(request.param)


def _attack(workspace, mode: str, code: str, *, at: str = ANCHOR, baseline: bool = True):
    """Runs the baseline, then train.py with `code` inserted before `at`; returns the attack's record."""
    warm, sandbox = MODES[mode]
    text = (workspace.root / "train.py").read_text()
    assert at in text
    attack = text.replace(at, code + at, 1)
    if not baseline:  # the attack is the workspace's own code: it runs as the baseline
        (workspace.root / "train.py").write_text(attack)
        workspace.repo.commit_paths(["train.py"], "attack as the baseline")
    loop = ResearchLoop(workspace, agent=None, sandbox=sandbox, warm_start=warm)
    loop.prepare()
    with loop.services:
        if baseline:
            first = loop.execute(loop.next_job())
            assert first.status == R.KEEP, (first.status, first.decision_reason)
            record = loop.execute(Job(R.CANDIDATE), Proposal("attack", {"train.py": attack}))
        else:
            record = loop.execute(loop.next_job())
    assert record.extra["sandbox"] == ("off" if not MODES[mode][1] else sandbox_available()[1])
    assert record.extra["start"].split(":")[0] == ("warm" if MODES[mode][0] == "on" else "cold")
    return loop, record


def test_an_eval_file_written_late_by_a_leftover_process_changes_nothing(workspace, mode):
    target = workspace.run_dir(2) / "eval.json"  # the adversary guesses the runner's folder
    fake = json.dumps({"status": "ok", "val_bpb": 0.001, "trust": "sealed"})
    code = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        for _ in range(120):\n            time.sleep(0.1)\n"
            f"            try:\n                open({str(target)!r}, 'w').write({fake!r})\n"
            f"            except OSError:\n                pass\n        os._exit(0)\n    os._exit(0)\n")
    loop, record = _attack(workspace, mode, code)
    time.sleep(1.0)
    assert record.val_bpb is None or record.val_bpb > 1.0
    on_disk = json.loads(target.read_text()) if target.exists() else {}
    assert on_disk.get("val_bpb") != 0.001, "a process of the run outlived it"
    assert loop.ledger.records()[-1].val_bpb != 0.001


def test_links_planted_in_the_workspace_are_removed_and_the_run_refused(workspace, mode):
    import autoresearch

    package = Path(autoresearch.__file__).resolve().parent
    later = workspace.run_dir(3)
    code = (f"import os\ntry:\n    os.makedirs({str(later.parent)!r}, exist_ok=True)\n"
            f"    os.symlink({str(package / 'harness')!r}, {str(later)!r})\nexcept OSError as e:\n"
            f"    print('cannot plant:', e)\n")
    loop, record = _attack(workspace, mode, code)
    assert not later.is_symlink()
    if MODES[mode][1]:
        assert record.status == R.KEEP or record.status == R.DISCARD or record.status == R.PENDING  # no effect
    else:
        assert record.status == R.INVALID and "planted link" in record.decision_reason
    assert not any(p.name in ("eval.json", "run.log", "model.pt2") for p in (package / "harness").iterdir())


def test_git_hooks_and_config_planted_by_a_run_are_never_obeyed(workspace, mode):
    marker = workspace.root.parent / "hook-ran"
    git_dir = workspace.root / ".git"
    code = (f"import os\ntry:\n"
            f"    for hook in ('post-checkout', 'pre-commit', 'post-commit', 'reference-transaction'):\n"
            f"        p = os.path.join({str(git_dir / 'hooks')!r}, hook)\n"
            f"        open(p, 'w').write('#!/bin/sh\\ntouch {marker}\\n')\n        os.chmod(p, 0o755)\n"
            f"    with open({str(git_dir / 'config')!r}, 'a') as f:\n"
            f"        f.write('[core]\\n\\tfsmonitor = touch {marker}\\n')\n"
            f"except OSError as e:\n    print('cannot plant:', e)\n")
    loop, record = _attack(workspace, mode, code)
    loop.repo.commit_paths(["train.py"], "a commit by the loop after the run")  # would run pre-commit
    loop.repo.reset_hard("HEAD~1")
    assert not marker.exists()
    assert "fsmonitor" not in (git_dir / "config").read_text()
    if not MODES[mode][1]:
        assert record.status == R.INVALID and ".git" in record.decision_reason


def test_the_frozen_settings_cannot_be_widened_by_a_run(workspace, mode):
    toml = workspace.root / "autoresearch.toml"
    code = (f"import subprocess\ntry:\n"
            f"    text = open({str(toml)!r}).read().replace('time_budget = 1.0', 'time_budget = 1000.0')\n"
            f"    text = text.replace('editable = [\"train.py\"]', 'editable = [\"train.py\", \"program.md\"]')\n"
            f"    open({str(toml)!r}, 'w').write(text)\n"
            f"    subprocess.run(['git', '-C', {str(workspace.root)!r}, 'update-index', '--skip-worktree',"
            f" 'autoresearch.toml'])\nexcept OSError as e:\n    print('cannot plant:', e)\n")
    loop, record = _attack(workspace, mode, code)
    assert "1000" not in toml.read_text()
    from autoresearch.workspace import Workspace

    reopened = Workspace.open(workspace.root)
    assert reopened.settings.experiment.time_budget == 1.0 and reopened.editable() == ["train.py"]
    if not MODES[mode][1]:
        assert record.status == R.INVALID


def test_the_data_cache_and_compiler_cache_carry_nothing_to_later_runs(workspace, mode):
    from autoresearch.harness.prepare import prepared_dir

    train = prepared_dir("builtin", workspace.settings.profile().vocab_size) / "train.tokens"
    before = train.read_bytes()
    code = ("import os\n"
            "cache = os.environ.get('TORCHINDUCTOR_CACHE_DIR', '')\n"
            "os.makedirs(cache, exist_ok=True)\n"
            "open(os.path.join(cache, 'planted'), 'w').write('weights from an earlier run')\n"
            f"try:\n    with open({str(train)!r}, 'r+b') as f:\n        f.write(b'\\0\\0\\0\\0')\n"
            "except OSError as e:\n    print('cannot write the data:', e)\n")
    loop, record = _attack(workspace, mode, code)
    try:
        if not MODES[mode][1]:
            assert record.status == R.INVALID and "prepared data" in record.decision_reason
            assert "prepared data" in loop.stop_reason
        else:
            assert train.read_bytes() == before
        from autoresearch.compilecache import base_dir

        assert not (base_dir("cpu") / "planted").exists()
    finally:
        train.write_bytes(before)  # the data cache is shared by the whole test session


def test_a_leftover_daemon_is_gone_when_the_run_ends(workspace, every_mode):
    mode = every_mode
    mark = f"daemon-{uuid.uuid4().hex}"  # in its command line, which /proc shows from outside any sandbox
    code = (f"import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)', {mark!r}])\n"
            f"    os._exit(0)\n")
    loop, record = _attack(workspace, mode, code, baseline=False)
    time.sleep(0.5)
    assert _processes_with(mark) == [], "a process of the run is still alive"


def _processes_with(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if text.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


def test_training_before_the_clock_starts_is_refused(workspace, mode):
    code = ("import time\n_t = time.process_time()\n"
            "while time.process_time() - _t < 12.0:\n    pass  # work the budget's clock does not see\n")
    loop, record = _attack(workspace, mode, code)
    assert record.status == R.OVER_BUDGET and "before the budget's clock" in record.decision_reason


def test_validation_text_is_out_of_reach_in_the_sandbox_whatever_copy(workspace, tmp_path):
    """Copies of the validation text where a careless setup leaves them: the installer's cache in
    the home folder, another data cache root. Only the sandbox can keep them out of reach."""
    if not sandbox_available()[0]:
        pytest.skip(sandbox_available()[1])
    from autoresearch.harness.prepare import prepared_dir

    val = prepared_dir("builtin", workspace.settings.profile().vocab_size) / "val.tokens"
    copies = [Path.home() / ".cache" / "pip" / f"autoresearch-test-{os.getpid()}.bin",
              tmp_path / "other-cache-root" / "datasets" / "builtin" / "val.tokens"]
    for copy in copies:
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(val.read_bytes())
    paths = [str(val), *map(str, copies)]
    code = (f"for p in {paths!r}:\n    try:\n        n = len(open(p, 'rb').read())\n"
            f"        print('READ', p, n)\n    except OSError as e:\n        print('NOPE', p, type(e).__name__)\n")
    try:
        loop, record = _attack(workspace, "cold-sandbox", code, baseline=False)
        log = Path(record.log_path).read_text()
        assert "READ" not in log and log.count("NOPE") == 3
    finally:
        copies[0].unlink(missing_ok=True)


INJECT = """
import json, os
request = json.dumps({"run": {"script": "/bin/true", "cwd": "/", "env": {}, "log": "/dev/null"}})
for fd in (0, 1):
    try:
        handle = os.open(f"/proc/{os.getppid()}/fd/{fd}", os.O_WRONLY)
        os.write(handle, (request + "\\n").encode())
        print("INJECTED", fd)
    except OSError as error:
        print("BLOCKED", fd, type(error).__name__)
"""


def test_a_warm_run_cannot_write_to_its_launcher(workspace):
    """The launcher's pipes are its control channel: a run that could write there could start
    processes of its own outside any run, or answer for the launcher."""
    _mode("warm-sandbox")
    loop, record = _attack(workspace, "warm-sandbox", INJECT)
    log = Path(record.log_path).read_text()
    assert "INJECTED" not in log and log.count("BLOCKED") == 2
    assert record.status != R.CRASH  # the run itself went on, and so does the loop
    with loop.services:
        again = loop.execute(loop.next_job())
    assert again.extra["start"] == "warm" and again.status not in REFUSED


CARRY = """
import ctypes, glob, os
libc = ctypes.CDLL(None, use_errno=True)
found = [p for p in ("/tmp/carry", "/stash", "/dev/shm/carry", "/dev/carry") if os.path.exists(p)]
if libc.shmget(0x5EED, 0, 0) != -1:
    found.append("sysv-shm")
if libc.syscall(250, 10, -4, b"user", b"autoresearch-carry-test", 0) > 0:  # keyctl search, user keyring
    found.append("keyring")
print("FOUND", sorted(found))
for path in ("/tmp/carry", "/stash", "/dev/shm/carry", "/dev/carry"):
    try:
        open(path, "w").write("weights")
    except OSError:
        pass
libc.shmget(0x5EED, 4096, 0o1000 | 0o600)  # IPC_CREAT
libc.syscall(248, b"user", b"autoresearch-carry-test", b"weights", 7, -4)  # add_key (x86-64 numbers)
"""


def test_nothing_a_warm_run_leaves_in_the_shared_sandbox_reaches_the_next(workspace):
    """Warm runs share one sandbox (the launcher's): its /tmp, root and /dev are read-only, and
    /dev/shm and System V IPC are emptied before each run; the kernel's key store, shared by
    every process of the user, is closed to runs."""
    import platform

    _mode("warm-sandbox")
    if platform.machine() != "x86_64":
        pytest.skip("the probe uses x86-64 system call numbers")
    text = (workspace.root / "train.py").read_text().replace(ANCHOR, CARRY + ANCHOR, 1)
    loop = ResearchLoop(workspace, agent=None, sandbox=True, warm_start="on")
    loop.prepare()
    with loop.services:
        assert loop.execute(loop.next_job()).status == R.KEEP
        first = loop.execute(Job(R.CANDIDATE), Proposal("leave things", {"train.py": text}))
        second = loop.execute(Job(R.CANDIDATE), Proposal("find them", {"train.py": text + "# again\n"}))
    assert first.extra["start"] == second.extra["start"] == "warm"
    assert "FOUND []" in Path(second.log_path).read_text()
