"""The record of a research run on disk.

Two files, one writer (the loop):
- `.autoresearch/experiments.jsonl`: every version of every ExperimentRecord, one JSON
  object a line, append-only. This is the source of truth; a later line for the same id
  (a PENDING record that was later decided) supersedes the earlier one.
- `results.tsv`: the original 5-column summary, one row per decided experiment, derived
  from the journal and rebuilt from it whenever the two disagree.

Each append is one `os.write` to a file opened with O_APPEND, then fsync, so a crash
leaves at worst a torn last line, which the next open drops. The journal is written
before results.tsv, so a kill between the two only ever leaves the summary short, and
`repair()` (run on open) adds the missing rows.
"""
from __future__ import annotations

import copy
import errno
import json
import math
import os
from pathlib import Path

from autoresearch.records import (
    ABORTED, CRASH, DISCARD, INTERRUPTED, INVALID, KEEP, OVER_BUDGET, PENDING, STATUSES,
    TIMEOUT, UNDECIDED, ExperimentRecord,
)

RESULTS_NAME = "results.tsv"
JOURNAL_PATH = Path(".autoresearch") / "experiments.jsonl"
TSV_HEADER = "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"

# Our detailed statuses folded into the original three. FAILED_PROPOSAL never ran and
# RUNNING and PENDING are not decided yet, so none of them gets a row.
TSV_STATUS = {
    KEEP: "keep",
    DISCARD: "discard",
    INVALID: "discard",  # a result exists but was refused
    OVER_BUDGET: "discard",
    CRASH: "crash",  # no numeric result
    TIMEOUT: "crash",
    ABORTED: "crash",
    INTERRUPTED: "crash",
}

# Tabs and line breaks would split the row; a leading double quote would make
# pandas (and the csv module) read a quoted field that swallows the following rows.
_DESCRIPTION_CLEANUP = str.maketrans({"\t": " ", "\n": " ", "\r": " ", '"': "'"})


class LedgerError(RuntimeError):
    """The ledger could not be read or written; the message says what to do."""


def tsv_row(record: ExperimentRecord) -> str | None:
    """The results.tsv line for a decided record, or None if it gets no row."""
    status = TSV_STATUS.get(record.status)
    if status is None:
        return None
    value = record.val_bpb
    if value is None or not math.isfinite(value):
        value = 0.0  # the original writes 0.000000 when there is no result
    memory_gb = (record.peak_memory_mb or 0.0) / 1024
    description = record.description.translate(_DESCRIPTION_CLEANUP).strip()
    if record.status != status:  # keep the detail the three-way status loses
        description = f"{description} [{record.status}]".lstrip()
    return f"{record.commit[:7]}\t{value:.6f}\t{memory_gb:.1f}\t{status}\t{description}\n"


def _append_atomically(path: Path, data: bytes) -> None:
    """Append all of `data` durably, or leave the file as it was and raise LedgerError."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise LedgerError(f"cannot open {path} for appending: {exc}") from exc
    try:
        size_before = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
            if written != len(data):  # a regular file only writes short when the disk fills
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        except OSError as exc:
            try:
                os.ftruncate(fd, size_before)
            except OSError:
                pass  # a torn line that stays behind is dropped on the next open
            if exc.errno == errno.ENOSPC:
                problem = "the disk is full"
                remedy = "free some space and restart; the ledger is unchanged"
            else:
                problem = str(exc)
                remedy = "the ledger is unchanged"
            raise LedgerError(f"cannot append to {path}: {problem}; {remedy}") from exc
    finally:
        os.close(fd)


def _read_journal(path: Path) -> list[ExperimentRecord]:
    """Every record line of the journal; a torn last line is cut off the file."""
    if not path.exists():
        return []
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")  # `tail` is non-empty only if the last write tore
    keep_bytes = len(data) - len(tail)
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(ExperimentRecord.from_dict(json.loads(line)))
        except (ValueError, TypeError) as exc:
            if number == len(lines) and not tail:  # a garbled last line: also a torn write
                keep_bytes -= len(line) + 1
                break
            raise LedgerError(
                f"{path}, line {number}, is not a valid experiment record ({exc}); "
                "fix or remove that line by hand, the rest of the file is intact"
            ) from exc
    if keep_bytes < len(data):
        os.truncate(path, keep_bytes)
    return records


class Ledger:
    """Appends and reads the records of one research workspace. One writer at a time."""

    def __init__(self, workspace: Path):
        self.workspace = Path(workspace)
        self.results_path = self.workspace / RESULTS_NAME
        self.journal_path = self.workspace / JOURNAL_PATH
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        self._latest: dict[int, ExperimentRecord] = {}
        self._written_at: dict[int, int] = {}  # id -> journal position of its latest version
        self._lines = 0
        self._rows: list[str] = []  # the rows results.tsv should hold, in order
        self._next_row_id = 1  # rows go out in id order; an undecided experiment holds back later ones
        self._rows_on_disk = 0
        for record in _read_journal(self.journal_path):
            self._absorb(record)
        self.repair()

    # -- writing ------------------------------------------------------------------

    def append(self, record: ExperimentRecord) -> None:
        """Record a new experiment or a new version of one (same id, e.g. decided)."""
        if record.status not in STATUSES:
            raise ValueError(f"unknown status {record.status!r}; known: {', '.join(STATUSES)}")
        line = json.dumps(record.to_dict()) + "\n"  # json escapes newlines inside values
        _append_atomically(self.journal_path, line.encode())
        # keep a copy as it was written, so later changes to the caller's object don't leak in
        self._absorb(ExperimentRecord.from_dict(json.loads(line)))
        self._write_missing_rows()

    def mark_interrupted(self, record_id: int, reason: str) -> ExperimentRecord:
        """Close a record left RUNNING or PENDING by a stop or a crash of the loop."""
        record = self.get(record_id)
        if record.status not in UNDECIDED:
            raise LedgerError(
                f"experiment {record_id} is already decided ({record.status}); "
                f"only an undecided one ({', '.join(UNDECIDED)}) can be marked interrupted"
            )
        record.status = INTERRUPTED
        record.decision_reason = reason
        self.append(record)
        return record

    def repair(self) -> int:
        """Bring results.tsv in line with the journal; returns how many rows were added."""
        self._rows_on_disk = self._count_rows_on_disk()
        if self._rows_on_disk > len(self._rows):  # more rows than the journal knows: rebuild
            self._rewrite_results()
            return 0
        missing = len(self._rows) - self._rows_on_disk
        self._write_missing_rows()
        return missing

    # -- reading ------------------------------------------------------------------

    def records(self) -> list[ExperimentRecord]:
        """The latest version of every experiment, by id."""
        return [copy.deepcopy(self._latest[i]) for i in sorted(self._latest)]

    def get(self, record_id: int) -> ExperimentRecord:
        if record_id not in self._latest:
            raise KeyError(f"no experiment with id {record_id} in {self.journal_path}")
        return copy.deepcopy(self._latest[record_id])

    def next_id(self) -> int:
        """Ids start at 1 and are never reused."""
        return max(self._latest, default=0) + 1

    def best(self) -> ExperimentRecord | None:
        """The most recently kept experiment: a keep is only made when it beats the best."""
        kept = [i for i, r in self._latest.items() if r.status == KEEP]
        if not kept:
            return None
        return self.get(max(kept, key=self._written_at.__getitem__))

    # -- internals ----------------------------------------------------------------

    def _absorb(self, record: ExperimentRecord) -> None:
        self._latest[record.id] = record
        self._written_at[record.id] = self._lines
        self._lines += 1
        # results.tsv is append-only and in id order: an experiment gets its row once it and
        # every earlier one are decided (a candidate waiting for its confirmation holds the rest)
        while self._next_row_id in self._latest:
            current = self._latest[self._next_row_id]
            if current.status in UNDECIDED:
                break
            row = tsv_row(current)
            if row is not None:
                self._rows.append(row)
            self._next_row_id += 1

    def _count_rows_on_disk(self) -> int:
        """Rows in results.tsv after cutting off a torn last line; creates the file."""
        path = self.results_path
        text = path.read_bytes() if path.exists() else b""
        if text and not text.endswith(b"\n"):
            text = text[: text.rfind(b"\n") + 1]
            os.truncate(path, len(text))
        if not text:
            _append_atomically(path, TSV_HEADER.encode())
            return 0
        if not text.startswith(TSV_HEADER.encode()):
            raise LedgerError(
                f"{path} does not start with the header {TSV_HEADER.strip()!r}; "
                f"move it away and it will be rebuilt from {self.journal_path}"
            )
        return text.count(b"\n") - 1

    def _write_missing_rows(self) -> None:
        missing = self._rows[self._rows_on_disk:]
        if missing:
            _append_atomically(self.results_path, "".join(missing).encode())
            self._rows_on_disk = len(self._rows)

    def _rewrite_results(self) -> None:
        temporary = self.results_path.with_suffix(".tsv.tmp")
        with open(temporary, "w") as f:
            f.write(TSV_HEADER + "".join(self._rows))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.results_path)
        self._rows_on_disk = len(self._rows)
