"""The agent's prompt: its sections, the history table, and shrinking to a token budget."""
from __future__ import annotations

from autoresearch.agents.base import AgentContext
from autoresearch.agents.context import (
    aggregate_line, build_messages, estimate_tokens, history_rows, near_misses,
)
from autoresearch.edits import get_format
from autoresearch.records import (
    BASELINE, CANDIDATE, CONFIRM, CRASH, DISCARD, KEEP, PENDING, ExperimentRecord,
)

TRAIN = "".join(f"CONSTANT_{i} = {i}  # a line of the training script\n" for i in range(60))
PROGRAM = "Improve the model. Prefer simple changes.\n"
FORMAT = get_format("search-replace")


def record(id, status, val_bpb=None, *, parent="c0", commit=None, kind=CANDIDATE,
           description=None, reason="", repeat_of=None) -> ExperimentRecord:
    return ExperimentRecord(id=id, kind=kind, parent=parent, commit=commit or f"c{id}",
                            status=status, val_bpb=val_bpb, repeat_of=repeat_of,
                            description=description or f"idea number {id}", decision_reason=reason)


def baseline(value=1.9000) -> ExperimentRecord:
    return record(0, KEEP, value, parent="", commit="c0", kind=BASELINE, description="baseline")


def context(**fields) -> AgentContext:
    defaults = dict(program=PROGRAM, files={"train.py": TRAIN}, best_val_bpb=1.9, noise_sigma=0.001)
    defaults.update(fields)
    return AgentContext(**defaults)


def sections(user: str) -> list[str]:
    return [line for line in user.splitlines() if line.startswith("## ")]


def long_history(count: int) -> list[ExperimentRecord]:
    """Experiments 1..count: every 10th kept (each a new best), every 7th crashed."""
    history, best_commit, best = [baseline(2.0)], "c0", 2.0
    for i in range(1, count + 1):
        if i % 10 == 0:
            best -= 0.001
            history.append(record(i, KEEP, best, parent=best_commit))
            best_commit = f"c{i}"
        elif i % 7 == 0:
            history.append(record(i, CRASH, parent=best_commit, reason="no result: crash"))
        else:
            history.append(record(i, DISCARD, best + 0.01, parent=best_commit, reason="not better"))
    return history


# ---------------------------------------------------------------------------------
# tokens and structure


def test_estimate_tokens_is_characters_over_four_rounded_up():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2


def test_system_prompt_has_rules_and_the_format_instructions():
    system, _ = build_messages(context(), FORMAT)
    assert FORMAT.instructions in system
    for word in ("train.py", "sealed evaluator", "TIME_BUDGET", "causal", "noise", "seeds",
                 "Simpler"):
        assert word in system


def test_user_message_sections_come_in_order():
    ctx = context(history=[baseline(), record(1, DISCARD, 1.9005, reason="within noise")],
                  kept_diffs={1: "-A = 1\n+A = 2"}, telemetry_summary="loss 3.1 at 50%",
                  last_log_tail="Traceback\nValueError: boom")
    _, user = build_messages(ctx, FORMAT)
    titles = [s.split(" (")[0] for s in sections(user)]
    assert titles == ["## program.md", "## Harness API", "## Scores", "## History",
                      "## Near misses", "## Changes kept so far", "## Telemetry of the last run",
                      "## Log tail of the last failed run", "## Current editable files",
                      "## Task"]
    assert user.rstrip().endswith("system prompt.") and "ONE change" in user


def test_empty_optional_parts_are_left_out():
    _, user = build_messages(context(), FORMAT)
    assert "## Telemetry" not in user and "## Log tail" not in user
    assert "## Changes kept" not in user and "No experiments yet." in user


def test_default_harness_api_is_used_unless_given():
    _, user = build_messages(context(), FORMAT)
    for name in ("MAX_SEQ_LEN", "TIME_BUDGET", "VOCAB_SIZE", "SEED", "get_tokenizer",
                 'make_dataloader(tokenizer, B, T, "train"', "log(step", "submit(model)"):
        assert name in user
    _, user = build_messages(context(harness_api="ONLY_THIS()"), FORMAT)
    assert "ONLY_THIS()" in user and "get_tokenizer" not in user


def test_scores_show_best_and_noise_or_say_they_are_missing():
    _, user = build_messages(context(best_val_bpb=1.83214, noise_sigma=0.00041), FORMAT)
    assert "1.8321" in user and "sigma = 0.0004" in user
    _, user = build_messages(context(best_val_bpb=None, noise_sigma=None), FORMAT)
    assert "none yet" in user and "not estimated yet" in user


def test_files_are_shown_whole_in_a_fence_longer_than_their_backticks():
    text = 'DOC = """```python\nx```"""\n'
    _, user = build_messages(context(files={"train.py": text}), FORMAT)
    assert "### train.py\n````python\n" + text.rstrip() + "\n````" in user


# ---------------------------------------------------------------------------------
# history


def test_delta_is_against_the_mean_of_the_parent_measured_before():
    history = [baseline(1.9000), record(1, KEEP, 1.8990, kind=BASELINE, parent="c0", commit="c0"),
               record(2, DISCARD, 1.9010), record(3, CRASH)]
    rows = history_rows(history)
    assert rows[0].delta is None  # nothing measured before the first baseline
    assert abs(rows[2].delta - (1.9010 - 1.8995)) < 1e-9
    assert rows[3].delta is None  # no val_bpb


def test_history_table_shows_id_status_value_delta_reason_description():
    history = [baseline(1.9), record(1, DISCARD, 1.9021, reason="+0.0021: not better",
                                     description="GELU -> ReLU^2")]
    _, user = build_messages(context(history=history), FORMAT)
    assert "| 1 | discard | 1.9021 | +0.0021 | +0.0021: not better | GELU -> ReLU^2 |" in user


def test_re_runs_are_marked_in_the_table():
    history = [baseline(), record(1, PENDING, 1.899), record(2, DISCARD, 1.9001, kind=CONFIRM,
                                                              commit="c1", repeat_of=1)]
    _, user = build_messages(context(history=history), FORMAT)
    assert "[re-run of #1] idea number 2" in user


def test_near_misses_are_close_candidates_not_kept_best_first():
    history = [baseline(1.9), record(1, DISCARD, 1.8995), record(2, DISCARD, 1.9008),
               record(3, DISCARD, 1.95), record(4, KEEP, 1.89), record(5, PENDING, 1.8992)]
    misses = near_misses(history_rows(history), sigma=0.001)
    assert [m.record.id for m in misses] == [5, 1, 2]
    _, user = build_messages(context(history=history), FORMAT)
    near = user.split("## Near misses", 1)[1].split("## ", 1)[0]
    assert "#5 pending 1.8992 (-0.0008)" in near and "#3" not in near and "#4" not in near


def test_aggregate_line_counts_outcomes_and_names_the_best_kept():
    rows = history_rows(long_history(40)[1:])  # experiments 1-40
    assert aggregate_line(rows) == (
        "experiments 1-40: 31 discarded, 5 crashed, 4 kept (best 1.9960 at #40)")


# ---------------------------------------------------------------------------------
# budget


def test_everything_fits_a_roomy_budget():
    history = long_history(30)
    system, user = build_messages(context(history=history), FORMAT, token_budget=50_000)
    assert "| 1 | discard |" in user and "experiments 0-" not in user
    assert estimate_tokens(system) + estimate_tokens(user) <= 50_000


def test_long_history_fits_a_small_budget_keeping_newest_rows_and_files():
    history = long_history(500)
    diffs = {i: f"-OLD_{i}\n+NEW_{i}\n" * 40 for i in range(10, 501, 10)}
    ctx = context(history=history, kept_diffs=diffs, last_log_tail="\n".join(
        f"log line {i}" for i in range(300)), telemetry_summary="loss 3.0 at 10%")
    budget = 4_000
    system, user = build_messages(ctx, FORMAT, token_budget=budget)
    assert estimate_tokens(system) + estimate_tokens(user) <= budget
    assert "### train.py\n```python\n" + TRAIN.rstrip() + "\n```" in user  # files intact
    assert PROGRAM.rstrip() in user
    assert "| 500 | keep |" in user and "| 499 | discard |" in user  # newest rows survive
    assert "| 1 | discard |" not in user
    first_shown = min(int(line.split("|")[1]) for line in user.splitlines()
                      if line.startswith("| ") and line.split("|")[1].strip().isdigit())
    aggregate = aggregate_line(history_rows(history)[:first_shown])  # ids 0 .. first_shown-1
    assert f"experiments 0-{first_shown - 1}: " in aggregate and aggregate in user
    counts = [int(part.split()[0]) for part in aggregate.split(": ", 1)[1].split(", ")]
    assert sum(counts) == first_shown  # every row not shown is counted once
    # diffs go oldest first, the log keeps its last lines
    assert "NEW_500" in user or "## Changes kept" not in user
    assert "NEW_10\n" not in user
    assert "log line 0\n" not in user


def test_kept_diffs_are_cut_oldest_first():
    diffs = {i: f"+CHANGE_{i}\n" * 200 for i in (3, 1, 2)}
    full = build_messages(context(kept_diffs=diffs), FORMAT, token_budget=100_000)[1]
    assert all(f"CHANGE_{i}" in full for i in (1, 2, 3))
    without_diffs = build_messages(context(), FORMAT, token_budget=100_000)
    budget = estimate_tokens("".join(without_diffs)) + 800  # room for about one diff
    _, user = build_messages(context(kept_diffs=diffs), FORMAT, token_budget=budget)
    assert "CHANGE_3" in user and "CHANGE_1" not in user


def test_log_tail_keeps_its_last_lines():
    log = "\n".join(f"line {i:04d}" for i in range(2000))
    without_log = build_messages(context(), FORMAT, token_budget=100_000)
    budget = estimate_tokens("".join(without_log)) + 200
    system, user = build_messages(context(last_log_tail=log), FORMAT, token_budget=budget)
    assert "line 1999" in user and "line 0000" not in user
    assert estimate_tokens(system) + estimate_tokens(user) <= budget


def test_files_are_never_cut_even_over_budget():
    system, user = build_messages(context(history=long_history(50)), FORMAT, token_budget=100)
    assert TRAIN.rstrip() in user and PROGRAM.rstrip() in user
    assert "| 50 |" not in user  # the optional parts still went
