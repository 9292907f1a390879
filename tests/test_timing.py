"""The runner's judgement of a run's time, on observations it could have made."""
from autoresearch import records as R
from autoresearch.runclock import Timing
from autoresearch.timing import References, judge_timing, references_from


def honest(budget=10.0, step=0.5, start=3.0, export=1.0, **cpu) -> Timing:
    """A loop that checks its budget before each step: its last step ends just after it."""
    steps, t = [start], start
    while t - start < budget:
        t += step
        steps.append(t)
    return Timing(clock_start=start, steps=steps, submit=t + 0.05, ended=t + export, **cpu)


def test_an_honest_loop_is_within_budget_however_slow_its_steps():
    for step in (0.05, 0.5, 3.0, 6.0):  # 6 s steps: a 10 s budget on a badly overloaded machine
        assert judge_timing(honest(step=step), budget=10.0) is None, step


def test_a_step_begun_after_the_budget_is_over_budget():
    timing = honest(step=0.5)
    timing.steps += [timing.steps[-1] + 0.5 * k for k in (1, 2, 3)]  # 1.5 s more than the budget
    timing.submit = timing.steps[-1] + 0.05
    status, reason = judge_timing(timing, budget=10.0)
    assert status == R.OVER_BUDGET and "began after" in reason


def test_silent_training_after_the_budget_is_over_budget():
    timing = honest(step=0.5)
    timing.submit += 8.0  # no heartbeats, but submit() comes 8 s late
    status, reason = judge_timing(timing, budget=10.0)
    assert status == R.OVER_BUDGET and "submit()" in reason


def test_no_heartbeats_or_no_submit_is_invalid():
    assert judge_timing(Timing(), budget=10.0)[0] == R.INVALID
    timing = honest()
    timing.submit = None
    assert judge_timing(timing, budget=10.0)[0] == R.INVALID


def test_work_before_the_clock_is_judged_against_the_baseline_in_cpu_seconds():
    refs = References(startup_cpu=4.0)
    assert judge_timing(honest(startup_cpu=5.0), budget=60.0, refs=refs, cores=2) is None
    status, reason = judge_timing(honest(startup_cpu=20.0), budget=60.0, refs=refs, cores=2)
    assert status == R.OVER_BUDGET and "before the budget's clock" in reason
    assert judge_timing(honest(startup_cpu=20.0), budget=60.0, refs=None) is None  # no baseline yet


def test_work_hidden_in_the_export_is_judged_against_the_baseline():
    refs = References(export_cpu=1.0)
    assert judge_timing(honest(submit_cpu=10.0, end_cpu=11.5), budget=60.0, refs=refs) is None
    status, reason = judge_timing(honest(submit_cpu=10.0, end_cpu=40.0), budget=60.0, refs=refs)
    assert status == R.OVER_BUDGET and "after submit()" in reason


def test_references_are_the_medians_of_the_baseline_runs():
    refs = references_from([
        {"startup_cpu_s": 3.0, "submit_cpu_s": 50.0, "end_cpu_s": 51.0},
        {"startup_cpu_s": 5.0, "submit_cpu_s": 50.0, "end_cpu_s": 52.0},
        {"startup_cpu_s": 4.0, "submit_cpu_s": None, "end_cpu_s": 52.0},
    ])
    assert refs.startup_cpu == 4.0 and refs.export_cpu == 1.5
