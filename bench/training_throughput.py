"""Training tokens/s of the template on a profile, MFU where the device peak is known, and the
sealed evaluation's share of the budget. One real `autoresearch train` in a fresh workspace.

    python bench/training_throughput.py [--profile cpu] [--budget 60]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from autoresearch.harness.profiles import get_profile
from autoresearch.runner import run_experiment
from autoresearch.workspace import Workspace, init_workspace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--budget", type=float, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = init_workspace(Path(tmp) / "ws", profile=args.profile, budget=args.budget, tag="bench")
        ws = Workspace.open(root)
        profile = ws.settings.profile()
        outcome = run_experiment(ws.root, ws.run_dir(1), profile, seed=42)
        telemetry = [json.loads(line) for line in (ws.run_dir(1) / "telemetry.jsonl").read_text().splitlines()]
    steady = [t for t in telemetry[10:] if t.get("tok_per_sec")]
    tok_s = statistics.median(t["tok_per_sec"] for t in steady) if steady else float("nan")
    mfu = statistics.median(t.get("mfu") or 0.0 for t in steady) if steady else float("nan")
    print(f"profile {profile.name}, budget {profile.time_budget:.0f} s, status {outcome.status}, "
          f"val_bpb {outcome.val_bpb}")
    print(f"training tokens/s (median after warmup): {tok_s:,.0f}")
    print(f"tokens trained (harness count): {outcome.total_tokens:,}  steps: {outcome.num_steps}")
    print(f"MFU: {mfu:.2f}% (0 where the device peak is unknown)")
    share = (outcome.eval_seconds or 0) / profile.time_budget
    print(f"evaluation: {outcome.eval_seconds:.1f} s = {share:.1%} of the training budget (target <= 10%)")
    print(f"wall: {outcome.wall_seconds:.1f} s, training share of wall {outcome.training_seconds / outcome.wall_seconds:.1%}")
    return 0 if outcome.status == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
