"""Everything train.py may use from the harness, and nothing more.

    MAX_SEQ_LEN, TIME_BUDGET, WARMUP_STEPS, VOCAB_SIZE, EVAL_TOKENS, SEED, PROFILE   frozen constants
    get_tokenizer()                                                     the workspace's tokenizer
    make_dataloader(tokenizer, B, T, "train", device=...)               training batches only
    log(step, **metrics)                                                once per step: heartbeat + telemetry
    submit(model, **stats)                                              hand over for evaluation

Time is judged by the runner, from outside: each log() call sends it a heartbeat that
it stamps with its own clock. The budget's clock starts after WARMUP_STEPS logged steps;
a step may begin until the budget is spent. What train.py prints or reports about time
is shown, never believed.
"""
from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time

from autoresearch.harness import session as _session
from autoresearch.summary import format_summary

# A private reference to the clock, taken before any agent code runs.
_clock = time.monotonic
_START = _clock()

_SESSION = _session.current_session()
_PROFILE = _SESSION.profile

PROFILE = _PROFILE.name
MAX_SEQ_LEN = _PROFILE.max_seq_len
TIME_BUDGET = _PROFILE.time_budget
VOCAB_SIZE = _PROFILE.vocab_size
EVAL_TOKENS = _PROFILE.eval_tokens
SEED = _SESSION.seed

WARMUP_STEPS = _PROFILE.warmup_steps  # steps before the budget's clock starts (compilation)
DATA_ORDER_SEED = 0  # the training data's order is part of the frozen harness
DIVERGENCE_FACTOR = 1.5  # loss this far above its lowest, late in training, is diverging
MAX_LOSS = 100.0


class _Account:
    """What the harness itself saw of the run."""

    def __init__(self):
        self.batches = 0
        self.tokens = 0
        self.first_batch_at = None
        # after WARMUP_STEPS batches: compile and warmup excluded; counting batches, not steps,
        # starts the clock early under gradient accumulation, never late
        self.clock_start_at = None
        self.lowest_loss = math.inf


_ACCOUNT = _Account()
_telemetry_file = None
_last_flush = 0.0
_events_fd = None  # the runner's heartbeat FIFO (absent for `python train.py` alone)
_logged_steps = 0


def _heartbeat(event: bytes) -> None:
    """One byte to the runner, which stamps it with its own clock."""
    global _events_fd
    path = os.environ.get(_session.ENV_EVENTS)
    if not path:
        return
    try:
        if _events_fd is None:
            _events_fd = os.open(path, os.O_WRONLY)
        os.write(_events_fd, event)
    except OSError:
        pass  # the runner is gone; the run ends anyway


def _prepared():
    from autoresearch.harness.prepare import load_prepared

    return load_prepared(_SESSION.settings.experiment.data, VOCAB_SIZE)


def get_tokenizer():
    return _prepared().tokenizer()


def make_dataloader(tokenizer, batch_size: int, seq_len: int, split: str = "train", *, device="cpu"):
    """Yields (x, y, epoch) batches of the training split; the validation split is not served."""
    if split != "train":
        raise PermissionError(
            f"training code can only read the 'train' split, not {split!r}: "
            "the validation split is reserved for the sealed evaluator"
        )
    if seq_len > MAX_SEQ_LEN:
        raise ValueError(f"seq_len {seq_len} exceeds the profile's MAX_SEQ_LEN {MAX_SEQ_LEN}")
    from autoresearch.harness.dataloader import make_loader

    del tokenizer  # the token files were made with this same tokenizer
    # one data order for every run, whatever its seed: runs are compared on the same data, so
    # the noise between them is only initialisation and timing (the seed changes those)
    loader = make_loader(_prepared(), batch_size, seq_len, "train", device=device, seed=DATA_ORDER_SEED)
    return _counted(loader, batch_size * seq_len)


def _counted(loader, tokens_per_batch: int):
    for batch in loader:
        now = _clock()
        if _ACCOUNT.first_batch_at is None:
            _ACCOUNT.first_batch_at = now
            if WARMUP_STEPS == 0:
                _heartbeat(b"c")
        if _ACCOUNT.batches == WARMUP_STEPS:
            _ACCOUNT.clock_start_at = now
        _ACCOUNT.batches += 1
        _ACCOUNT.tokens += tokens_per_batch
        yield batch


def harness_training_seconds() -> float:
    """Training time by the harness's clock: from the batch after warmup to now."""
    start = _ACCOUNT.clock_start_at or _ACCOUNT.first_batch_at
    return 0.0 if start is None else _clock() - start


def log(step: int, **metrics) -> None:
    """Call once per training step: the runner's heartbeat, telemetry for the live view and
    the agent; stops a run whose loss blew up."""
    global _telemetry_file, _last_flush, _logged_steps
    _heartbeat(b"s")
    _logged_steps += 1
    if _logged_steps == WARMUP_STEPS:
        _heartbeat(b"c")  # the untimed warm-up steps are done: the budget's clock starts
    if _telemetry_file is None:
        _telemetry_file = open(_SESSION.run_dir / _session.TELEMETRY_FILE, "a", buffering=1 << 16)
    record = {"step": int(step), "t": time.time()}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        record[key] = value
    _telemetry_file.write(json.dumps(record) + "\n")
    now = _clock()
    if now - _last_flush > 1.0:
        _telemetry_file.flush()
        _last_flush = now
    loss = record.get("loss")
    if isinstance(loss, (int, float)):
        _check_loss(float(loss), float(record.get("progress", 0.0) or 0.0))


def _check_loss(loss: float, progress: float) -> None:
    reason = None
    if not math.isfinite(loss) or loss > MAX_LOSS:
        reason = f"loss is {loss}"
    elif progress > 0.3 and loss > DIVERGENCE_FACTOR * _ACCOUNT.lowest_loss:
        reason = f"loss {loss:.4f} diverged (lowest so far {_ACCOUNT.lowest_loss:.4f})"
    _ACCOUNT.lowest_loss = min(_ACCOUNT.lowest_loss, loss)
    if reason:
        if _telemetry_file is not None:
            _telemetry_file.flush()
        print(f"ABORT: {reason}", flush=True)
        (_SESSION.run_dir / _session.ABORTED_FILE).write_text(reason + "\n")
        os._exit(_session.ABORT_EXIT_CODE)


def _peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _account_stats(stats: dict) -> dict:
    """The harness's own figures override anything train.py reports under the same name."""
    merged = {k: v for k, v in stats.items() if isinstance(v, (int, float, str)) or v is None}
    merged.update(
        harness_training_seconds=round(harness_training_seconds(), 3),
        total_tokens=_ACCOUNT.tokens,
        batches_served=_ACCOUNT.batches,
        peak_memory_mb=round(_peak_memory_mb(), 1),
        startup_seconds=round((_ACCOUNT.first_batch_at or _clock()) - _START, 3),
        process_seconds=round(_clock() - _START, 3),
        seed=SEED,
        profile=PROFILE,
        time_budget=TIME_BUDGET,
    )
    return merged


def _snapshot() -> dict:
    """What train.py must not change at run time: clocks, constants, the harness's own functions."""
    module = sys.modules[__name__]
    watched = {name: getattr(module, name) for name in
               ("PROFILE", "MAX_SEQ_LEN", "TIME_BUDGET", "VOCAB_SIZE", "EVAL_TOKENS", "SEED", "WARMUP_STEPS",
                "_clock", "_ACCOUNT", "_counted", "make_dataloader", "harness_training_seconds", "log",
                "_check_loss", "_account_stats", "submit", "_snapshot", "tampering")}
    watched.update({f"time.{name}": getattr(time, name) for name in ("monotonic", "time", "perf_counter")})
    codes = {name: value.__code__ for name, value in watched.items() if hasattr(value, "__code__")}
    return {"objects": watched, "codes": codes}


def tampering() -> list[str]:
    """Names whose object or code differs from what the harness saw at import."""
    now = _snapshot()
    changed = [name for name, value in _SNAPSHOT["objects"].items() if now["objects"].get(name) is not value]
    changed += [f"{name}.__code__" for name, code in _SNAPSHOT["codes"].items()
                if now["codes"].get(name) is not code and name not in changed]
    return sorted(changed)


def submit(model, **stats) -> None:
    """Hands the trained model to the evaluator. Call once, at the end of train.py."""
    _heartbeat(b"e")  # first: training is over; what follows is the export
    from autoresearch.harness import export as export_mod

    account = _account_stats(stats)
    account["tampered"] = tampering()
    if _telemetry_file is not None:
        _telemetry_file.flush()
    run_dir = _SESSION.run_dir
    try:
        export_mod.export_model(
            getattr(model, "_orig_mod", model), run_dir,
            batch_size=_PROFILE.eval_batch_size, seq_len=MAX_SEQ_LEN, vocab_size=VOCAB_SIZE,
            autocast_dtype=_eval_autocast_dtype(model), extra={"account": account},
        )
    except export_mod.ExportError as error:
        _evaluate_here(model, account, reason=str(error))
    if not _SESSION.managed:
        _evaluate_and_print(account)


def _eval_autocast_dtype(model):
    import torch

    device = next(model.parameters()).device
    return torch.bfloat16 if device.type == "cuda" else None


def _evaluate_here(model, account: dict, reason: str) -> None:
    """Export failed: evaluate inside this process, at the lower trust level."""
    from autoresearch.harness.dataloader import validation_batches
    from autoresearch.harness.evaluate import evaluate_in_process

    prepared = _prepared()
    batches = validation_batches(prepared, _PROFILE.eval_batch_size, MAX_SEQ_LEN, EVAL_TOKENS)
    result = evaluate_in_process(getattr(model, "_orig_mod", model), batches, prepared.token_bytes(),
                                 autocast_dtype=_eval_autocast_dtype(model))
    data = result.to_dict()
    data["reason"] = f"export failed: {reason}"
    data["account"] = account
    path = _SESSION.run_dir / _session.INPROCESS_EVAL_FILE
    path.write_text(json.dumps(data, indent=1))


def _evaluate_and_print(account: dict) -> None:
    """`python train.py` alone: run the sealed evaluator, then print the summary block."""
    from autoresearch.runner import evaluate_run, summary_values

    outcome = evaluate_run(_SESSION.workspace, _SESSION.run_dir, timeout=_PROFILE.eval_allowance)
    print(format_summary(summary_values(outcome, account, total_seconds=_clock() - _START)), flush=True)


_SNAPSHOT = _snapshot()  # taken at import, before train.py's own code runs
