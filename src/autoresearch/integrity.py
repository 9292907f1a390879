"""Checks the runner makes on a finished run, from outside the training process.

train.py runs in the same process as the harness's account of it, so a determined edit
could falsify that account. These checks compare it with what the runner saw itself:
the process's real lifetime and the harness's record of changed objects.
"""
from __future__ import annotations

CLOCK_TOLERANCE = 0.9  # the harness's clock may read 10% slow (scheduling noise) ...
CLOCK_GRACE_S = 10.0  # ... plus the interpreter's and torch's imports before the harness starts its clock


def tamper_reason(account: dict) -> str | None:
    changed = account.get("tampered") or []
    if changed:
        return f"the harness was changed at run time: {', '.join(changed)}"
    return None


def clock_reason(account: dict, *, real_seconds: float) -> str | None:
    """`real_seconds`: by the runner's clock, from the process start to the harness's account."""
    claimed = account.get("process_seconds")
    if claimed is None:
        return "the harness kept no account of the run"
    if claimed < real_seconds * CLOCK_TOLERANCE - CLOCK_GRACE_S:
        return (f"the harness's clock says the process ran {claimed:.1f} s, the runner measured "
                f"{real_seconds:.1f} s: the clock was tampered with")
    trained = account.get("harness_training_seconds") or 0.0
    startup = account.get("startup_seconds") or 0.0
    if trained + startup > claimed + 1.0:
        return f"training ({trained:.1f} s) and start-up ({startup:.1f} s) exceed the process's {claimed:.1f} s"
    return None


def integrity_reason(account: dict, *, real_seconds: float) -> str | None:
    return tamper_reason(account) or clock_reason(account, real_seconds=real_seconds)
