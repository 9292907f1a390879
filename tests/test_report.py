import math

import pytest

from autoresearch import report
from autoresearch.records import ExperimentRecord as R


def history():
    """Baseline, two kept gains, a discard, a crash, an invalid cheat and a diverged run."""
    t = 1_000_000.0
    rows = [
        R(id=1, kind="baseline", status="keep", val_bpb=1.000, seed=42, trust="sealed", description="baseline"),
        R(id=2, status="keep", val_bpb=0.990, description="wider mlp", decision_reason="beats best"),
        R(id=3, status="discard", val_bpb=0.995, description="smaller lr | warmup"),
        R(id=4, status="crash", description="oom"),
        R(id=5, status="keep", val_bpb=0.970, description="rope base 50k", noise_sigma=0.001),
        R(id=6, status="invalid", val_bpb=0.100, description="peeks at val"),
        R(id=7, status="discard", val_bpb=8.0, description="lr x100"),
    ]
    for i, r in enumerate(rows):
        r.started_at, r.finished_at = t + 600 * i, t + 600 * i + 500
        r.training_seconds, r.eval_seconds, r.wall_seconds = 300.0, 100.0, 500.0
    return rows


def test_summarize_counts_baseline_best_and_improvement():
    s = report.summarize(history())
    assert s["total"] == 7
    assert s["counts"] == {"keep": 3, "discard": 2, "crash": 1, "invalid": 1}
    assert s["kept"] == 2  # the baseline is not a kept change
    assert (s["baseline"], s["baseline_id"]) == (1.0, 1)
    assert (s["best"], s["best_id"]) == (0.970, 5)
    assert s["improvement"] == pytest.approx(0.030)
    assert s["improvement_pct"] == pytest.approx(3.0)
    assert s["noise_sigma"] == 0.001


def test_summarize_rate_uses_wall_clock_span():
    s = report.summarize(history())
    # 7 runs from the first start to the last finish: 6*600+500 seconds
    assert s["seconds"] == pytest.approx(4100.0)
    assert s["per_hour"] == pytest.approx(7 / (4100 / 3600))


def test_summarize_rate_falls_back_to_wall_seconds_and_skips_failed_proposals():
    rows = [R(id=1, status="discard", val_bpb=1.0, wall_seconds=1800.0),
            R(id=2, status="failed_proposal")]
    s = report.summarize(rows)
    assert s["seconds"] == 1800.0
    assert s["per_hour"] == pytest.approx(2.0)


def test_summarize_empty_and_all_crash():
    for rows in ([], [R(id=1, status="crash"), R(id=2, status="timeout")]):
        s = report.summarize(rows)
        assert s["best"] is None and s["baseline"] is None and s["improvement"] is None
        assert s["per_hour"] is None


def test_running_best_moves_only_on_kept_accepted_values():
    best_after = {r.id: after for r, _, after in report.running_best(history())}
    assert best_after[2] == 0.990
    assert best_after[3] == 0.990  # a discard does not move it
    assert best_after[6] == 0.970  # nor does a refused 0.1


def test_deltas_against_previous_best_and_none_for_refused_or_failed():
    d = report.deltas(history())
    assert d[1] is None
    assert d[2] == pytest.approx(-0.010)
    assert d[3] == pytest.approx(0.005)
    assert d[4] is None and d[6] is None


def test_y_limits_ignore_a_crazy_value_but_keep_what_must_show():
    values = [1.0, 0.99, 0.995, 0.985, 1.002, 0.99, 8.0]
    lo, hi = report.y_limits(values, must_show=[0.97])
    assert hi < 1.1
    assert lo < 0.97


def test_progress_figure_title_labels_and_limits():
    fig = report.progress_figure(history(), title="run a", noise_sigma=0.002)
    ax = fig.axes[0]
    title = ax.get_title()
    assert "run a" in title and "7 experiments" in title and "2 kept" in title and "1 crash" in title
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["rope base 50k", "wider mlp"]
    lo, hi = ax.get_ylim()
    assert hi < 2.0  # the 8.0 run does not flatten the plot
    assert lo < 0.970 - 0.002  # the noise band around the best stays visible


def test_labels_are_short_and_do_not_overlap():
    long = "a very long description of a change that goes on and on"
    assert len(report._short(long)) == report.LABEL_CHARS
    rows = [R(id=1, kind="baseline", status="keep", val_bpb=1.0)]
    # neighbours at almost the same height: labels at one fixed offset would collide
    rows += [R(id=i, status="keep", val_bpb=0.99 - i * 1e-7, description=f"{long} {i}") for i in range(2, 8)]
    fig = report.progress_figure(rows)
    fig.canvas.draw()
    boxes = [t.get_bbox_patch().get_window_extent() for t in fig.axes[0].texts]
    assert len(boxes) == 6
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_write_report_writes_png_and_markdown(tmp_path):
    png, md = report.write_report(history(), tmp_path / "out", title="run a")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in png.parent.iterdir()) == ["progress.png", "report.md"]  # no temp files
    text = md.read_text()
    assert text.startswith("# run a")
    assert "1.000000 (baseline #1) → 0.970000 (best #5)" in text
    assert "improvement: 0.030000 (3.00%)" in text


def test_markdown_top_improvements_sorted_by_size():
    text = report.render_markdown(history())
    top = text.split("## Top improvements")[1].split("## Experiments")[0]
    rows = [line for line in top.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split("|")[1].strip() for row in rows] == ["5", "2"]
    assert "-0.020000" in rows[0]


def test_markdown_table_has_every_experiment_and_escapes_pipes():
    text = report.render_markdown(history())
    table = text.split("## Experiments")[1].split("## Time per phase")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == 7
    assert "| 1 | baseline | keep | 1.000000 | — | 42 | sealed | baseline |" in rows[0]
    assert "smaller lr \\| warmup" in rows[2]
    assert "| 4 | candidate | crash | — | — |" in rows[3]


def test_phase_seconds_split_training_eval_other():
    p = report.phase_seconds([R(id=1, training_seconds=300, eval_seconds=20, wall_seconds=350),
                              R(id=2, training_seconds=None, eval_seconds=None, wall_seconds=10)])
    assert p == {"training": 300, "eval": 20, "other": 40, "total": 360}
    assert "| other | 40.0 | 11.1% |" in report.render_markdown(
        [R(id=1, training_seconds=300, eval_seconds=20, wall_seconds=350),
         R(id=2, wall_seconds=10)])


@pytest.mark.parametrize("rows", [[], [R(id=1, status="crash"), R(id=2, status="aborted", val_bpb=math.nan)],
                                  [R(id=1, kind="baseline", status="keep", val_bpb=None)]])
def test_write_report_handles_empty_failed_and_missing_values(tmp_path, rows):
    png, md = report.write_report(rows, tmp_path)
    assert png.stat().st_size > 0
    assert "## Time per phase" in md.read_text()


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        report._atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_plotting_leaves_pyplot_alone(tmp_path):
    plt = pytest.importorskip("matplotlib.pyplot")
    before = plt.get_fignums()
    report.write_report(history(), tmp_path)
    assert plt.get_fignums() == before


def test_running_best_is_the_mean_of_the_best_commits_runs():
    runs = [R(id=1, kind="baseline", status="keep", val_bpb=1.44, commit="a"),
            R(id=2, kind="baseline", status="keep", val_bpb=1.45, commit="a"),
            R(id=3, kind="baseline", status="keep", val_bpb=1.40, commit="a"),
            R(id=4, kind="candidate", status="discard", val_bpb=1.42, commit="b")]
    bests = [after for _, _, after in report.running_best(runs)]
    assert bests[:3] == [1.44, pytest.approx(1.445), pytest.approx(1.43)]  # not the luckiest run, 1.40
    assert report.deltas(runs)[4] == pytest.approx(1.42 - 1.43)


def test_summary_uses_the_baseline_mean_and_names_the_kept_experiment():
    runs = [R(id=1, kind="baseline", status="keep", val_bpb=1.46, commit="a"),
            R(id=2, kind="baseline", status="keep", val_bpb=1.44, commit="a"),
            R(id=3, kind="candidate", status="keep", val_bpb=1.40, commit="b"),
            R(id=4, kind="confirm", status="keep", val_bpb=1.42, commit="b")]
    summary = report.summarize(runs)
    assert summary["baseline"] == pytest.approx(1.45) and summary["best"] == pytest.approx(1.41)
    assert summary["best_id"] == 3 and summary["improvement"] == pytest.approx(0.04)


def test_background_refresh_draws_the_newest_records_and_finishes_on_close():
    import threading

    from autoresearch.report import BackgroundRefresh

    drawn, gate = [], threading.Event()

    def write(records):
        gate.wait(5)  # the first drawing is slow: later requests pile up meanwhile
        drawn.append(list(records))

    refresh = BackgroundRefresh(write)
    refresh.request([1])
    for n in range(2, 6):
        refresh.request(list(range(1, n + 1)))
    gate.set()
    refresh.close()
    assert drawn[-1] == [1, 2, 3, 4, 5]  # the newest records are drawn before close returns
    assert len(drawn) <= 2  # requests made while drawing were folded into one


def test_background_refresh_survives_a_failing_drawing():
    from autoresearch.report import BackgroundRefresh

    calls = []

    def write(records):
        calls.append(records)
        if len(calls) == 1:
            raise OSError("disk full")

    import time

    refresh = BackgroundRefresh(write)
    refresh.request(["a"])
    deadline = time.monotonic() + 5
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    refresh.request(["b"])
    refresh.close()
    assert calls == [["a"], ["b"]]  # the thread kept working after the failure
    assert isinstance(refresh.error, OSError)
