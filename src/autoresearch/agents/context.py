"""What an LLM agent is told: the system prompt and one user message, within a token budget.

`build_messages(context, edit_format)` renders an AgentContext. The editable files and
program.md always go in whole; when the total would exceed the budget, the optional
parts shrink in a fixed order (see SHRINK_STAGES): the old history rows collapse into
one aggregate line per range before recent rows go, kept diffs go oldest first, the
failure log keeps only its last lines.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from autoresearch.agents.base import AgentContext
from autoresearch.policy import MEASURED_STATUSES
from autoresearch.records import (
    ABORTED, BASELINE, CANDIDATE, CRASH, DISCARD, FAILED_PROPOSAL, INTERRUPTED, INVALID, KEEP,
    OVER_BUDGET, PENDING, RUNNING, TIMEOUT, ExperimentRecord,
)

CHARS_PER_TOKEN = 4  # rough average for English and code with common BPE tokenizers
DEFAULT_TOKEN_BUDGET = 24_000
MAX_NEAR_MISSES = 5
DEFAULT_NEAR_MISS_MARGIN = 0.002  # val_bpb, used as the noise while sigma is unknown
MAX_DESCRIPTION_CHARS = 90  # per history row
MAX_REASON_CHARS = 50

DEFAULT_HARNESS_API = """\
train.py may use only this from `autoresearch.harness.api` (read-only):
- MAX_SEQ_LEN, TIME_BUDGET (seconds of training), VOCAB_SIZE, SEED: constants of the profile
- get_tokenizer(): the tokenizer the data was prepared with
- make_dataloader(tokenizer, B, T, "train", device=...): yields (x, y, epoch) training batches
- log(step, **metrics): telemetry, e.g. log(step, loss=..., progress=...)
- submit(model): hand the trained model to the evaluator, once, at the end"""

STATUS_WORDS = {  # how the aggregate line counts each outcome
    KEEP: "kept", DISCARD: "discarded", PENDING: "pending", CRASH: "crashed",
    TIMEOUT: "timed out", OVER_BUDGET: "over budget", ABORTED: "aborted", INVALID: "invalid",
    FAILED_PROPOSAL: "failed proposals", INTERRUPTED: "interrupted", RUNNING: "running",
}


def estimate_tokens(text: str) -> int:
    """Tokens `text` will take, estimated as characters / 4 rounded up.

    Deliberately simple and tokenizer-free; real counts for code and English are close
    to this on average, and the budget leaves room for the error.
    """
    return math.ceil(len(text) / CHARS_PER_TOKEN)


# ---------------------------------------------------------------------------------
# history


@dataclass(frozen=True)
class HistoryRow:
    record: ExperimentRecord
    delta: float | None  # val_bpb minus the best's mean when it was proposed; negative is better


def history_rows(history: list[ExperimentRecord]) -> list[HistoryRow]:
    """Each record with its delta against the best at the time (the parent's measurements)."""
    measured: dict[str, list[float]] = {}
    rows = []
    for record in history:
        best = measured.get(record.parent)
        value = record.val_bpb
        finite = value is not None and math.isfinite(value)
        delta = value - sum(best) / len(best) if best and finite else None
        rows.append(HistoryRow(record, delta))
        if finite and record.commit and record.status in MEASURED_STATUSES:
            measured.setdefault(record.commit, []).append(value)
    return rows


def aggregate_line(rows: list[HistoryRow]) -> str:
    """Many rows in one line: 'experiments 1-40: 31 discarded, 6 kept (best 1.8231 at #33)'."""
    if not rows:
        return ""
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.record.status] = counts.get(row.record.status, 0) + 1
    kept = [r.record for r in rows if r.record.status == KEEP and r.record.val_bpb is not None]
    parts = []
    for status in sorted(counts, key=lambda s: -counts[s]):
        part = f"{counts[status]} {STATUS_WORDS.get(status, status)}"
        if status == KEEP and kept:
            best = min(kept, key=lambda r: r.val_bpb)
            part += f" (best {best.val_bpb:.4f} at #{best.id})"
        parts.append(part)
    return f"experiments {rows[0].record.id}-{rows[-1].record.id}: " + ", ".join(parts)


def _cell(text: str, limit: int) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _describe(record: ExperimentRecord) -> str:
    if record.kind == BASELINE:
        prefix = "[baseline] "
    elif record.repeat_of is not None:
        prefix = f"[re-run of #{record.repeat_of}] "
    else:
        prefix = ""
    return prefix + record.description


def table_row(row: HistoryRow) -> str:
    record = row.record
    value = f"{record.val_bpb:.4f}" if record.val_bpb is not None else "-"
    delta = f"{row.delta:+.4f}" if row.delta is not None else "-"
    return (f"| {record.id} | {record.status} | {value} | {delta} | "
            f"{_cell(record.decision_reason, MAX_REASON_CHARS)} | "
            f"{_cell(_describe(record), MAX_DESCRIPTION_CHARS)} |")


def render_history(rows: list[HistoryRow], recent: int) -> str:
    """The last `recent` rows as a table; everything older in one aggregate line."""
    if not rows:
        return "## History\nNo experiments yet."
    recent = max(0, min(recent, len(rows)))
    older, shown = rows[:len(rows) - recent], rows[len(rows) - recent:]
    lines = ["## History (oldest first; delta = val_bpb minus the best at the time, "
             "negative is better)"]
    if older:
        lines.append(aggregate_line(older))
    if shown:
        lines.append("| id | status | val_bpb | delta | reason | description |")
        lines.append("|---|---|---|---|---|---|")
        lines.extend(table_row(row) for row in shown)
    return "\n".join(lines)


def near_misses(rows: list[HistoryRow], sigma: float | None) -> list[HistoryRow]:
    """Candidates not kept that came within the noise of the best (or beat it unconfirmed)."""
    margin = sigma if sigma else DEFAULT_NEAR_MISS_MARGIN
    close = [r for r in rows if r.record.kind == CANDIDATE and r.delta is not None
             and r.record.status in (DISCARD, PENDING) and r.delta <= margin]
    return sorted(close, key=lambda r: r.delta)


def render_near_misses(misses: list[HistoryRow], count: int) -> str:
    if not misses or count <= 0:
        return ""
    lines = ["## Near misses (within the noise of the best: a variant or a combination may win)"]
    for row in misses[:count]:
        record = row.record
        lines.append(f"- #{record.id} {record.status} {record.val_bpb:.4f} ({row.delta:+.4f}): "
                     f"{_cell(record.description, MAX_DESCRIPTION_CHARS)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------
# the other sections


def _fence(text: str) -> str:
    """A backtick fence longer than any run of backticks inside `text`."""
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return "`" * max(3, longest + 1)


def render_kept_diffs(kept_diffs: dict, count: int) -> str:
    """The newest `count` diffs of kept changes, oldest of them first."""
    if not kept_diffs or count <= 0:
        return ""
    ordered = sorted(kept_diffs.items(), key=lambda item: _id_order(item[0]))[-count:]
    lines = ["## Changes kept so far (diffs)"]
    for experiment_id, diff in ordered:
        fence = _fence(diff)
        lines.append(f"### #{experiment_id}\n{fence}diff\n{diff.rstrip()}\n{fence}")
    return "\n".join(lines)


def _id_order(key) -> tuple:
    try:
        return (0, int(key), "")
    except (TypeError, ValueError):
        return (1, 0, str(key))


def _last_lines(text: str, count: int) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join(lines[-count:]) if count > 0 else ""


def render_telemetry(summary: str, lines: int) -> str:
    text = _last_lines(summary, lines)
    return f"## Telemetry of the last run\n{text}" if text else ""


def render_log_tail(log_tail: str, lines: int) -> str:
    text = _last_lines(log_tail, lines)
    if not text:
        return ""
    fence = _fence(text)
    return f"## Log tail of the last failed run\n{fence}\n{text}\n{fence}"


def render_files(files: dict) -> str:
    parts = ["## Current editable files (the best version so far)"]
    for name in sorted(files):
        text = files[name]
        fence = _fence(text)
        language = "python" if name.endswith(".py") else ""
        parts.append(f"### {name}\n{fence}{language}\n{text.rstrip()}\n{fence}")
    return "\n".join(parts)


def render_scores(context: AgentContext) -> str:
    best = (f"{context.best_val_bpb:.4f}" if context.best_val_bpb is not None
            else "none yet (the baseline has not been measured)")
    if context.noise_sigma is not None:
        noise = (f"sigma = {context.noise_sigma:.4f} per run (two runs of the same code on "
                 "different seeds differ by about this much)")
    else:
        noise = "not estimated yet"
    return f"## Scores\nBest val_bpb so far: {best} (lower is better)\nNoise floor: {noise}"


def system_prompt(context: AgentContext, edit_format) -> str:
    editable = ", ".join(sorted(context.files)) or "(none)"
    return f"""\
You are an ML researcher improving a small language-model training script by experiment.
Each experiment is one change; it is trained under a fixed time budget and measured by
val_bpb (bits per byte on held-out data; lower is better).

Rules:
- Edit only these files: {editable}. Everything else, the harness included, is frozen.
- The metric comes only from the sealed evaluator, which runs the model handed to submit().
  Do not compute, print or estimate val_bpb yourself, and do not read validation data.
- Training must finish within TIME_BUDGET; a run over budget, a timeout or a crash fails.
- The model must stay causal: a prediction may use only the tokens before it. The
  evaluator probes this and refuses a model that looks ahead.
- Results are noisy. A gain inside the noise is re-run on new seeds before it is kept,
  and a change of seeds alone never counts as progress.
- Simpler is better: equal val_bpb with less code is an improvement; a tiny gain that
  adds a lot of complexity is not worth it.
- Propose exactly one idea per answer, so its effect can be measured.

Answer format:
{edit_format.instructions}"""


def task_text(context: AgentContext) -> str:
    names = ", ".join(sorted(context.files)) or "the editable files"
    return ("## Task\nPropose ONE change to " + names + " that you expect to lower val_bpb. "
            "Do not repeat an experiment from the history unless you change it meaningfully. "
            "Answer only in the format given in the system prompt.")


# ---------------------------------------------------------------------------------
# assembling within the budget


@dataclass(frozen=True)
class Sizes:
    """How much of each optional part goes in."""

    history_rows: int
    near_misses: int
    kept_diffs: int
    telemetry_lines: int
    log_lines: int


# Applied in order while the messages are over budget: (part, smallest size at this stage).
SHRINK_STAGES = (
    ("log_lines", 40),
    ("kept_diffs", 3),
    ("history_rows", 20),
    ("telemetry_lines", 20),
    ("kept_diffs", 1),
    ("history_rows", 5),
    ("log_lines", 10),
    ("near_misses", 0),
    ("kept_diffs", 0),
    ("history_rows", 0),
    ("telemetry_lines", 0),
    ("log_lines", 0),
)


class _Renderer:
    """Renders the user message's sections for given Sizes, caching each section."""

    def __init__(self, context: AgentContext):
        self.context = context
        self.rows = history_rows(context.history)
        self.misses = near_misses(self.rows, context.noise_sigma)
        api = context.harness_api.strip() or DEFAULT_HARNESS_API
        self.head = [f"## program.md\n{context.program.rstrip()}", f"## Harness API\n{api}",
                     render_scores(context)]
        self.tail = [render_files(context.files), task_text(context)]
        self._cache: dict = {}

    def full_sizes(self) -> Sizes:
        c = self.context
        return Sizes(history_rows=len(self.rows), near_misses=MAX_NEAR_MISSES,
                     kept_diffs=len(c.kept_diffs),
                     telemetry_lines=len(c.telemetry_summary.splitlines()),
                     log_lines=len(c.last_log_tail.splitlines()))

    def section(self, part: str, size: int) -> str:
        key = (part, size)
        if key not in self._cache:
            c = self.context
            render = {
                "history_rows": lambda: render_history(self.rows, size),
                "near_misses": lambda: render_near_misses(self.misses, size),
                "kept_diffs": lambda: render_kept_diffs(c.kept_diffs, size),
                "telemetry_lines": lambda: render_telemetry(c.telemetry_summary, size),
                "log_lines": lambda: render_log_tail(c.last_log_tail, size),
            }[part]
            self._cache[key] = render()
        return self._cache[key]

    def sections(self, sizes: Sizes) -> list[str]:
        optional = [self.section(part, getattr(sizes, part)) for part in
                    ("history_rows", "near_misses", "kept_diffs", "telemetry_lines", "log_lines")]
        return [s for s in self.head + optional + self.tail if s]


SEPARATOR = "\n\n"


def _chars(sections: list[str]) -> int:
    return sum(map(len, sections)) + len(SEPARATOR) * max(0, len(sections) - 1)


def fit_sizes(renderer: _Renderer, budget_chars: int) -> Sizes:
    """The largest sizes, shrinking stage by stage, whose message fits in budget_chars."""
    sizes = renderer.full_sizes()

    def fits(candidate: Sizes) -> bool:
        return _chars(renderer.sections(candidate)) <= budget_chars

    for part, floor in SHRINK_STAGES:
        if fits(sizes):
            break
        current = getattr(sizes, part)
        if current <= floor:
            continue
        # each part's size grows with its count: binary search the largest that fits
        low, high = floor, current - 1
        best = floor
        while low <= high:
            middle = (low + high) // 2
            if fits(replace(sizes, **{part: middle})):
                best, low = middle, middle + 1
            else:
                high = middle - 1
        sizes = replace(sizes, **{part: best})
    return sizes


def build_messages(context: AgentContext, edit_format, *,
                   token_budget: int = DEFAULT_TOKEN_BUDGET) -> tuple[str, str]:
    """(system prompt, user message) for one proposal, within token_budget if at all possible.

    The editable files and program.md are never cut, so a budget smaller than they need
    is exceeded rather than hiding code from the model.
    """
    system = system_prompt(context, edit_format)
    renderer = _Renderer(context)
    budget_chars = (token_budget - estimate_tokens(system)) * CHARS_PER_TOKEN
    sizes = fit_sizes(renderer, budget_chars)
    return system, SEPARATOR.join(renderer.sections(sizes))
