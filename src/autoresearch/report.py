"""The research run at a glance: progress.png and report.md, built from experiment records."""
from __future__ import annotations

import math
import os
import tempfile
import threading
from collections import Counter
from pathlib import Path

from autoresearch.records import (
    ABORTED, BASELINE, CONFIRM, CRASH, FAILED_PROPOSAL, INTERRUPTED, INVALID, KEEP,
    OVER_BUDGET, PENDING, STATUSES, TIMEOUT, ExperimentRecord,
)

# Runs that ended without a usable value; drawn as marks on the top edge.
NO_RESULT = (CRASH, TIMEOUT, ABORTED, INTERRUPTED)
# A value exists but was refused; it must not count as a measurement.
REFUSED = (INVALID, OVER_BUDGET)
LABEL_CHARS = 30  # kept-change labels on the plot are cut to this length


# ---------------------------------------------------------------------------
# numbers shared by the report and `autoresearch status`

def accepted_value(r: ExperimentRecord) -> float | None:
    """The record's val_bpb if it is a real, accepted measurement."""
    v = r.val_bpb
    if v is None or r.status in REFUSED or r.status in NO_RESULT:
        return None
    if not math.isfinite(v):
        return None
    return float(v)


def ordered(records: list[ExperimentRecord]) -> list[ExperimentRecord]:
    return sorted(records, key=lambda r: r.id)


Step = tuple[ExperimentRecord, float | None, float | None]


def running_best(records: list[ExperimentRecord]) -> list[Step]:
    """(record, best before it, best after it) in id order.

    The best moves only on kept results, and on the first baseline so that the curve has
    a starting point even if the baseline was recorded with another status. Its value is
    the mean of every measurement of the best commit so far, as the policy judges it:
    picking the luckiest of repeated runs would plot noise as progress.
    """
    rows, best, best_commit, seen = [], None, None, {}
    for r in ordered(records):
        before, v = best, accepted_value(r)
        if v is not None and r.commit:
            seen.setdefault(r.commit, []).append(v)
        if v is not None and (r.status == KEEP or (best is None and r.kind == BASELINE)):
            if not r.commit:
                best = v if best is None else min(best, v)
            else:
                best_commit = r.commit
                best = sum(seen[best_commit]) / len(seen[best_commit])
        rows.append((r, before, best))
    return rows


def deltas(records: list[ExperimentRecord]) -> dict[int, float | None]:
    """val_bpb minus the best before the experiment; negative means better.

    None for refused or failed runs: their number is no measurement to compare.
    """
    out = {}
    for r, before, _ in running_best(records):
        v = accepted_value(r)
        out[r.id] = None if v is None or before is None else v - before
    return out


def elapsed_seconds(records: list[ExperimentRecord]) -> float:
    """Wall-clock span of the run; the sum of wall times when timestamps are missing."""
    starts = [r.started_at for r in records if r.started_at is not None]
    ends = [r.finished_at for r in records if r.finished_at is not None]
    if starts and ends and max(ends) > min(starts):
        return max(ends) - min(starts)
    return sum(r.wall_seconds or 0.0 for r in records)


def summarize(records: list[ExperimentRecord]) -> dict:
    """Counts, baseline, best, improvement and pace of a research run."""
    counts = Counter(r.status for r in records)
    baseline = next((r for r in ordered(records)
                     if r.kind == BASELINE and accepted_value(r) is not None), None)
    rows = running_best(records)
    best_val = rows[-1][2] if rows else None
    kept = [r for r in ordered(records) if r.status == KEEP and accepted_value(r) is not None]
    # the experiment that introduced the best code (its confirmation runs share its commit)
    best = next((r for r in kept if kept[-1].commit and r.commit == kept[-1].commit), kept[-1]) if kept else None
    if best is None and best_val is not None:
        best = next((r for r, _, _ in rows if accepted_value(r) == best_val), None)
    base_val = accepted_value(baseline) if baseline else None
    if baseline is not None and baseline.commit:  # repeated baseline runs: their mean
        repeats = [accepted_value(r) for r in records if r.kind == BASELINE and r.commit == baseline.commit
                   and accepted_value(r) is not None]
        base_val = sum(repeats) / len(repeats)
    improvement = base_val - best_val if base_val is not None and best_val is not None else None
    seconds = elapsed_seconds(records)
    # refused proposals never trained, so they do not count towards the pace
    runs = len(records) - counts.get(FAILED_PROPOSAL, 0)
    sigma = next((r.noise_sigma for r in reversed(ordered(records)) if r.noise_sigma is not None), None)
    return {
        "total": len(records),
        "runs": runs,
        "counts": {s: counts[s] for s in STATUSES if counts[s]}
        | {s: n for s, n in counts.items() if s not in STATUSES},
        "kept": sum(1 for r in records if r.status == KEEP and r.kind != BASELINE),
        "baseline": base_val,
        "baseline_id": baseline.id if baseline else None,
        "best": best_val,
        "best_id": best.id if best else None,
        "improvement": improvement,
        "improvement_pct": 100.0 * improvement / base_val if improvement is not None and base_val else None,
        "noise_sigma": sigma,
        "seconds": seconds,
        "per_hour": runs / (seconds / 3600.0) if seconds > 0 else None,
    }


# ---------------------------------------------------------------------------
# atomic writes: a reader never sees half a file

def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# progress.png

def _short(text: str, n: int = LABEL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def y_limits(values: list[float], must_show: list[float]) -> tuple[float, float]:
    """A y-range that shows the interesting part: one diverged run must not flatten the rest.

    Values beyond the quartiles ± 3 IQRs are cut off (they are drawn on the edge), but the
    range always holds must_show (the running best, kept values, the noise band).
    """
    if not values:
        return (min(must_show) - 0.01, max(must_show) + 0.01) if must_show else (0.0, 1.0)
    vs = sorted(values)
    lo, hi = vs[0], vs[-1]
    if len(vs) >= 4:
        q1, q3 = _quantile(vs, 0.25), _quantile(vs, 0.75)
        spread = 2 * (q3 - q1)
        lo, hi = max(lo, q1 - spread), min(hi, q3 + spread)
    lo, hi = min([lo, *must_show]), max([hi, *must_show])
    pad = (hi - lo) * 0.08 or max(abs(hi) * 0.01, 1e-3)
    return lo - pad, hi + pad


def _quantile(sorted_vals: list[float], q: float) -> float:
    pos = q * (len(sorted_vals) - 1)
    i = int(pos)
    j = min(i + 1, len(sorted_vals) - 1)
    return sorted_vals[i] + (sorted_vals[j] - sorted_vals[i]) * (pos - i)


def _place_labels(ax, points: list[tuple[float, float, str]], renderer) -> list:
    """Put each label at the first offset whose box stays inside the axes and clear of the
    legend and earlier labels; returns the label boxes."""
    offsets = [(dx, dy) for dy in (8, -16, 22, -30, 36, -44) for dx in (6, -6)]
    legend = ax.get_legend()
    blocked = [legend.get_window_extent(renderer)] if legend else []
    taken = []
    axes_box = ax.get_window_extent(renderer)
    for x, y, text in points:
        ann = ax.annotate(text, (x, y), xytext=offsets[0], textcoords="offset points",
                          fontsize=7, color="#1b5e20",
                          bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.75),
                          arrowprops=dict(arrowstyle="-", color="#81c784", lw=0.5))
        tries = [(off, _label_box(ann, off, renderer)) for off in offsets]
        inside = [t for t in tries if _inside(t[1], axes_box)]
        free = [t for t in inside if not any(t[1].overlaps(o) for o in taken + blocked)]
        # crowded: overlapping inside the plot still beats a label cut off at the edge
        off, box = (free or inside or tries)[0]
        _label_box(ann, off, renderer)
        taken.append(box)
    return taken


def _label_box(ann, offset: tuple[int, int], renderer):
    """Move the label to offset and return the box of its text (without the arrow)."""
    ann.xyann = offset
    ann.set_horizontalalignment("left" if offset[0] > 0 else "right")
    ann.update_positions(renderer)
    ann.update_bbox_position_size(renderer)
    return ann.get_bbox_patch().get_window_extent(renderer)


def _inside(box, outer) -> bool:
    return outer.x0 <= box.x0 and box.x1 <= outer.x1 and outer.y0 <= box.y0 and box.y1 <= outer.y1


def _marker(r: ExperimentRecord) -> str:
    return {BASELINE: "s", CONFIRM: "D"}.get(r.kind, "o")


def _legend(ax, rows, valued, fails, sigma) -> None:
    """A legend with only what the plot shows."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    kinds = {r.kind for r, _, _ in rows}
    statuses = {r.status for r, _ in valued}
    has_best = any(b is not None for _, _, b in rows)
    dot = dict(marker="o", ls="")
    hollow = dict(ls="", mfc="none", color="#424242")
    entries = [
        (KEEP in statuses, Line2D([], [], **dot, color="#2e7d32", label="kept")),
        (bool(statuses - {KEEP}), Line2D([], [], **dot, color="#9e9e9e", label="discarded / refused")),
        (bool(fails), Line2D([], [], marker="x", ls="", color="#d32f2f", label="crash / timeout / aborted")),
        (BASELINE in kinds, Line2D([], [], marker="s", **hollow, label="baseline")),
        (CONFIRM in kinds, Line2D([], [], marker="D", **hollow, label="confirm run")),
        (has_best, Line2D([], [], color="#2e7d32", label="running best")),
        (bool(sigma) and has_best, Patch(color="#66bb6a", alpha=0.3, label=f"best ± noise σ ({sigma or 0:.2g})")),
    ]
    handles = [h for shown, h in entries if shown]
    if handles:
        ax.legend(handles=handles, loc="lower left", fontsize=8, framealpha=0.9)


def progress_figure(records: list[ExperimentRecord], *, title: str = "",
                    noise_sigma: float | None = None):
    """The progress plot as a matplotlib Figure (not shown, not registered with pyplot)."""
    # Figure + Agg canvas directly: no pyplot, so no global backend switch and no open figures.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rows = running_best(records)
    s = summarize(records)
    sigma = noise_sigma if noise_sigma is not None else s["noise_sigma"]

    # failed runs are marks on the top edge even when they left a number (e.g. the loss at abort)
    valued = [(r, r.val_bpb) for r, _, _ in rows if r.status not in NO_RESULT
              and r.val_bpb is not None and math.isfinite(r.val_bpb)]
    kept_vals = [accepted_value(r) for r, _ in valued if r.status == KEEP and accepted_value(r) is not None]
    best_vals = [b for _, _, b in rows if b is not None]
    band = [best_vals[0] + sigma, best_vals[-1] - sigma] if sigma and best_vals else []
    # refused values (a cheat's 0.5) do not stretch the axis; they land on an edge if outside
    lo, hi = y_limits([v for r, v in valued if r.status not in REFUSED], kept_vals + best_vals + band)
    ax.set_ylim(lo, hi)
    if rows:
        ax.set_xlim(rows[0][0].id - 1, rows[-1][0].id + 1)

    # running best as a step line, with the noise band around it
    steps = [(r.id, b) for r, _, b in rows if b is not None]
    if steps:
        xs = [x for x, _ in steps] + [rows[-1][0].id + 0.5]
        ys = [y for _, y in steps] + [steps[-1][1]]
        if sigma:
            ax.fill_between(xs, [y - sigma for y in ys], [y + sigma for y in ys], step="post",
                            color="#66bb6a", alpha=0.15, lw=0)
        ax.step(xs, ys, where="post", color="#2e7d32", lw=1.5, zorder=3)

    for r, v in valued:
        kept = r.status == KEEP
        colour = "#2e7d32" if kept else "#9e9e9e"
        face = colour if r.status != PENDING else "none"  # pending: measured, not judged yet
        if not lo <= v <= hi:  # outlier: an arrow on the edge says "off the chart"
            edge, mark = (hi, "^") if v > hi else (lo, "v")
            ax.scatter([r.id], [edge], marker=mark, s=30, color=colour, clip_on=False, zorder=4)
            continue
        ax.scatter([r.id], [v], marker=_marker(r), s=40 if kept else 22, facecolors=face,
                   edgecolors=colour, zorder=5 if kept else 4, alpha=1 if kept else 0.8)
        if r.status in REFUSED:
            ax.scatter([r.id], [v], marker="x", s=14, color="#616161", zorder=4)

    # failed runs have no usable value: a red x along the top edge
    fails = [r.id for r, _, _ in rows if r.status in NO_RESULT]
    if fails:
        ax.scatter(fails, [0.97] * len(fails), marker="x", color="#d32f2f", s=30,
                   transform=ax.get_xaxis_transform(), clip_on=False, zorder=6)

    counts = s["counts"]
    parts = [f"{s['total']} experiments", f"{s['kept']} kept"]
    parts += [f"{counts[k]} {k}" for k in counts if k != KEEP]
    head = title or "Research progress"
    ax.set_title(f"{head}\n" + ", ".join(parts), fontsize=11)
    ax.set_xlabel("experiment #")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.grid(True, alpha=0.3)

    _legend(ax, rows, valued, fails, sigma)
    fig.tight_layout()

    renderer = fig.canvas.get_renderer()
    labels = [(r.id, accepted_value(r), _short(r.description)) for r, _ in valued
              if r.status == KEEP and r.kind != BASELINE and r.description and accepted_value(r) is not None]
    _place_labels(ax, labels, renderer)
    return fig


def plot_progress(records: list[ExperimentRecord], out: Path, *, title: str = "",
                  noise_sigma: float | None = None) -> None:
    fig = progress_figure(records, title=title, noise_sigma=noise_sigma)
    _atomic_write(out, lambda f: fig.savefig(f, format="png"))


# ---------------------------------------------------------------------------
# report.md

def _fmt(v: float | None, digits: int = 6, sign: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "—" if v is None else str(v)
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def _cell(text) -> str:
    """Markdown table cells may not hold pipes or newlines."""
    return "" if text is None else " ".join(str(text).split()).replace("|", "\\|")


def _duration(seconds: float) -> str:
    h, rem = divmod(int(round(seconds)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {s:02d}s"


def phase_seconds(records: list[ExperimentRecord]) -> dict[str, float]:
    train = sum(r.training_seconds or 0.0 for r in records)
    evals = sum(r.eval_seconds or 0.0 for r in records)
    wall = sum(r.wall_seconds or 0.0 for r in records)
    # wall time not spent training or evaluating: startup, compilation, data, export
    other = sum(max(0.0, (r.wall_seconds or 0.0) - (r.training_seconds or 0.0) - (r.eval_seconds or 0.0))
                for r in records if r.wall_seconds is not None)
    return {"training": train, "eval": evals, "other": other, "total": max(wall, train + evals)}


def render_markdown(records: list[ExperimentRecord], *, title: str = "",
                    noise_sigma: float | None = None) -> str:
    s = summarize(records)
    sigma = noise_sigma if noise_sigma is not None else s["noise_sigma"]
    out = [f"# {title or 'Research report'}", "", "## Summary", ""]
    if not records:
        out += ["No experiments yet.", ""]
    counts = ", ".join(f"{n} {k}" for k, n in s["counts"].items()) or "none"
    out.append(f"- experiments: {s['total']} ({counts})")
    out.append(f"- kept changes: {s['kept']}")
    if s["baseline"] is not None and s["best"] is not None:
        out.append(f"- val_bpb: {_fmt(s['baseline'])} (baseline #{s['baseline_id']}) → "
                   f"{_fmt(s['best'])} (best #{s['best_id']})")
        out.append(f"- improvement: {_fmt(s['improvement'])} ({s['improvement_pct']:.2f}%)")
    else:
        out.append(f"- val_bpb: baseline {_fmt(s['baseline'])}, best {_fmt(s['best'])}")
    out.append(f"- noise sigma: {_fmt(sigma)}")
    rate = s["per_hour"]
    out.append(f"- pace: {rate:.1f} experiments per hour" if rate else "- pace: —")
    out.append(f"- total time: {_duration(s['seconds'])}")

    d = deltas(records)
    out += ["", "## Top improvements", ""]
    gains = sorted((r for r in records if r.status == KEEP and r.kind != BASELINE
                    and d.get(r.id) is not None and d[r.id] < 0), key=lambda r: d[r.id])
    if gains:
        out += ["| # | val_bpb | delta | description |", "|---:|---:|---:|---|"]
        out += [f"| {r.id} | {_fmt(r.val_bpb)} | {_fmt(d[r.id], sign=True)} | {_cell(r.description)} |"
                for r in gains]
    else:
        out.append("No kept improvements yet.")

    out += ["", "## Experiments", ""]
    if records:
        out += ["| # | kind | status | val_bpb | delta | seed | trust | description | reason |",
                "|---:|---|---|---:|---:|---:|---|---|---|"]
        for r in ordered(records):
            out.append(f"| {r.id} | {r.kind} | {r.status} | {_fmt(r.val_bpb)} | {_fmt(d.get(r.id), sign=True)} "
                       f"| {_cell(r.seed if r.seed is not None else '—')} | {_cell(r.trust or '—')} "
                       f"| {_cell(r.description)} | {_cell(r.decision_reason)} |")
    else:
        out.append("None.")

    p = phase_seconds(records)
    out += ["", "## Time per phase", "", "| phase | seconds | share |", "|---|---:|---:|"]
    for name in ("training", "eval", "other"):
        share = f"{100 * p[name] / p['total']:.1f}%" if p["total"] else "—"
        out.append(f"| {name} | {p[name]:.1f} | {share} |")
    out.append(f"| total | {p['total']:.1f} | |")
    return "\n".join(out) + "\n"


def write_report(records: list[ExperimentRecord], out_dir: Path, *, title: str = "",
                 noise_sigma: float | None = None) -> tuple[Path, Path]:
    """Write progress.png and report.md into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png, md = out_dir / "progress.png", out_dir / "report.md"
    plot_progress(records, png, title=title, noise_sigma=noise_sigma)
    text = render_markdown(records, title=title, noise_sigma=noise_sigma)
    _atomic_write(md, lambda f: f.write(text.encode("utf-8")))
    return png, md


class BackgroundRefresh:
    """Calls `write(latest)` on a thread of its own, so drawing the report overlaps the
    next experiment's start instead of delaying it. Requests that arrive while it draws
    are folded into one: only the newest records are drawn."""

    def __init__(self, write):
        self._write = write
        self._latest = None
        self._wanted = threading.Condition()
        self._closing = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="report-refresh", daemon=True)
        self._thread.start()

    def request(self, records) -> None:
        with self._wanted:
            self._latest = list(records)
            self._wanted.notify()

    def close(self, timeout: float = 60.0) -> None:
        """Draws what is still pending, then stops."""
        with self._wanted:
            self._closing = True
            self._wanted.notify()
        self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._wanted:
                while self._latest is None and not self._closing:
                    self._wanted.wait()
                records, self._latest = self._latest, None
                if records is None:
                    return
            try:
                self._write(records)
            except Exception as error:  # a report that cannot be drawn must not stop the loop
                self.error = error
