"""The processes of a run as the runner sees them from outside, in /proc (Linux).

`tree_cpu_seconds(pid)` adds up the CPU time of a process and every descendant alive,
plus what each of them has already collected from children it waited for. A run cannot
hide work in a forked process: its time is counted while it lives, and once it ends it
is counted in the time of whoever reaped it (the run's subreaper, in the end).
"""
from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of it and its reaped children), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # the command name is in parentheses and may itself hold spaces or parentheses
    fields = raw[raw.rfind(b")") + 2:].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / CLOCK_TICKS


def process_table() -> dict[int, tuple[int, float]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            entry = _stat(int(name))
            if entry is not None:
                table[int(name)] = entry
    return table


def descendants(pid: int, table: dict | None = None) -> list[int]:
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for child, (parent, _) in table.items():
        children.setdefault(parent, []).append(child)
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), ()):
            found.append(child)
            stack.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of `pid` and its descendants; None when `pid` is gone."""
    table = process_table()
    if pid not in table:
        return None
    return table[pid][1] + sum(table[child][1] for child in descendants(pid, table))


def host_pid(ns_pid: int, ancestor: int) -> int | None:
    """The pid, as this process sees it, of the descendant of `ancestor` that is `ns_pid` in its
    own PID namespace (a process in a sandbox knows only its namespace's pids)."""
    for pid in descendants(ancestor):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        if int(line.split()[-1]) == ns_pid:
                            return pid
                        break
        except (OSError, ValueError):
            continue
    return None
