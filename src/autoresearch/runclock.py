"""The runner's own clock on a run: heartbeats stamped as they arrive, CPU read from /proc.

The harness inside a run writes one byte per event into a FIFO the runner made (and
opened) before the run started:

    c   the budget's clock starts (the first WARMUP_STEPS batches were served)
    s   a training step ended (log(step, ...))
    e   submit(model) was called: training is over, the export begins

The runner stamps each byte with time.monotonic() when it reads it, and reads the CPU
time of the run's whole process tree when `c` and `e` arrive. Nothing the run says about
time is believed: a run can only send its heartbeats late or early, and each of those is
judged (see timing.py). The reader thread runs in the loop's process, which is not
slowed by the load the run is under beyond scheduling noise.
"""
from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import dataclass, field

from autoresearch.proctree import tree_cpu_seconds

CLOCK_START, STEP, SUBMIT = b"c", b"s", b"e"
MAX_STEPS_KEPT = 200_000  # a run that floods the pipe is only read, not remembered
SAMPLE_EVERY_S = 0.25  # how often the run's CPU time is read, for its value at exit


@dataclass
class Timing:
    """What the runner saw, in seconds since the run was started (runner's clock)."""
    clock_start: float | None = None
    steps: list = field(default_factory=list)
    submit: float | None = None
    ended: float | None = None
    startup_cpu: float | None = None  # CPU seconds of the run's processes when `c` arrived
    submit_cpu: float | None = None  # ... when `e` arrived
    end_cpu: float | None = None  # ... at its end (the last reading, or the exit's rusage)
    events_dropped: int = 0

    def summary(self) -> dict:
        """The figures a record keeps (not every step stamp)."""
        return {
            "clock_start_s": _round(self.clock_start), "submit_s": _round(self.submit),
            "ended_s": _round(self.ended), "steps_seen": len(self.steps),
            "last_step_s": _round(self.steps[-1] if self.steps else None),
            "startup_cpu_s": _round(self.startup_cpu), "submit_cpu_s": _round(self.submit_cpu),
            "end_cpu_s": _round(self.end_cpu),
        }


def _round(value):
    return None if value is None else round(value, 3)


class RunClock:
    """Reads heartbeats from `fifo` in a thread; `attach(pid)` once the run's root process exists."""

    def __init__(self, fifo):
        # opened before the run starts, so the run cannot swap the FIFO for something else
        self._fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        self._keep_open = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # no EOF while the run has not opened it
        self.started = time.monotonic()
        self.timing = Timing()
        self._pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def attach(self, pid: int) -> None:
        self._pid = pid

    def now(self) -> float:
        return time.monotonic() - self.started

    def cpu(self) -> float | None:
        return None if self._pid is None else tree_cpu_seconds(self._pid)

    def _read(self) -> None:
        last_sample = 0.0
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd], [], [], 0.05)
            if ready:
                try:
                    data = os.read(self._fd, 4096)
                except BlockingIOError:
                    data = b""
                stamp = self.now()
                for byte in data:
                    self._on_event(bytes([byte]), stamp)
            if time.monotonic() - last_sample > SAMPLE_EVERY_S:
                last_sample = time.monotonic()
                cpu = self.cpu()
                if cpu is not None:
                    self.timing.end_cpu = cpu

    def _on_event(self, event: bytes, stamp: float) -> None:
        t = self.timing
        if event == CLOCK_START and t.clock_start is None:
            t.clock_start = stamp
            t.startup_cpu = self.cpu()
        elif event == STEP:
            if len(t.steps) < MAX_STEPS_KEPT:
                t.steps.append(stamp)
            else:
                t.events_dropped += 1
        elif event == SUBMIT and t.submit is None:
            t.submit = stamp
            t.submit_cpu = self.cpu()

    def finish(self, exit_cpu: float | None = None) -> Timing:
        """Call once the run's processes have ended; drains what is left in the pipe."""
        self.timing.ended = self.now()
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            while data := os.read(self._fd, 4096):
                for byte in data:
                    self._on_event(bytes([byte]), self.timing.ended)
        except (BlockingIOError, OSError):
            pass
        for fd in (self._fd, self._keep_open):
            try:
                os.close(fd)
            except OSError:
                pass
        if exit_cpu is not None:
            self.timing.end_cpu = max(exit_cpu, self.timing.end_cpu or 0.0)
        return self.timing
