import json

from autoresearch.records import ExperimentRecord
from autoresearch.telemetry import loss_at_progress, read_telemetry, summarize_telemetry


def _write(path, rows, torn=False):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    path.write_text(text + ('{"step": 99, "lo' if torn else ""))


def test_loss_is_reported_at_fixed_points_of_progress(tmp_path):
    rows = [{"step": i, "loss": 10.0 - i, "progress": i / 8, "tok_per_sec": 1000 + i} for i in range(9)]
    _write(tmp_path / "t.jsonl", rows, torn=True)
    assert len(read_telemetry(tmp_path / "t.jsonl")) == 9  # the torn line is skipped
    assert loss_at_progress(rows) == {0.0: 10.0, 0.25: 8.0, 0.5: 6.0, 0.75: 4.0, 1.0: 2.0}


def test_summary_names_the_run_and_its_figures(tmp_path):
    rows = [{"step": i, "loss": 5.0, "progress": i / 20, "tok_per_sec": 2000.0} for i in range(21)]
    _write(tmp_path / "t.jsonl", rows)
    record = ExperimentRecord(id=7, status="discard", val_bpb=1.5, peak_memory_mb=700.0, num_steps=21)
    text = summarize_telemetry(tmp_path / "t.jsonl", record)
    assert text.startswith("experiment 7 (discard, val_bpb 1.5)")
    assert "50%: 5.0000" in text and "tokens/s (median) 2,000" in text and "peak memory 700 MB" in text


def test_missing_file_gives_just_the_label(tmp_path):
    assert summarize_telemetry(tmp_path / "none.jsonl") == ""
