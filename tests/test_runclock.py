"""Heartbeats through a real FIFO from a real process, stamped by the runner's clock."""
import os
import subprocess
import sys
import time

from autoresearch.runclock import RunClock


def test_heartbeats_are_stamped_when_they_arrive_and_cpu_is_read_from_outside(tmp_path):
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    clock = RunClock(fifo)
    code = (f"import os, time\nfd = os.open({str(fifo)!r}, os.O_WRONLY)\n"
            "t = time.process_time()\nwhile time.process_time() - t < 0.5: pass\n"  # 0.5 CPU-s before the clock
            "os.write(fd, b'c')\n"
            "for _ in range(3):\n    time.sleep(0.3)\n    os.write(fd, b's')\n"
            "os.write(fd, b'e')\ntime.sleep(0.2)\n")
    proc = subprocess.Popen([sys.executable, "-c", code])
    clock.attach(proc.pid)
    proc.wait()
    timing = clock.finish()
    assert timing.clock_start is not None and len(timing.steps) == 3
    gaps = [b - a for a, b in zip([timing.clock_start, *timing.steps], timing.steps)]
    assert all(0.2 < g < 0.8 for g in gaps), gaps
    assert timing.submit >= timing.steps[-1]
    assert timing.startup_cpu is not None and timing.startup_cpu >= 0.4


def test_a_run_that_never_opens_the_fifo_gives_no_events(tmp_path):
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    clock = RunClock(fifo)
    time.sleep(0.2)
    timing = clock.finish()
    assert timing.clock_start is None and timing.steps == [] and timing.submit is None


def test_a_flood_is_read_without_being_remembered_in_full(tmp_path, monkeypatch):
    import autoresearch.runclock as rc

    monkeypatch.setattr(rc, "MAX_STEPS_KEPT", 100)
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    clock = RunClock(fifo)
    code = f"import os\nfd = os.open({str(fifo)!r}, os.O_WRONLY)\nos.write(fd, b's' * 100000)\n"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    time.sleep(0.3)
    timing = clock.finish()
    assert len(timing.steps) == 100 and timing.events_dropped == 100000 - 100
