"""Honest runs on a busy machine: how many unchanged baselines are accepted, and whether
runs that cheat on time are still caught, with every core oversubscribed.

    python bench/honest_under_load.py [--runs 20] [--budget 10] [--load-per-core 2] [--cheats]
                                      [--cold] [--no-sandbox]

Each run goes through the runner as the loop drives it (warm starts, the evaluation
service, the sandbox where it works). References for start-up and export are the
medians of the accepted runs so far, as the loop takes them from its baseline runs.
Target: at least 19 of 20 honest runs accepted (neither invalid nor over_budget), and
every cheating run refused.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

from autoresearch import records as R
from autoresearch.loop import sandbox_choice
from autoresearch.runner import OK, run_experiment
from autoresearch.services import LoopServices
from autoresearch.timing import references_from
from autoresearch.workspace import Workspace, init_workspace

# Cheats on time, as an edit of the template: each must be refused.
SLOW_CLOCK = ("import time as _time\n_real = _time.time\n_t0 = _real()\n"
              "_time.time = lambda: _t0 + (_real() - _t0) * 0.5  # its own clock runs at half speed\n")
CHEATS = {
    "own clock at half speed": lambda text: text.replace("import torch\n", SLOW_CLOCK + "import torch\n", 1),
    "trains twice its budget": lambda text: text.replace("training_time >= TIME_BUDGET", "training_time >= 2 * TIME_BUDGET"),
}


def _busy() -> None:
    while True:
        pass


def start_load(per_core: int) -> list[multiprocessing.Process]:
    cores = len(os.sched_getaffinity(0))
    workers = [multiprocessing.Process(target=_busy, daemon=True) for _ in range(per_core * cores)]
    for worker in workers:
        worker.start()
    return workers


def run_once(ws: Workspace, services: LoopServices, run_id: int, *, sandbox: bool, accepted: list,
             files: dict | None = None):
    refs = {}
    for kind in ("warm", "cold"):
        summaries = [t for start, t in accepted if start == kind]
        if summaries:
            refs[kind] = references_from(summaries)
    started = time.monotonic()
    outcome = run_experiment(ws.root, ws.run_dir(run_id), ws.settings.profile(), seed=42 + run_id,
                             settings=ws.settings, files=files, sandbox=sandbox, launcher=services.launcher,
                             evaluator=services.evaluator, refs=refs, scratch_parent=services.scratch_parent)
    return outcome, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--load-per-core", type=int, default=2)
    parser.add_argument("--cheats", action="store_true", help="also run each cheat once, under the same load")
    parser.add_argument("--cold", action="store_true", help="cold starts instead of warm ones")
    parser.add_argument("--no-sandbox", action="store_true")
    args = parser.parse_args()
    sandbox, why_not = sandbox_choice(False if args.no_sandbox else None)
    with tempfile.TemporaryDirectory() as tmp:
        root = init_workspace(Path(tmp) / "ws", profile="cpu", budget=args.budget, tag="load")
        ws = Workspace.open(root)
        services = LoopServices(ws, sandbox=sandbox, warm_start="off" if args.cold else "on").start()
        load = start_load(args.load_per_core)
        print(f"{len(load)} busy processes on {len(os.sched_getaffinity(0))} cores; budget {args.budget:.0f} s; "
              f"sandbox: {'on' if sandbox else 'off (' + why_not + ')'}; {'cold' if args.cold else 'warm'} starts",
              flush=True)
        accepted, refused = [], []
        try:
            for i in range(1, args.runs + 1):
                outcome, wall = run_once(ws, services, i, sandbox=sandbox, accepted=accepted)
                ok = outcome.status == OK
                (accepted if ok else refused).append((outcome.start.split(":")[0], outcome.timing))
                print(f"honest {i:>2}: {outcome.status:<11} wall {wall:5.1f} s  trained "
                      f"{outcome.training_seconds or 0:5.1f} s  start-up {outcome.timing.get('startup_cpu_s')} "
                      f"CPU-s  steps {outcome.timing.get('steps_seen')}  {outcome.reason[:90]}", flush=True)
            caught = 0
            if args.cheats:
                template = (root / "train.py").read_text()
                for j, (name, edit) in enumerate(CHEATS.items(), start=args.runs + 1):
                    changed = edit(template)
                    assert changed != template, name
                    outcome, wall = run_once(ws, services, j, sandbox=sandbox, accepted=accepted,
                                             files={"train.py": changed.encode()})
                    caught += outcome.status in (R.OVER_BUDGET, R.INVALID)
                    print(f"cheat '{name}': {outcome.status} ({outcome.reason[:120]})", flush=True)
        finally:
            for worker in load:
                worker.kill()
            services.close()
    print(f"\nhonest runs accepted under load: {len(accepted)} of {args.runs} (target >= 95%)")
    if args.cheats:
        print(f"cheating runs refused: {caught} of {len(CHEATS)}")
    return 0 if len(accepted) >= 0.95 * args.runs and (not args.cheats or caught == len(CHEATS)) else 1


if __name__ == "__main__":
    sys.exit(main())
