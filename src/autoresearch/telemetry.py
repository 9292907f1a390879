"""A few lines about how a run went, from its telemetry, for an agent to read."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

POINTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # fractions of training progress to report the loss at


def read_telemetry(path: Path) -> list[dict]:
    rows = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line torn by a killed run
    return rows


def loss_at_progress(rows: list[dict]) -> dict:
    """The logged loss nearest to each of POINTS (by the row's `progress`, else its position)."""
    with_loss = [r for r in rows if isinstance(r.get("loss"), (int, float))]
    if not with_loss:
        return {}
    n = len(with_loss)
    progress = [r.get("progress") if isinstance(r.get("progress"), (int, float)) else i / max(1, n - 1)
                for i, r in enumerate(with_loss)]
    found = {}
    for point in POINTS:
        nearest = min(range(n), key=lambda i: abs(progress[i] - point))
        found[point] = with_loss[nearest]["loss"]
    return found


def summarize_telemetry(path: Path, record=None) -> str:
    rows = read_telemetry(path)
    parts = []
    losses = loss_at_progress(rows)
    if losses:
        parts.append("loss at " + ", ".join(f"{int(p * 100)}%: {v:.4f}" for p, v in losses.items()))
    speeds = [r["tok_per_sec"] for r in rows[10:] if isinstance(r.get("tok_per_sec"), (int, float))]
    if speeds:
        parts.append(f"tokens/s (median) {statistics.median(speeds):,.0f}")
    if record is not None:
        if record.peak_memory_mb:
            parts.append(f"peak memory {record.peak_memory_mb:,.0f} MB")
        if record.num_steps:
            parts.append(f"steps {record.num_steps}")
        label = f"experiment {record.id} ({record.status}, val_bpb {record.val_bpb})"
        return f"{label}: " + "; ".join(parts) if parts else label
    return "; ".join(parts)
