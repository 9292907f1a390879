"""What the research loop shows while it works: a live rich panel, or plain log lines.

Both views take the same events from the loop; `make_view` picks one. The panel is a pure
function of a small state object, so `autoresearch status` draws the same thing from the
ledger without a running loop.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from autoresearch.records import (
    ABORTED, BASELINE, CRASH, DISCARD, FAILED_PROPOSAL, INTERRUPTED, INVALID, KEEP, OVER_BUDGET,
    PENDING, RUNNING, TIMEOUT, ExperimentRecord,
)
from autoresearch.report import accepted_value, deltas, ordered, summarize

RECENT = 8  # results shown in the panel's table
PLAIN_TELEMETRY_EVERY = 10.0  # seconds between telemetry lines in plain output

STATUS_STYLE = {
    KEEP: "bold green", DISCARD: "bright_black", PENDING: "yellow",
    CRASH: "red", TIMEOUT: "red", ABORTED: "red", INTERRUPTED: "yellow",
    INVALID: "magenta", OVER_BUDGET: "magenta", FAILED_PROPOSAL: "yellow", RUNNING: "cyan",
}


# ---------------------------------------------------------------------------
# formatting shared by both views

def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _num(v, fmt: str) -> str:
    return "—" if v is None else format(v, fmt)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    m, s = divmod(int(max(0.0, seconds)), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def _delta(value: float | None, best: float | None) -> float | None:
    return None if value is None or best is None else value - best


# ---------------------------------------------------------------------------
# the panel

@dataclass
class Result:
    id: int
    status: str
    val_bpb: float | None
    delta: float | None
    description: str


@dataclass
class PanelState:
    running_id: int | None = None
    description: str = ""
    budget_seconds: float | None = None
    started_at: float | None = None  # unix seconds
    step: int | None = None
    metrics: dict = field(default_factory=dict)
    best: float | None = None
    best_id: int | None = None
    noise_sigma: float | None = None
    done: int = 0
    kept: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))
    messages: deque = field(default_factory=lambda: deque(maxlen=3))

    def progress(self, now: float) -> float | None:
        """Telemetry's own progress when it has one, else elapsed time over the budget."""
        p = self.metrics.get("progress")
        if isinstance(p, (int, float)):
            return min(1.0, max(0.0, float(p)))
        if self.started_at is not None and self.budget_seconds:
            return min(1.0, max(0.0, (now - self.started_at) / self.budget_seconds))
        return None


def render_panel(state: PanelState, now: float | None = None) -> Panel:
    now = time.time() if now is None else now
    parts = []
    if state.running_id is None:
        parts.append(Text("idle: no experiment running", style="dim"))
    else:
        parts.append(Text.assemble(("running ", "dim"), (f"#{state.running_id} ", "bold"),
                                   _one_line(state.description)))
        p = state.progress(now)
        elapsed = None if state.started_at is None else now - state.started_at
        bar = Table.grid(padding=(0, 1))
        bar.add_row(ProgressBar(total=1.0, completed=p or 0.0, width=40),
                    f"{_num(None if p is None else 100 * p, '.0f')}%",
                    f"{_clock(elapsed)} / {_clock(state.budget_seconds)}")
        parts.append(bar)
        m = state.metrics
        parts.append(Text(f"step {_num(state.step, 'd')}   loss {_num(m.get('loss'), '.4f')}   "
                          f"tok/s {_num(m.get('tok_per_sec'), ',.0f')}"))
    best = "—" if state.best is None else f"{state.best:.6f} (#{state.best_id})"
    parts.append(Text.assemble(("best ", "dim"), (best, "bold green"), ("   noise σ ", "dim"),
                               _num(state.noise_sigma, ".6f")))
    if state.recent:
        table = Table(box=None, pad_edge=False, header_style="dim")
        for name, justify in (("#", "right"), ("status", "left"), ("val_bpb", "right"),
                              ("delta", "right"), ("description", "left")):
            table.add_column(name, justify=justify, no_wrap=name != "description")
        for r in state.recent:
            table.add_row(str(r.id), Text(r.status, style=STATUS_STYLE.get(r.status, "")),
                          _num(r.val_bpb, ".6f"), _num(r.delta, "+.6f"), _one_line(r.description))
        parts.append(table)
    parts += [Text(m, style="dim") for m in state.messages]
    return Panel(Group(*parts), title=f"autoresearch: {state.done} done, {state.kept} kept",
                 title_align="left")


def render_status(records: list[ExperimentRecord], running: dict | None = None) -> Panel:
    """The live panel drawn once from the ledger, for `autoresearch status`.

    running (optional) describes the experiment in flight: id, description,
    budget_seconds, started_at (unix), step, and telemetry such as loss, tok_per_sec, progress.
    Without it, a last record still marked running stands for the experiment in flight.
    """
    s = summarize(records)
    d = deltas(records)
    state = PanelState(best=s["best"], best_id=s["best_id"], noise_sigma=s["noise_sigma"],
                       done=s["total"], kept=s["kept"])
    for r in ordered(records)[-RECENT:]:
        state.recent.append(Result(r.id, r.status, r.val_bpb, d.get(r.id), r.description))
    last = ordered(records)[-1] if records else None
    if running is None and last is not None and last.status == RUNNING:
        running = {"id": last.id, "description": last.description, "started_at": last.started_at}
    if running:
        run = dict(running)
        state.running_id = run.pop("id", None)
        state.description = run.pop("description", "")
        state.budget_seconds = run.pop("budget_seconds", None)
        state.started_at = run.pop("started_at", None)
        state.step = run.pop("step", None)
        state.metrics = run
    return render_panel(state)


# ---------------------------------------------------------------------------
# the views

class _Events:
    """Lets either view be used as a context manager."""

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class LiveView(_Events):
    def __init__(self, console: Console | None = None, refresh_per_second: float = 4.0):
        self.console = console or Console()
        self.state = PanelState()
        self._lock = threading.Lock()  # telemetry arrives from a follower thread
        self._refresh_per_second = refresh_per_second
        self._live: Live | None = None

    def __rich__(self) -> Panel:
        # Live re-renders this object on every tick, so elapsed time moves between events.
        with self._lock:
            return render_panel(self.state)

    def start(self) -> None:
        if self._live is None:
            self._live = Live(self, console=self.console, refresh_per_second=self._refresh_per_second)
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def _changed(self) -> None:
        if self._live is not None:
            self._live.refresh()

    def experiment_started(self, record_id: int, description: str, budget_seconds: float | None) -> None:
        with self._lock:
            st = self.state
            st.running_id, st.description, st.budget_seconds = record_id, description, budget_seconds
            st.started_at, st.step, st.metrics = time.time(), None, {}
        self._changed()

    def telemetry(self, step: int, metrics: dict) -> None:
        with self._lock:
            self.state.step, self.state.metrics = step, dict(metrics)
        self._changed()

    def experiment_finished(self, record: ExperimentRecord) -> None:
        with self._lock:
            st = self.state
            st.recent.append(Result(record.id, record.status, record.val_bpb,
                                    _delta(accepted_value(record), st.best), record.description))
            st.done += 1
            st.kept += record.status == KEEP and record.kind != BASELINE
            if st.running_id == record.id:
                st.running_id = None
        self._changed()

    def set_best(self, val_bpb: float | None, record_id: int | None) -> None:
        with self._lock:
            self.state.best, self.state.best_id = val_bpb, record_id
        self._changed()

    def set_noise(self, sigma: float | None) -> None:
        with self._lock:
            self.state.noise_sigma = sigma
        self._changed()

    def message(self, text: str) -> None:
        with self._lock:
            self.state.messages.append(_one_line(text))
        self._changed()


class PlainView(_Events):
    """One plain line per event: for --plain, log files and CI (no terminal codes)."""

    def __init__(self, file=None, telemetry_every: float = PLAIN_TELEMETRY_EVERY, clock=time.monotonic):
        self.file = file
        self.telemetry_every = telemetry_every
        self._clock = clock
        self._last_telemetry: float | None = None
        self._running_id: int | None = None
        self.best: float | None = None  # deltas in "done" lines are against this
        self._lock = threading.Lock()

    def _emit(self, text: str) -> None:
        out = self.file or sys.stdout  # looked up late so redirected stdout is honoured
        with self._lock:
            print(f"{time.strftime('%H:%M:%S')} {text}", file=out, flush=True)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def experiment_started(self, record_id: int, description: str, budget_seconds: float | None) -> None:
        self._running_id, self._last_telemetry = record_id, None
        self._emit(f"start #{record_id} (budget {_clock(budget_seconds)}): {_one_line(description)}")

    def telemetry(self, step: int, metrics: dict) -> None:
        now = self._clock()
        if self._last_telemetry is not None and now - self._last_telemetry < self.telemetry_every:
            return
        self._last_telemetry = now
        p = metrics.get("progress")
        self._emit(f"#{_num(self._running_id, 'd')} step {step} loss {_num(metrics.get('loss'), '.4f')} "
                   f"tok/s {_num(metrics.get('tok_per_sec'), ',.0f')} "
                   f"progress {_num(None if p is None else 100 * p, '.0f')}%")

    def experiment_finished(self, record: ExperimentRecord) -> None:
        d = _delta(accepted_value(record), self.best)
        reason = f" ({_one_line(record.decision_reason)})" if record.decision_reason else ""
        self._emit(f"done #{record.id} {record.status} val_bpb {_num(record.val_bpb, '.6f')} "
                   f"delta {_num(d, '+.6f')}: {_one_line(record.description)}{reason}")
        self._running_id = None

    def set_best(self, val_bpb: float | None, record_id: int | None) -> None:
        self.best, self.best_id = val_bpb, record_id
        self._emit(f"best {_num(val_bpb, '.6f')} (#{_num(record_id, 'd')})")

    def set_noise(self, sigma: float | None) -> None:
        self._emit(f"noise sigma {_num(sigma, '.6f')}")

    def message(self, text: str) -> None:
        self._emit(_one_line(text))


def make_view(plain: bool = False, console: Console | None = None) -> LiveView | PlainView:
    """The live panel on a terminal; plain lines when asked or when output is not a terminal."""
    console = console or Console()
    if plain or not console.is_terminal:
        return PlainView(file=console.file)
    return LiveView(console=console)


# ---------------------------------------------------------------------------
# telemetry file follower

def _forward(line: bytes, view) -> None:
    try:
        data = json.loads(line)
    except ValueError:
        return  # a torn or foreign line: telemetry is best effort
    if not isinstance(data, dict):
        return
    step = data.pop("step", None)
    view.telemetry(step if isinstance(step, int) else 0, data)


def _follow(path: Path, view, stop_event: threading.Event, poll_seconds: float) -> None:
    pos, pending = 0, b""
    while True:
        stopping = stop_event.is_set()  # read once more after the stop, so no line is lost
        chunk = b""
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size < pos:
                    pos, pending = 0, b""  # the file was replaced: start over
                f.seek(pos)
                chunk = f.read()
                pos += len(chunk)
        except FileNotFoundError:
            pass  # the run has not written anything yet
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            if line.strip():
                _forward(line, view)
        if stopping:
            if pending.strip():
                _forward(pending, view)  # a last line without newline, if it is whole
            return
        stop_event.wait(poll_seconds)


def follow_telemetry(path: Path, view, stop_event: threading.Event, *,
                     poll_seconds: float = 0.25) -> threading.Thread:
    """Tail a run's telemetry JSONL in a daemon thread, passing each line to view.telemetry.

    Returns the started thread; set stop_event and join it to finish.
    """
    thread = threading.Thread(target=_follow, args=(Path(path), view, stop_event, poll_seconds),
                              name=f"telemetry:{Path(path).name}", daemon=True)
    thread.start()
    return thread
