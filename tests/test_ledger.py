import errno
import json
import os

import pandas as pd
import pytest

from autoresearch import ledger as ledger_module
from autoresearch.ledger import TSV_HEADER, Ledger, LedgerError
from autoresearch.records import (
    CRASH, DISCARD, FAILED_PROPOSAL, INTERRUPTED, KEEP, OVER_BUDGET, PENDING, RUNNING, TIMEOUT,
    ExperimentRecord,
)


def record(id, status=KEEP, val_bpb=1.0, **fields):
    defaults = dict(commit=f"abc{id:04d}ef", description=f"experiment {id}", peak_memory_mb=45060.2)
    return ExperimentRecord(id=id, status=status, val_bpb=val_bpb, **{**defaults, **fields})


def tsv_lines(workspace):
    return (workspace / "results.tsv").read_text().splitlines()


def journal(workspace):
    return workspace / ".autoresearch" / "experiments.jsonl"


def test_round_trip_keeps_every_field(tmp_path):
    original = record(1, trust="sealed", seed=42, extra={"note": "tab\there"})
    Ledger(tmp_path).append(original)
    assert Ledger(tmp_path).records() == [original]


def test_latest_version_of_an_id_wins(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(record(1, status=PENDING))
    ledger.append(record(1, status=KEEP, decision_reason="first result"))
    for reopened in (ledger, Ledger(tmp_path)):
        assert [(r.id, r.status) for r in reopened.records()] == [(1, KEEP)]
    assert len(journal(tmp_path).read_text().splitlines()) == 2


def test_next_id_and_best(tmp_path):
    ledger = Ledger(tmp_path)
    assert ledger.next_id() == 1 and ledger.best() is None
    ledger.append(record(1, KEEP, 1.00))
    ledger.append(record(2, KEEP, 0.99))
    ledger.append(record(3, DISCARD, 0.98))
    ledger.append(record(4, CRASH, None))
    assert ledger.next_id() == 5
    assert ledger.best().id == 2
    assert Ledger(tmp_path).best().id == 2


def test_results_tsv_has_the_original_format(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(record(1, KEEP, 0.9979, commit="a1b2c3d4e5", description="baseline"))
    ledger.append(record(2, OVER_BUDGET, 0.95, description="lr 0.05", peak_memory_mb=2048))
    ledger.append(record(3, TIMEOUT, None, description="deeper", peak_memory_mb=None))
    ledger.append(record(4, FAILED_PROPOSAL, None))  # never ran: journal only
    ledger.append(record(5, PENDING, 0.97))  # not decided yet: journal only
    assert tsv_lines(tmp_path) == [
        TSV_HEADER.strip("\n"),
        "a1b2c3d\t0.997900\t44.0\tkeep\tbaseline",
        "abc0002\t0.950000\t2.0\tdiscard\tlr 0.05 [over_budget]",
        "abc0003\t0.000000\t0.0\tcrash\tdeeper [timeout]",
    ]
    assert len(ledger.records()) == 5


def test_pending_record_gets_its_row_when_decided(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(record(1, PENDING, 0.97))
    ledger.append(record(1, DISCARD, 0.97))
    ledger.append(record(1, DISCARD, 0.97, decision_reason="written again"))
    assert tsv_lines(tmp_path)[1:] == ["abc0001\t0.970000\t44.0\tdiscard\texperiment 1"]


def test_pandas_reads_results_with_the_right_types(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(record(1, KEEP, 0.9979))
    ledger.append(record(2, DISCARD, 0.9981, description='"quoted\tand\nsplit" lr'))
    ledger.append(record(3, CRASH, None, description="oom"))
    frame = pd.read_csv(tmp_path / "results.tsv", sep="\t")
    assert list(frame.columns) == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert len(frame) == 3
    assert frame["val_bpb"].dtype == "float64" and frame["memory_gb"].dtype == "float64"
    assert list(frame["status"]) == ["keep", "discard", "crash"]
    assert list(frame["commit"]) == ["abc0001", "abc0002", "abc0003"]
    assert frame["description"][1] == "'quoted and split' lr"
    assert frame["val_bpb"][2] == 0.0


def test_torn_last_line_is_dropped_and_cut_off(tmp_path):
    Ledger(tmp_path).append(record(1))
    intact = journal(tmp_path).read_bytes()
    with open(journal(tmp_path), "ab") as f:
        f.write(b'{"id": 2, "status": "ke')  # killed mid-write
    ledger = Ledger(tmp_path)
    assert [r.id for r in ledger.records()] == [1]
    assert journal(tmp_path).read_bytes() == intact
    ledger.append(record(2))
    assert [r.id for r in Ledger(tmp_path).records()] == [1, 2]


def test_garbled_last_line_is_dropped_but_garbage_inside_is_an_error(tmp_path):
    Ledger(tmp_path).append(record(1))
    with open(journal(tmp_path), "ab") as f:
        f.write(b"\x00\x00\x00\n")
    assert [r.id for r in Ledger(tmp_path).records()] == [1]
    with open(journal(tmp_path), "ab") as f:
        f.write(b"not json\n" + json.dumps(record(2).to_dict()).encode() + b"\n")
    with pytest.raises(LedgerError, match="line 2"):
        Ledger(tmp_path)


def test_kill_between_journal_and_tsv_loses_and_duplicates_nothing(tmp_path):
    Ledger(tmp_path).append(record(1))
    # the journal line of experiment 2 reached the disk, its tsv row did not
    with open(journal(tmp_path), "a") as f:
        f.write(json.dumps(record(2, DISCARD, 1.1).to_dict()) + "\n")
    assert len(tsv_lines(tmp_path)) == 2
    Ledger(tmp_path)
    Ledger(tmp_path)
    assert [line.split("\t")[0] for line in tsv_lines(tmp_path)] == ["commit", "abc0001", "abc0002"]


def test_torn_tsv_row_is_rewritten(tmp_path):
    Ledger(tmp_path).append(record(1))
    with open(tmp_path / "results.tsv", "a") as f:
        f.write("abc0002\t1.1")
    with open(journal(tmp_path), "a") as f:
        f.write(json.dumps(record(2, DISCARD, 1.1).to_dict()) + "\n")
    Ledger(tmp_path)
    assert tsv_lines(tmp_path)[2] == "abc0002\t1.100000\t44.0\tdiscard\texperiment 2"
    assert len(tsv_lines(tmp_path)) == 3


def test_missing_tsv_is_rebuilt_from_the_journal(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(record(1))
    ledger.append(record(2, DISCARD))
    expected = tsv_lines(tmp_path)
    (tmp_path / "results.tsv").unlink()
    assert Ledger(tmp_path).repair() == 0
    assert tsv_lines(tmp_path) == expected


def test_tsv_with_rows_the_journal_lacks_is_rebuilt(tmp_path):
    Ledger(tmp_path).append(record(1))
    expected = tsv_lines(tmp_path)
    with open(tmp_path / "results.tsv", "a") as f:
        f.write("fffffff\t0.500000\t1.0\tkeep\tnot in the journal\n")
    Ledger(tmp_path)
    assert tsv_lines(tmp_path) == expected


def _disk_fills_half_way(monkeypatch):
    real_write = os.write

    def write(fd, data):
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ledger_module.os, "write", write)


def test_disk_full_leaves_the_ledger_unchanged(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path)
    ledger.append(record(1))
    before = journal(tmp_path).read_bytes(), (tmp_path / "results.tsv").read_bytes()
    with monkeypatch.context() as patch:
        _disk_fills_half_way(patch)
        with pytest.raises(LedgerError, match="disk is full"):
            ledger.append(record(2))
    assert (journal(tmp_path).read_bytes(), (tmp_path / "results.tsv").read_bytes()) == before
    assert [r.id for r in ledger.records()] == [1]
    ledger.append(record(2))
    assert [r.id for r in Ledger(tmp_path).records()] == [1, 2]


def test_disk_full_on_the_tsv_row_is_made_up_on_the_next_append(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path)
    real_write = os.write
    calls = []

    def journal_fits_tsv_does_not(fd, data):
        calls.append(data)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    with monkeypatch.context() as patch:
        patch.setattr(ledger_module.os, "write", journal_fits_tsv_does_not)
        with pytest.raises(LedgerError):
            ledger.append(record(1))
    assert len(tsv_lines(tmp_path)) == 1
    ledger.append(record(2))
    assert [line.split("\t")[0] for line in tsv_lines(tmp_path)[1:]] == ["abc0001", "abc0002"]


def test_running_record_has_no_row(tmp_path):
    Ledger(tmp_path).append(record(1, RUNNING, None))
    assert tsv_lines(tmp_path) == [TSV_HEADER.strip("\n")]


@pytest.mark.parametrize("undecided", [RUNNING, PENDING])
def test_mark_interrupted_closes_an_undecided_record(tmp_path, undecided):
    ledger = Ledger(tmp_path)
    ledger.append(record(1, undecided, None, description="wider"))
    marked = ledger.mark_interrupted(1, "loop stopped")
    assert (marked.status, marked.decision_reason) == (INTERRUPTED, "loop stopped")
    assert Ledger(tmp_path).get(1).status == INTERRUPTED
    assert tsv_lines(tmp_path)[1] == "abc0001\t0.000000\t44.0\tcrash\twider [interrupted]"
    with pytest.raises(LedgerError, match="already decided"):
        ledger.mark_interrupted(1, "again")


def test_unknown_status_is_refused_before_writing(tmp_path):
    ledger = Ledger(tmp_path)
    with pytest.raises(ValueError, match="unknown status"):
        ledger.append(record(1, status="great"))
    assert ledger.records() == []


def test_best_is_the_keep_written_last_not_the_highest_id(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(record(1, KEEP, 1.00))
    ledger.append(record(2, PENDING, 0.98))  # confirmed only after 3 was decided
    ledger.append(record(3, KEEP, 0.99))
    ledger.append(record(2, KEEP, 0.98))
    assert ledger.best().id == 2


def test_rows_stay_in_id_order_behind_a_pending_candidate(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.append(record(1, KEEP, commit="a" * 40, description="baseline"))
    ledger.append(record(2, PENDING, commit="b" * 40, description="candidate"))
    ledger.append(record(3, DISCARD, commit="c" * 40, description="later one"))
    assert [line.split("\t")[4] for line in tsv_lines(tmp_path)[1:]] == ["baseline"]
    ledger.append(record(2, KEEP, commit="b" * 40, description="candidate"))
    assert [line.split("\t")[4] for line in tsv_lines(tmp_path)[1:]] == ["baseline", "candidate", "later one"]
    assert len(Ledger(tmp_path).records()) == 3 and len(tsv_lines(tmp_path)) == 4  # reopening adds nothing
