"""The harness's own note of run-time changes to itself, read by the runner.

train.py runs in the same process as the harness, so this is a tripwire, not a boundary:
a run that patches the harness's clock, constants or functions is named here. Time itself
is judged from outside the run (timing.py), and results come only from the evaluator.
"""
from __future__ import annotations


def tamper_reason(account: dict) -> str | None:
    changed = account.get("tampered") or []
    if isinstance(changed, list) and changed:
        return f"the harness was changed at run time: {', '.join(map(str, changed))}"
    return None
