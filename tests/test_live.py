import io
import json
import threading
import time

from rich.console import Console

from autoresearch import live
from autoresearch.records import ExperimentRecord as R


def text_of(renderable) -> str:
    console = Console(file=io.StringIO(), width=120)
    console.print(renderable)
    return console.file.getvalue()


def test_live_panel_shows_running_experiment_telemetry_best_and_noise():
    view = live.LiveView(console=Console(file=io.StringIO(), width=120))
    view.set_best(0.998, 1)
    view.set_noise(0.0004)
    view.experiment_started(7, "swap relu for swiglu", 300)
    view.telemetry(120, {"loss": 3.21, "tok_per_sec": 20000, "progress": 0.4})
    out = text_of(view)
    assert "#7 swap relu for swiglu" in out
    assert "40%" in out and "/ 5m00s" in out
    assert "step 120" in out and "loss 3.2100" in out and "tok/s 20,000" in out
    assert "best 0.998000 (#1)" in out
    assert "noise σ 0.000400" in out


def test_live_panel_lists_last_results_with_delta_against_best():
    view = live.LiveView(console=Console(file=io.StringIO(), width=120))
    view.set_best(1.0, 1)
    for i in range(2, 12):
        view.experiment_finished(R(id=i, status="discard", val_bpb=1.0 + i / 1000, description=f"idea {i}"))
    view.experiment_finished(R(id=12, status="crash", description="oom"))
    out = text_of(view)
    assert "idea 4" not in out  # only the last RECENT results
    assert "idea 5" in out
    row = next(line for line in out.splitlines() if "idea 11" in line).split()
    assert row[1:6] == ["11", "discard", "1.011000", "+0.011000", "idea"]
    assert next(line for line in out.splitlines() if "oom" in line).split()[1:5] == ["12", "crash", "—", "—"]
    assert "11 done, 0 kept" in out


def test_finished_experiment_clears_running_line():
    view = live.LiveView(console=Console(file=io.StringIO(), width=120))
    view.experiment_started(3, "x", 60)
    view.experiment_finished(R(id=3, status="keep", val_bpb=0.9))
    out = text_of(view)
    assert "idle" in out and "1 kept" in out


def test_progress_falls_back_to_elapsed_over_budget():
    state = live.PanelState(running_id=1, budget_seconds=100.0, started_at=1000.0)
    assert state.progress(now=1025.0) == 0.25
    assert state.progress(now=5000.0) == 1.0
    state.metrics = {"progress": 0.6}
    assert state.progress(now=1025.0) == 0.6


def test_live_view_starts_and_stops_on_a_terminal():
    console = Console(file=io.StringIO(), width=100, force_terminal=True)
    view = live.make_view(plain=False, console=console)
    assert isinstance(view, live.LiveView)
    with view:
        view.experiment_started(1, "baseline", 60)
        view.message("agent says hi")
    assert "agent says hi" in console.file.getvalue()


def test_make_view_plain_when_asked_or_not_a_terminal():
    assert isinstance(live.make_view(plain=False, console=Console(file=io.StringIO())), live.PlainView)
    terminal = Console(file=io.StringIO(), force_terminal=True)
    assert isinstance(live.make_view(plain=True, console=terminal), live.PlainView)


def test_render_status_from_records_and_running_experiment():
    records = [R(id=1, kind="baseline", status="keep", val_bpb=1.0, noise_sigma=0.0003),
               R(id=2, status="keep", val_bpb=0.99, description="wider mlp"),
               R(id=3, status="timeout", description="huge model")]
    running = {"id": 4, "description": "rope base", "budget_seconds": 300,
               "started_at": time.time() - 60, "step": 50, "loss": 3.5, "tok_per_sec": 1234}
    out = text_of(live.render_status(records, running))
    assert "#4 rope base" in out and "loss 3.5000" in out and "tok/s 1,234" in out
    assert "20%" in out  # 60 s of 300, no telemetry progress
    assert "best 0.990000 (#2)" in out and "noise σ 0.000300" in out
    assert next(line for line in out.splitlines() if "wider mlp" in line).split()[4] == "-0.010000"
    assert "3 done, 1 kept" in out
    assert "idle" in text_of(live.render_status([], None))


def test_render_status_treats_a_last_running_record_as_in_flight():
    records = [R(id=1, kind="baseline", status="keep", val_bpb=1.0),
               R(id=2, status="running", description="deeper", started_at=time.time() - 5)]
    out = text_of(live.render_status(records, None))
    assert "running #2 deeper" in out


def strip_time(output: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in output.splitlines()]


def test_plain_view_one_line_per_event_without_terminal_codes():
    out = io.StringIO()
    view = live.PlainView(file=out)
    view.start()
    view.set_best(1.0, 1)
    view.set_noise(0.0005)
    view.experiment_started(2, "wider\nmlp", 300)
    view.telemetry(10, {"loss": 3.2, "tok_per_sec": 20000, "progress": 0.2})
    view.experiment_finished(R(id=2, status="keep", val_bpb=0.99, description="wider mlp",
                               decision_reason="beats best by 3 sigma"))
    view.message("stopping")
    view.stop()
    assert "\x1b" not in out.getvalue()
    assert strip_time(out.getvalue()) == [
        "best 1.000000 (#1)",
        "noise sigma 0.000500",
        "start #2 (budget 5m00s): wider mlp",
        "#2 step 10 loss 3.2000 tok/s 20,000 progress 20%",
        "done #2 keep val_bpb 0.990000 delta -0.010000: wider mlp (beats best by 3 sigma)",
        "stopping",
    ]


def test_plain_view_rate_limits_telemetry_per_experiment():
    now = [0.0]
    out = io.StringIO()
    view = live.PlainView(file=out, telemetry_every=10.0, clock=lambda: now[0])
    view.experiment_started(1, "a", 60)
    for t, step in ((0, 1), (5, 2), (10, 3), (15, 4)):
        now[0] = t
        view.telemetry(step, {"loss": 1.0})
    view.experiment_started(2, "b", 60)  # a new experiment shows its first line at once
    view.telemetry(5, {})
    steps = [line.split()[2] for line in strip_time(out.getvalue()) if " step " in line]
    assert steps == ["1", "3", "5"]


class Collect:
    def __init__(self):
        self.seen = []

    def telemetry(self, step, metrics):
        self.seen.append((step, metrics))


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        time.sleep(0.01)
    return cond()


def test_follow_telemetry_tails_a_growing_file(tmp_path):
    path = tmp_path / "telemetry.jsonl"
    view, stop = Collect(), threading.Event()
    thread = live.follow_telemetry(path, view, stop, poll_seconds=0.01)  # file not there yet
    with open(path, "w") as f:
        f.write(json.dumps({"step": 1, "loss": 3.0, "progress": 0.1}) + "\n")
        f.write('{"step": 2, "loss"')  # a line half written
        f.flush()
        assert wait_for(lambda: len(view.seen) == 1)
        time.sleep(0.05)
        assert len(view.seen) == 1  # the partial line waits for its end
        f.write(': 2.5}\nnot json\n{"step": 3, "tok_per_sec": 100}\n')
        f.flush()
        assert wait_for(lambda: len(view.seen) == 3)
        f.write('{"step": 4, "loss": 2.0}')  # last line of a finished run, no newline
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert view.seen == [(1, {"loss": 3.0, "progress": 0.1}), (2, {"loss": 2.5}),
                         (3, {"tok_per_sec": 100}), (4, {"loss": 2.0})]
