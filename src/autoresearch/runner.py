"""Runs one experiment: train.py in its own process group under a hard wall-clock limit,
then the sealed evaluator in a separate process. Nothing raises across this boundary:
the caller always gets a RunOutcome.
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
from autoresearch.integrity import integrity_reason
from autoresearch.summary import format_summary
from autoresearch.warmstart import KILL_WAITS, cold_start_reason

OK = "ok"  # measured; the policy decides keep or discard
OVER_BUDGET_SLACK = 1.05  # training may overrun its budget by 5% + 2 s (last step, submit)
OVER_BUDGET_GRACE_S = 2.0
LOG_TAIL_LINES = 50
POLL_S = 0.05  # how often a running process is checked: its exit is noticed this late at most
PID_FILE = "process.pid"
RUN_FILES = (S.SUBMISSION_FILE, S.MODEL_FILE, S.EVAL_FILE, S.TELEMETRY_FILE, S.LOG_FILE,
             S.INPROCESS_EVAL_FILE, S.ABORTED_FILE)


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
    account: dict = field(default_factory=dict)
    start: str = ""  # "warm" (forked from the launcher) or "cold" with the reason

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

    def __init__(self, cmd, *, cwd, env, log: Path, on_line=None):
        self._out = open(log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        self.pid_file = Path(log).with_name(PID_FILE)
        self.pid_file.write_text(str(self.pid))  # lets a restarted loop stop an orphan of a killed one
        self._pump = threading.Thread(target=_pump, args=(self.proc.stdout, self._out, on_line), daemon=True)
        self._pump.start()

    def poll(self):
        return self.proc.poll()

    def kill_group(self) -> None:
        """Stops the whole process group: train.py may have started workers of its own."""
        for sig, wait in KILL_WAITS:
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def finish(self) -> None:
        self._pump.join(timeout=5)
        self._out.close()
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


def _run_limited(cmd, *, cwd, env, log, limit: float, stop_event=None, on_line=None):
    """Runs cmd cold with output appended to `log`; returns (exit code | 'timeout' | 'interrupted', seconds)."""
    return _supervise(ColdProcess(cmd, cwd=cwd, env=env, log=log, on_line=on_line), limit=limit,
                      stop_event=stop_event)


def stop_orphan(run_dir: Path) -> bool:
    """Kills the process group a killed loop left running in `run_dir`, if it is still ours."""
    pid_file = Path(run_dir) / PID_FILE
    try:
        pid = int(pid_file.read_text())
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except (OSError, ValueError):
        return False
    if f"{S.ENV_RUN_DIR}={Path(run_dir).resolve()}".encode() not in environ.split(b"\0"):
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


def _child_env(workspace: Path, run_dir: Path, seed: int, managed: bool) -> dict:
    env = dict(os.environ)
    env.update({
        S.ENV_WORKSPACE: str(workspace), S.ENV_RUN_DIR: str(run_dir), S.ENV_SEED: str(seed),
        "PYTHONUNBUFFERED": "1",
    })
    if managed:
        env[S.ENV_MANAGED] = "1"
    else:
        env.pop(S.ENV_MANAGED, None)
    return env


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def evaluate_run(workspace: Path, run_dir: Path, *, timeout: float, stop_event=None,
                 evaluator=None) -> RunOutcome:
    """Evaluates what train.py submitted, in a separate process that runs only harness code:
    the loop's evaluation service when given and answering, else a one-shot evaluator."""
    run_dir = Path(run_dir)
    log = run_dir / S.LOG_FILE
    submission = _read_json(run_dir / S.SUBMISSION_FILE)
    if submission is None:
        fallback = _read_json(run_dir / S.INPROCESS_EVAL_FILE)
        if fallback is None:
            return RunOutcome(R.CRASH, "no result: train.py ended without submit(model)",
                              log_path=str(log), log_tail=log_tail(log))
        return _outcome_from_eval(fallback, fallback.get("account", {}), None, log)
    (run_dir / S.EVAL_FILE).unlink(missing_ok=True)  # only the evaluator below may write it
    code = None
    if evaluator is not None:
        answer, seconds = evaluator.evaluate(run_dir, timeout=timeout, stop_event=stop_event)
        if isinstance(answer, dict):
            code = 0
            with open(log, "a") as f:
                f.write(json.dumps(answer.get("result", {})) + "\n")
        elif answer is not None:
            code = answer  # timeout | interrupted
    if code is None:
        cmd = [sys.executable, "-m", "autoresearch.harness.evaluate", str(run_dir), "--workspace", str(workspace)]
        env = _child_env(workspace, run_dir, seed=0, managed=True)
        code, seconds = _run_limited(cmd, cwd=workspace, env=env, log=log, limit=timeout, stop_event=stop_event)
    account = submission.get("account", {})
    if code == "interrupted":
        return RunOutcome(R.INTERRUPTED, "stopped during evaluation", log_path=str(log), account=account)
    if code == "timeout":
        return RunOutcome(R.TIMEOUT, f"evaluation exceeded {timeout:.0f} s", log_path=str(log),
                          log_tail=log_tail(log), account=account)
    result = _read_json(run_dir / S.EVAL_FILE)
    if result is None:
        return RunOutcome(R.CRASH, f"evaluator exited {code} without a result; the submitted model is kept "
                          f"in {run_dir}", log_path=str(log), log_tail=log_tail(log), account=account)
    return _outcome_from_eval(result, account, seconds, log)


def _outcome_from_eval(result: dict, account: dict, seconds, log: Path) -> RunOutcome:
    status = {"ok": OK, "invalid": R.INVALID}.get(result.get("status"), R.CRASH)
    reason = result.get("error") or result.get("reason") or ""
    if result.get("trust") == "in-process" and result.get("reason"):
        reason = result["reason"]
    return RunOutcome(
        status=status, reason=reason, val_bpb=result.get("val_bpb"), trust=result.get("trust"),
        seed=account.get("seed"), training_seconds=account.get("harness_training_seconds"),
        eval_seconds=result.get("eval_seconds", seconds), peak_memory_mb=account.get("peak_memory_mb"),
        mfu_percent=account.get("mfu_percent"), total_tokens=account.get("total_tokens"),
        num_steps=account.get("num_steps"), num_params=_params(account), log_path=str(log),
        log_tail="" if status == OK else log_tail(log), account=account,
    )


def _params(account: dict):
    if account.get("num_params") is not None:
        return int(account["num_params"])
    if account.get("num_params_M") is not None:
        return int(float(account["num_params_M"]) * 1e6)
    return None


def run_experiment(workspace: Path, run_dir: Path, profile: Profile, *, seed: int, target: str = "train.py",
                   stop_event: threading.Event | None = None, on_line=None,
                   sandbox_data: str | None = None, launcher=None, evaluator=None) -> RunOutcome:
    """Trains `target` under the profile's budget, evaluates it, and judges the budget.

    `sandbox_data`: the workspace's data source; when given, training runs without network
    and without read access to that source's validation files (Linux). `launcher`: a
    WarmStarter to fork the run from (its output then goes to the log only, not to
    `on_line`); `evaluator`: the loop's EvaluatorService.
    """
    workspace, run_dir = Path(workspace).resolve(), Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in RUN_FILES:  # a stale file from an earlier attempt must not count
        (run_dir / name).unlink(missing_ok=True)
    log = run_dir / S.LOG_FILE
    limit = profile.time_budget + profile.startup_allowance
    env = _child_env(workspace, run_dir, seed, managed=True)
    started_wall = time.time()
    command = [sys.executable, target]
    if sandbox_data is not None:
        from autoresearch import sandbox

        command = sandbox.wrap_command(command, hidden_paths=sandbox.validation_paths(sandbox_data, profile.vocab_size),
                                       writable=[run_dir, workspace])
    process, start = None, "cold"
    if launcher is not None:
        reason = cold_start_reason(_read_text(workspace / target))
        if not reason:
            process = launcher.launch(target, cwd=workspace, env=env, log=log)
            reason = "" if process is not None else (launcher.failure or "the launcher is unavailable")
        start = "warm" if process is not None else f"cold: {reason}"
    if process is None:
        process = ColdProcess(command, cwd=workspace, env=env, log=log, on_line=on_line)
    code, train_wall = _supervise(process, limit=limit, stop_event=stop_event)
    if code == "interrupted":
        outcome = RunOutcome(R.INTERRUPTED, "stopped while training", log_path=str(log))
    elif code == "timeout":
        outcome = RunOutcome(R.TIMEOUT, f"killed after {limit:.0f} s (budget {profile.time_budget:.0f} s "
                             f"+ {profile.startup_allowance:.0f} s start-up)", log_path=str(log), log_tail=log_tail(log))
    elif code == S.ABORT_EXIT_CODE:
        reason = (run_dir / S.ABORTED_FILE).read_text().strip() if (run_dir / S.ABORTED_FILE).exists() else ""
        outcome = RunOutcome(R.ABORTED, reason or "aborted early", log_path=str(log), log_tail=log_tail(log))
    elif code != 0:
        outcome = RunOutcome(R.CRASH, f"train.py exited with code {code}", log_path=str(log), log_tail=log_tail(log))
    else:
        outcome = evaluate_run(workspace, run_dir, timeout=profile.eval_allowance, stop_event=stop_event,
                               evaluator=evaluator)
        outcome = judge_integrity(outcome, run_dir, started_wall)
        outcome = judge_budget(outcome, profile)
    outcome.seed = seed
    outcome.start = start
    eval_seconds = outcome.eval_seconds or 0.0
    outcome.wall_seconds = round(train_wall + eval_seconds, 3)
    outcome.summary = format_summary(summary_values(outcome, outcome.account, total_seconds=train_wall))
    with open(log, "a") as f:
        f.write("\n" + outcome.summary + "\n")
    return outcome


def judge_integrity(outcome: RunOutcome, run_dir: Path, started_wall: float) -> RunOutcome:
    """A run whose account was falsified is `invalid`, whatever its metric."""
    submission = _read_json(run_dir / S.SUBMISSION_FILE)
    if outcome.status not in (OK, R.INVALID) or submission is None:
        return outcome
    written = (run_dir / S.SUBMISSION_FILE).stat().st_mtime
    real = written - started_wall - float(submission.get("export_seconds") or 0.0)
    reason = integrity_reason(outcome.account, real_seconds=real)
    if reason:
        outcome.status, outcome.reason = R.INVALID, reason
    return outcome


def judge_budget(outcome: RunOutcome, profile: Profile) -> RunOutcome:
    trained = outcome.training_seconds
    allowed = profile.time_budget * OVER_BUDGET_SLACK + OVER_BUDGET_GRACE_S
    if outcome.status == OK and trained is not None and trained > allowed:
        outcome.status = R.OVER_BUDGET
        outcome.reason = f"trained {trained:.1f} s by the harness's clock, budget {profile.time_budget:.0f} s"
    return outcome


def summary_values(outcome: RunOutcome, account: dict, *, total_seconds: float) -> dict:
    """The figures of the `---` block: the metric from the evaluator, the rest from the harness."""
    values = {
        "val_bpb": outcome.val_bpb if outcome.val_bpb is not None else 0.0,
        "training_seconds": outcome.training_seconds or account.get("harness_training_seconds"),
        "total_seconds": total_seconds,
        "peak_vram_mb": outcome.peak_memory_mb or account.get("peak_memory_mb"),
        "mfu_percent": account.get("mfu_percent"),
        "total_tokens_M": (account.get("total_tokens") or 0) / 1e6,
        "num_steps": _int(account.get("num_steps")),
        "num_params_M": account.get("num_params_M"),
        "depth": _int(account.get("depth")),
        "trust": outcome.trust or "none",
        "eval_seconds": outcome.eval_seconds,
        "profile": account.get("profile"),
        "seed": _int(account.get("seed", outcome.seed)),
        "status": outcome.status,
        "reason": outcome.reason,
    }
    return values


def _int(value):
    return None if value is None else int(value)
