"""Time per experiment outside training (proposal, commit, start-up, compilation, export,
evaluation, decision, records, report) as a share of wall time, from real loops with
warm starts and with cold starts, in one script.

    python bench/loop_overhead.py [--experiments 3] [--modes warm,cold] [--profile cpu] [--budget 60]
                                  [--sandbox on|off|auto]

An experiment's wall time is measured from the moment the previous one was recorded
(or the loop started) to its own record, so nothing the loop does between runs is left
out; the report is refreshed as `autoresearch run` does it. The first experiment of a
loop also pays the launcher's warm-up; "steady" leaves it out.
Targets: training >= 85% of wall at the cpu profile's budget; >= 97% projected at 300 s.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from autoresearch.agents import make_agent
from autoresearch.loop import ResearchLoop
from autoresearch.policy import NoiseEstimate
from autoresearch.report import BackgroundRefresh, write_report
from autoresearch.workspace import Workspace, init_workspace


def run_loop(mode: str, experiments: int, profile: str, budget: float | None, sandbox: bool | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = init_workspace(Path(tmp) / "ws", profile=profile, budget=budget, tag="bench")
        ws = Workspace.open(root)
        reports = BackgroundRefresh(lambda records: write_report(
            records, root, title=ws.branch, noise_sigma=NoiseEstimate.from_records(records).sigma()))
        loop = ResearchLoop(ws, make_agent("sweep", seq_len=ws.settings.profile().max_seq_len),
                            max_experiments=experiments, on_record=reports.request,
                            warm_start="on" if mode == "warm" else "off", sandbox=sandbox)
        started = time.time()
        records = loop.run()
        ended = time.time()
        reports.close()
    rows, previous = [], started
    for r in records:
        rows.append({"id": r.id, "wall": r.finished_at - previous, "train": r.training_seconds or 0.0,
                     "eval": r.eval_seconds or 0.0, "start": r.extra.get("start", ""),
                     "description": r.description})
        previous = r.finished_at
    mode = f"{mode} ({'sandbox: ' + ('on' if loop.sandbox else 'off')})"
    return {"mode": mode, "rows": rows, "total": ended - started, "budget": ws.settings.profile().time_budget}


def summarize(result: dict) -> dict:
    rows = [r for r in result["rows"] if r["train"]]
    print(f"\n{result['mode']} starts")
    print(f"{'id':>3} {'wall s':>7} {'train s':>8} {'eval s':>7} {'other s':>8} {'share':>7}  start / experiment")
    for r in rows:
        other = r["wall"] - r["train"] - r["eval"]
        print(f"{r['id']:>3} {r['wall']:7.1f} {r['train']:8.1f} {r['eval']:7.1f} {other:8.1f} "
              f"{r['train'] / r['wall']:7.1%}  {r['start'].split(':')[0]}: {r['description'][:40]}")
    overall = sum(r["train"] for r in rows) / result["total"]
    steady = rows[1:] or rows
    overhead = statistics.mean(r["wall"] - r["train"] for r in steady)
    share = sum(r["train"] for r in steady) / sum(r["wall"] for r in steady)
    projected = 300 / (300 + overhead)
    print(f"whole loop ({result['total']:.0f} s, {len(rows)} experiments): training {overall:.1%} of wall")
    print(f"steady (from the 2nd experiment): overhead {overhead:.1f} s per experiment, training {share:.1%} "
          f"of wall at {result['budget']:.0f} s (target >= 85%), projected at 300 s: {projected:.1%} "
          f"(target >= 97%)")
    return {"overhead": overhead, "share": share, "overall": overall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=3)
    parser.add_argument("--modes", default="warm,cold", help="comma-separated: warm, cold")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--sandbox", choices=("on", "off", "auto"), default="auto",
                        help="auto: as `autoresearch run` (on wherever it works)")
    args = parser.parse_args()
    sandbox = {"on": True, "off": False, "auto": None}[args.sandbox]
    summaries = {}
    for mode in args.modes.split(","):
        summaries[mode] = summarize(run_loop(mode, args.experiments, args.profile, args.budget, sandbox))
    if {"warm", "cold"} <= set(summaries):
        warm, cold = summaries["warm"], summaries["cold"]
        print(f"\nwarm / cold overhead per experiment: {warm['overhead']:.1f} s / {cold['overhead']:.1f} s "
              f"= {warm['overhead'] / cold['overhead']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
