"""Runs one experiment: train.py in a private scratch folder, contained (every process it
starts ends with it) and, where it can be, sandboxed, under a hard wall-clock limit; then
the sealed evaluator in a separate process. The runner's own clock judges the budget,
and only the runner writes the run's folder in the workspace: it collects the run's
outputs once every process of the run has ended. Nothing raises across this boundary:
the caller always gets a RunOutcome. See THREATS.md for what each step guards against.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from autoresearch import records as R
from autoresearch.harness import session as S
from autoresearch.harness.profiles import Profile
from autoresearch.integrity import tamper_reason
from autoresearch.runclock import RunClock
from autoresearch.scratch import Scratch, collect_log, collect_outputs, sweep
from autoresearch.summary import format_summary
from autoresearch.timing import judge_timing
from autoresearch.warmstart import KILL_WAITS, cold_start_reason

OK = "ok"  # measured; the policy decides keep or discard
LOG_TAIL_LINES = 50
POLL_S = 0.05  # how often a running process is checked: its exit is noticed this late at most
PID_FILE = "process.pid"
WARM_LOG = "warm.log"  # a warm run's output, in its scratch folder; collected into run.log
RUN_FILES = (S.SUBMISSION_FILE, S.MODEL_FILE, S.EVAL_FILE, S.TELEMETRY_FILE, S.LOG_FILE,
             S.INPROCESS_EVAL_FILE, S.ABORTED_FILE)
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")  # never handed to a run


@dataclass
class RunOutcome:
    status: str  # OK or one of records' failure statuses
    reason: str = ""
    val_bpb: float | None = None
    trust: str | None = None
    seed: int | None = None
    training_seconds: float | None = None  # by the harness's clock
    wall_seconds: float | None = None  # training process + evaluation, by the runner's clock
    eval_seconds: float | None = None
    peak_memory_mb: float | None = None
    mfu_percent: float | None = None
    total_tokens: int | None = None
    num_steps: int | None = None
    num_params: int | None = None
    log_path: str = ""
    log_tail: str = ""
    summary: str = ""  # the `---` block, also appended to the run's log
    account: dict = field(default_factory=dict)  # what the run reported: shown, never trusted
    start: str = ""  # "warm" (forked from the launcher) or "cold" with the reason
    timing: dict = field(default_factory=dict)  # the runner's own observations (runclock.Timing)
    sandbox: str = "off"  # the mechanism that confined the run, or "off"

    def to_dict(self) -> dict:
        return asdict(self)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ColdProcess:
    """`cmd` in a new process of its own, output appended to the log (and to `on_line`)."""

    def __init__(self, cmd, *, cwd, env, log: Path, on_line=None, pid_file: Path | None = None):
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        self.exit_cpu: float | None = None  # the process and every descendant it waited for
        self.pid_file = pid_file
        if pid_file is not None:  # lets a restarted loop stop an orphan of a killed one
            pid_file.write_text(json.dumps({"pid": self.pid, "run_dir": env.get(S.ENV_RUN_DIR, "")}))
        self._pump = threading.Thread(target=_pump, args=(self.proc.stdout, self._out, on_line), daemon=True)
        self._pump.start()

    def poll(self):
        if self.proc.returncode is None:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid == self.pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                self.exit_cpu = usage.ru_utime + usage.ru_stime
        return self.proc.returncode

    def kill_group(self) -> None:
        """Stops the whole process group: train.py may have started workers of its own."""
        for sig, wait in KILL_WAITS:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.poll() is not None:
                    return
                time.sleep(POLL_S)

    def finish(self) -> None:
        self._pump.join(timeout=5)
        self._out.close()
        if self.pid_file is not None:
            self.pid_file.unlink(missing_ok=True)


def _supervise(process, *, limit: float, stop_event=None):
    """Waits for a started process under the limit; returns (exit code | 'timeout' |
    'interrupted', seconds)."""
    started = time.monotonic()
    try:
        while True:
            code = process.poll()
            if code is not None:
                break
            if time.monotonic() - started > limit:
                process.kill_group()
                code = "timeout"
                break
            if stop_event is not None and stop_event.is_set():
                process.kill_group()
                code = "interrupted"
                break
            time.sleep(POLL_S)
    except BaseException:
        process.kill_group()
        raise
    finally:
        process.finish()
    return code, time.monotonic() - started


def stop_orphan(run_dir: Path) -> bool:
    """Kills the process group a killed loop left running for `run_dir`, if it is still ours."""
    pid_file = Path(run_dir) / PID_FILE
    try:
        info = json.loads(pid_file.read_text())
        pid, scratch_out = int(info["pid"]), str(info["run_dir"])
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if f"{S.ENV_RUN_DIR}={scratch_out}".encode() not in environ.split(b"\0"):
        return False  # the pid was reused by an unrelated process
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    pid_file.unlink(missing_ok=True)
    return True


def _pump(stream, out, on_line) -> None:
    for raw in iter(stream.readline, b""):
        out.write(raw)
        out.flush()
        if on_line is not None:
            on_line(raw.decode("utf-8", "replace").rstrip("\n"))
    stream.close()


def _child_env(scratch: Scratch, settings, seed: int) -> dict:
    """The run's environment: the machine's, without secrets and without anything naming the
    workspace, plus where its own files go."""
    from autoresearch.paths import cache_root

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("AUTORESEARCH_") and not any(m in k.upper() for m in SECRET_MARKERS)}
    env.update(scratch.run_env())
    env.update({
        S.ENV_RUN_DIR: str(scratch.out), S.ENV_SEED: str(seed), S.ENV_MANAGED: "1",
        S.ENV_SETTINGS: S.settings_env(settings), S.ENV_EVENTS: str(scratch.events),
        "AUTORESEARCH_CACHE": str(cache_root().resolve()), "PYTHONUNBUFFERED": "1",
    })
    return env


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_settings(workspace: Path, profile: Profile, settings=None):
    """The frozen settings a run is given: the workspace's own copy, with the profile's budget."""
    import copy

    from autoresearch.config import CONFIG_NAME, Settings, load_settings

    if settings is None:
        settings = load_settings(workspace) if (Path(workspace) / CONFIG_NAME).exists() else Settings()
    settings = copy.deepcopy(settings)
    settings.experiment.profile = profile.name
    settings.experiment.time_budget = profile.time_budget
    return settings


def evaluate_run(workspace: Path, run_dir: Path, *, timeout: float, stop_event=None, evaluator=None,
                 settings=None, sandbox: bool = False) -> RunOutcome:
    """Evaluates what the run submitted (the runner's copy in `run_dir`), in a separate process
    that runs only harness code: the loop's evaluation service when given and answering, else a
    one-shot evaluator. The evaluator only answers; the runner writes eval.json."""
    run_dir = Path(run_dir)
    log = run_dir / S.LOG_FILE
    (run_dir / S.EVAL_FILE).unlink(missing_ok=True)
    submission = _read_json(run_dir / S.SUBMISSION_FILE)
    if submission is None:
        fallback = _read_json(run_dir / S.INPROCESS_EVAL_FILE)
        if fallback is None:
            return RunOutcome(R.CRASH, "no result: train.py ended without submit(model)",
                              log_path=str(log), log_tail=log_tail(log))
        fallback["trust"] = "in-process"  # computed inside the run: never more, whatever it says
        return _outcome_from_eval(fallback, _account(fallback), None, log)
    from autoresearch.harness.evaluate import validation_spec

    account = _account(submission)
    settings = settings or run_settings(workspace, _profile_of(workspace))
    spec = validation_spec(settings.profile(), settings.experiment.data)
    model = run_dir / S.MODEL_FILE
    answer, seconds = None, 0.0
    if evaluator is not None:
        answer, seconds = evaluator.evaluate(model, submission, timeout=timeout, stop_event=stop_event)
    if answer is None:
        answer, seconds = _evaluate_once(spec, model, run_dir, submission, timeout=timeout,
                                         stop_event=stop_event, sandbox=sandbox)
    if answer == "interrupted":
        return RunOutcome(R.INTERRUPTED, "stopped during evaluation", log_path=str(log), account=account)
    if answer == "timeout":
        return RunOutcome(R.TIMEOUT, f"evaluation exceeded {timeout:.0f} s", log_path=str(log),
                          log_tail=log_tail(log), account=account)
    if not isinstance(answer, dict):
        return RunOutcome(R.CRASH, f"the evaluator gave no result ({answer}); the submitted model is kept "
                          f"in {run_dir}", log_path=str(log), log_tail=log_tail(log), account=account)
    from autoresearch.harness.export import write_json_atomic

    write_json_atomic(run_dir / S.EVAL_FILE, answer)
    with open(log, "a") as f:
        f.write(json.dumps(answer) + "\n")
    return _outcome_from_eval(answer, account, seconds, log)


def _account(data: dict) -> dict:
    account = data.get("account")
    return account if isinstance(account, dict) else {}


def _profile_of(workspace: Path) -> Profile:
    from autoresearch.config import load_settings

    return load_settings(workspace).profile()


def _evaluate_once(spec: dict, model: Path, run_dir: Path, submission: dict, *, timeout: float,
                   stop_event, sandbox: bool):
    """A one-shot evaluator process; returns (result dict | 'timeout' | 'interrupted' | why not, seconds)."""
    from autoresearch.harness.export import write_json_atomic

    request = run_dir / ".evaluate-submission.json"  # the runner's own copy, for the evaluator to read
    write_json_atomic(request, submission)
    cmd = [sys.executable, "-P", "-m", "autoresearch.harness.evaluate", "--validation", json.dumps(spec),
           "--model", str(model), "--submission", str(request)]
    if sandbox:
        cmd = evaluator_sandbox(spec["data"], spec["vocab_size"], [run_dir])(cmd)
    env = {k: v for k, v in os.environ.items() if not any(m in k.upper() for m in SECRET_MARKERS)}
    lines: list[str] = []
    started = time.monotonic()
    process = ColdProcess(cmd, cwd=run_dir, env=env, log=run_dir / S.LOG_FILE, on_line=lines.append)
    code, seconds = _supervise(process, limit=timeout, stop_event=stop_event)
    request.unlink(missing_ok=True)
    if code in ("timeout", "interrupted"):
        return code, seconds
    for line in reversed(lines):
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if isinstance(message, dict) and isinstance(message.get("result"), dict):
            return message["result"], time.monotonic() - started
    return f"evaluator exited {code}", seconds


def evaluator_sandbox(data: str, vocab_size: int, readable: list[Path]):
    """Wraps an evaluator command: no network, nothing writable, the validation data readable."""
    from autoresearch import sandbox

    paths = [*sandbox.prepared_paths(data, vocab_size, include_validation=True), *readable]
    return lambda cmd: sandbox.wrap_command(cmd, hidden_paths=[], writable=[], readable=paths)


def _outcome_from_eval(result: dict, account: dict, seconds, log: Path) -> RunOutcome:
    status = {"ok": OK, "invalid": R.INVALID}.get(result.get("status"), R.CRASH)
    reason = str(result.get("error") or result.get("reason") or "")
    trust = result.get("trust") if result.get("trust") in R.TRUST_LEVELS else None
    return RunOutcome(
        status=status, reason=reason, val_bpb=_number(result.get("val_bpb")), trust=trust,
        seed=_number(account.get("seed")), training_seconds=_number(account.get("harness_training_seconds")),
        eval_seconds=_number(result.get("eval_seconds", seconds)), peak_memory_mb=_number(account.get("peak_memory_mb")),
        mfu_percent=_number(account.get("mfu_percent")), total_tokens=_number(account.get("total_tokens")),
        num_steps=_number(account.get("num_steps")), num_params=_params(account), log_path=str(log),
        log_tail="" if status == OK else log_tail(log), account=account,
    )


def _number(value):
    """A figure from a file a run wrote: a finite number or nothing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if value == value and abs(value) != float("inf") else None


def _params(account: dict):
    if _number(account.get("num_params")) is not None:
        return int(account["num_params"])
    if _number(account.get("num_params_M")) is not None:
        return int(float(account["num_params_M"]) * 1e6)
    return None


def run_experiment(workspace: Path, run_dir: Path, profile: Profile, *, seed: int, target: str = "train.py",
                   settings=None, files: dict | None = None, stop_event: threading.Event | None = None,
                   on_line=None, sandbox: bool = False, launcher=None, evaluator=None,
                   refs: dict | None = None, scratch_parent: Path | None = None) -> RunOutcome:
    """Trains `target` under the profile's budget, evaluates it, and judges its time.

    `files`: the editable files as the run gets them (default: read from the workspace);
    `sandbox`: confine the run (no network, an allow-listed filesystem without the
    validation data, the workspace or other runs); `launcher`: a WarmStarter to fork the
    run from (its output then goes to the log only, not to `on_line`); `evaluator`: the
    loop's EvaluatorService; `refs`: {'warm'|'cold': References} from the baseline's runs;
    `scratch_parent`: the loop's own folder for scratch folders, emptied after the run.
    """
    workspace, run_dir = Path(workspace).resolve(), Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:  # a stale file from an earlier attempt must not count
        (run_dir / name).unlink(missing_ok=True)
    log = run_dir / S.LOG_FILE
    settings = run_settings(workspace, profile, settings)
    if files is None:
        names = dict.fromkeys([*settings.experiment.editable, target])
        files = {name: (workspace / name).read_bytes() for name in names if (workspace / name).is_file()}
    from autoresearch import compilecache

    scratch = Scratch.create(files, label=run_dir.name, parent=scratch_parent)
    try:
        compilecache.seed(scratch.cache, profile.name)
        env = _child_env(scratch, settings, seed)
        clock = RunClock(scratch.events)
        process, start = _start(scratch, target, env, log, settings, profile, sandbox=sandbox,
                                launcher=launcher, on_line=on_line, pid_file=run_dir / PID_FILE)
        clock.attach(process.host_pid() if hasattr(process, "host_pid") else process.pid)
        code, train_wall = _supervise(process, limit=profile.time_budget + profile.startup_allowance,
                                      stop_event=stop_event)
        timing = clock.finish(exit_cpu=getattr(process, "exit_cpu", None))
        if start == "warm":
            collect_log(scratch, WARM_LOG, log)
        refused = collect_outputs(scratch, run_dir)
        if code == 0 and not refused and compilecache.trusted_run(files.get(target), profile.name):
            compilecache.promote(scratch.cache, profile.name)
    finally:
        scratch.remove()
        if scratch_parent is not None:
            sweep(scratch_parent)
    summary = timing.summary()
    outcome = _training_outcome(code, log, run_dir, profile, refused)
    if outcome is None:
        verdict = judge_timing(timing, budget=profile.time_budget, refs=(refs or {}).get(start.split(":")[0]),
                               cores=_cores())
        summary["refused"] = list(verdict) if verdict else None  # kept for a re-evaluation
        outcome = evaluate_run(workspace, run_dir, timeout=profile.eval_allowance, stop_event=stop_event,
                               evaluator=evaluator, settings=settings, sandbox=sandbox)
        outcome = judge_run(outcome, summary)
    outcome.seed = seed
    outcome.start = start
    outcome.sandbox = _sandbox_name() if sandbox else "off"
    outcome.timing = summary
    eval_seconds = outcome.eval_seconds or 0.0
    outcome.wall_seconds = round(train_wall + eval_seconds, 3)
    outcome.summary = format_summary(summary_values(outcome, outcome.account, total_seconds=train_wall))
    with open(log, "a") as f:
        f.write("\n" + outcome.summary + "\n")
    return outcome


def _sandbox_name() -> str:
    from autoresearch.sandbox import sandbox_available

    ok, name = sandbox_available()
    return name if ok else "off"


def _start(scratch: Scratch, target: str, env: dict, log: Path, settings, profile: Profile, *, sandbox: bool,
           launcher, on_line, pid_file: Path):
    """Starts the run warm (forked by the launcher) or cold; returns (process, start kind)."""
    reason = ""
    if launcher is not None:
        reason = cold_start_reason((scratch.work / target).read_text(errors="replace"))
        if not reason:
            process = launcher.launch(target, cwd=scratch.work, env=env, log=scratch.out / WARM_LOG)
            if process is not None:
                return process, "warm"
            reason = launcher.failure or "the launcher is unavailable"
    # contained (and kept from the kernel's key store) with or without the sandbox around it
    command = [sys.executable, "-m", "autoresearch.contain", "--", sys.executable, target]
    if sandbox:
        command = run_sandbox(settings, scratch.root)(command)
    process = ColdProcess(command, cwd=scratch.work, env=env, log=log, on_line=on_line, pid_file=pid_file)
    return process, f"cold: {reason}" if reason else "cold"


def run_sandbox(settings, writable: Path, *, shared: bool = False):
    """Wraps a training command (or, `shared`, the launcher of many runs): the training data
    readable, `writable` writable."""
    from autoresearch import sandbox

    data, vocab = settings.experiment.data, settings.profile().vocab_size
    readable = sandbox.prepared_paths(data, vocab, include_validation=False)
    hidden = sandbox.validation_paths(data, vocab)
    return lambda cmd: sandbox.wrap_command(cmd, hidden_paths=hidden, writable=[writable], readable=readable,
                                            shared=shared)


def _training_outcome(code, log: Path, run_dir: Path, profile: Profile, refused: list[str]) -> RunOutcome | None:
    """The outcome when training itself ended it; None when there is something to evaluate."""
    if code == "interrupted":
        return RunOutcome(R.INTERRUPTED, "stopped while training", log_path=str(log))
    if code == "timeout":
        return RunOutcome(R.TIMEOUT, f"killed after {profile.time_budget + profile.startup_allowance:.0f} s "
                          f"(budget {profile.time_budget:.0f} s + {profile.startup_allowance:.0f} s start-up)",
                          log_path=str(log), log_tail=log_tail(log))
    if code == S.ABORT_EXIT_CODE:
        aborted = run_dir / S.ABORTED_FILE
        reason = aborted.read_text(errors="replace").strip()[:500] if aborted.exists() else ""
        return RunOutcome(R.ABORTED, reason or "aborted early", log_path=str(log), log_tail=log_tail(log))
    if code != 0:
        return RunOutcome(R.CRASH, f"train.py exited with code {code}", log_path=str(log), log_tail=log_tail(log))
    if refused:
        return RunOutcome(R.INVALID, "outputs refused: " + "; ".join(refused), log_path=str(log),
                          log_tail=log_tail(log))
    return None


def judge_run(outcome: RunOutcome, timing: dict) -> RunOutcome:
    """A measured run whose time broke a rule (`timing["refused"]`, judged when training ended),
    or whose harness was changed, is not a result."""
    if outcome.status != OK and outcome.status != R.INVALID:
        return outcome
    if timing.get("clock_start_s") is not None and timing.get("submit_s") is not None:
        outcome.training_seconds = round(timing["submit_s"] - timing["clock_start_s"], 3)  # the runner's clock
    if outcome.status != OK:
        return outcome
    verdict = tuple(timing["refused"]) if timing.get("refused") else None
    if verdict is None:
        tampered = tamper_reason(outcome.account)
        verdict = (R.INVALID, tampered) if tampered else None
    if verdict is not None:
        outcome.status, outcome.reason = verdict
    return outcome


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def summary_values(outcome: RunOutcome, account: dict, *, total_seconds: float) -> dict:
    """The figures of the `---` block: the metric from the evaluator, time from the runner,
    the rest as the run reported it."""
    values = {
        "val_bpb": outcome.val_bpb if outcome.val_bpb is not None else 0.0,
        "training_seconds": outcome.training_seconds,
        "total_seconds": total_seconds,
        "peak_vram_mb": outcome.peak_memory_mb,
        "mfu_percent": _number(account.get("mfu_percent")),
        "total_tokens_M": (_number(account.get("total_tokens")) or 0) / 1e6,
        "num_steps": _int(account.get("num_steps")),
        "num_params_M": _number(account.get("num_params_M")),
        "depth": _int(account.get("depth")),
        "trust": outcome.trust or "none",
        "eval_seconds": outcome.eval_seconds,
        "profile": account.get("profile") if isinstance(account.get("profile"), str) else None,
        "seed": _int(outcome.seed if outcome.seed is not None else account.get("seed")),
        "status": outcome.status,
        "reason": outcome.reason,
    }
    return values


def _int(value):
    value = _number(value)
    return None if value is None else int(value)
