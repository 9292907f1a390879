"""Time per experiment outside training (commit, start-up, export, evaluation, decision,
records) as a share of wall time, from a real loop of N experiments, and the share
projected at a 300 s budget with the same overhead.

    python bench/loop_overhead.py [--experiments 3] [--profile cpu] [--budget 60]
Targets: training >= 85% of wall at the cpu profile's budget; >= 97% projected at 300 s.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from autoresearch.agents import make_agent
from autoresearch.loop import ResearchLoop
from autoresearch.workspace import Workspace, init_workspace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", type=int, default=3)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--budget", type=float, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = init_workspace(Path(tmp) / "ws", profile=args.profile, budget=args.budget, tag="bench")
        ws = Workspace.open(root)
        loop = ResearchLoop(ws, make_agent("sweep", seq_len=ws.settings.profile().max_seq_len),
                            max_experiments=args.experiments)
        records = [r for r in loop.run() if r.training_seconds]
    budget = ws.settings.profile().time_budget
    print(f"{'id':>3} {'wall s':>8} {'train s':>8} {'eval s':>7} {'other s':>8} {'train share':>12}")
    walls, trains = [], []
    for r in records:
        wall = r.finished_at - r.started_at  # from the ledger's clock: everything the loop did
        other = wall - r.training_seconds - (r.eval_seconds or 0)
        walls.append(wall)
        trains.append(r.training_seconds)
        print(f"{r.id:>3} {wall:8.1f} {r.training_seconds:8.1f} {r.eval_seconds or 0:7.1f} {other:8.1f} "
              f"{r.training_seconds / wall:12.1%}")
    overhead = (sum(walls) - sum(trains)) / len(walls)
    print(f"mean overhead per experiment: {overhead:.1f} s")
    print(f"training share of wall at {budget:.0f} s: {sum(trains) / sum(walls):.1%} (target >= 85%)")
    print(f"projected at 300 s with the same overhead: {300 / (300 + overhead):.1%} (target >= 97%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
