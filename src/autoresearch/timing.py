"""Judges a run's time from what the runner itself observed (runclock.Timing).

The rules, each from outside the run, so that a loaded machine slows an honest run
without putting it over its budget, and a run's own clock cannot be tampered with:

- Budget: the budget's clock starts when the `c` heartbeat arrives. A training step may
  begin until the budget is spent; so at most one step may end after it (the honest
  loop's last one), and submit() must follow that last step within the time of a
  few steps. Step times are the intervals between the run's own heartbeats, measured by
  the runner, so a slow machine widens them for an honest run too.
- Start-up: work before the clock starts (imports, compilation, the untimed first
  steps) is measured in CPU seconds of the run's whole process tree, which a busy
  machine hardly changes, and compared with the baseline's own start-up. Without a
  baseline yet, only the profile's wall-clock start-up limit applies.
- Export: the same, for the CPU spent between submit() and the end of the run.

CPU time does not see work done on a GPU: there the wall-clock limits bound it.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from autoresearch import records as R
from autoresearch.runclock import Timing

STEP_TOLERANCE_S = 0.5  # heartbeat delivery and scheduling noise, on top of ...
STEP_TOLERANCE_SHARE = 0.02  # ... 2% of the budget
LAST_STEP_FACTOR = 3.0  # the last step and the call to submit(): up to 3 typical steps
LAST_STEP_MIN_S = 2.0  # a loaded machine may stall a process this long between two statements
STARTUP_FACTOR = 1.5  # start-up may cost 1.5x the baseline's CPU ...
STARTUP_SLACK_SHARE = 0.03  # ... plus 3% of the budget in CPU seconds per core
EXPORT_FACTOR = 3.0
EXPORT_SLACK_CPU_S = 5.0


@dataclass
class References:
    """Measured on the baseline's runs (median), per start kind ('warm' / 'cold')."""
    startup_cpu: float | None = None
    export_cpu: float | None = None


def median_step(timing: Timing, budget_end: float) -> float | None:
    inside = [t for t in timing.steps if t <= budget_end]
    gaps = [b - a for a, b in zip(inside, inside[1:])]
    return statistics.median(gaps) if gaps else None


def judge_timing(timing: Timing, *, budget: float, refs: References | None = None,
                 cores: int = 1) -> tuple[str, str] | None:
    """(status, reason) when the run broke a rule, else None."""
    if timing.clock_start is None:
        return R.INVALID, ("the budget's clock never started: train.py must take its training batches "
                           "from make_dataloader(...) (the harness starts the clock after WARMUP_STEPS of them)")
    if timing.submit is None:
        return R.INVALID, "the runner saw no call to submit(model): the submission did not come from the harness"
    budget_end = timing.clock_start + budget
    late = budget_end + STEP_TOLERANCE_S + STEP_TOLERANCE_SHARE * budget
    after = [t for t in timing.steps if t > late]
    if len(after) > 1:
        return R.OVER_BUDGET, (f"{len(after) - 1} training step(s) began after the {budget:.0f} s budget "
                               f"was spent (the last ended {after[-1] - budget_end:.1f} s after it, "
                               "by the runner's clock)")
    step = median_step(timing, budget_end) or LAST_STEP_MIN_S
    allowed = max(LAST_STEP_FACTOR * step, LAST_STEP_MIN_S)
    if timing.submit > late + allowed:
        return R.OVER_BUDGET, (f"submit() came {timing.submit - budget_end:.1f} s after the {budget:.0f} s "
                               f"budget was spent; the last step may take {allowed:.1f} s "
                               f"({LAST_STEP_FACTOR:.0f} typical steps of {step:.2f} s)")
    return _judge_cpu(timing, budget=budget, refs=refs, cores=cores)


def _judge_cpu(timing: Timing, *, budget: float, refs: References | None, cores: int):
    if refs is None:
        return None
    if refs.startup_cpu is not None and timing.startup_cpu is not None:
        allowed = STARTUP_FACTOR * refs.startup_cpu + STARTUP_SLACK_SHARE * budget * cores
        if timing.startup_cpu > allowed:
            return R.OVER_BUDGET, (f"start-up used {timing.startup_cpu:.1f} CPU-seconds before the budget's "
                                   f"clock started; the baseline used {refs.startup_cpu:.1f} (allowed "
                                   f"{allowed:.1f}): work before the clock is not free")
    export_cpu = export_cpu_seconds(timing)
    if refs.export_cpu is not None and export_cpu is not None:
        allowed = EXPORT_FACTOR * refs.export_cpu + EXPORT_SLACK_CPU_S
        if export_cpu > allowed:
            return R.OVER_BUDGET, (f"{export_cpu:.1f} CPU-seconds were spent after submit(); the baseline's "
                                   f"export took {refs.export_cpu:.1f} (allowed {allowed:.1f})")
    return None


def export_cpu_seconds(timing: Timing) -> float | None:
    if timing.submit_cpu is None or timing.end_cpu is None:
        return None
    return max(0.0, timing.end_cpu - timing.submit_cpu)


def references_from(summaries: list[dict]) -> References:
    """The median start-up and export CPU of the baseline runs' timing summaries."""
    startup = [s["startup_cpu_s"] for s in summaries if s.get("startup_cpu_s") is not None]
    export = [s["end_cpu_s"] - s["submit_cpu_s"] for s in summaries
              if s.get("end_cpu_s") is not None and s.get("submit_cpu_s") is not None]
    return References(startup_cpu=statistics.median(startup) if startup else None,
                      export_cpu=statistics.median(export) if export else None)
