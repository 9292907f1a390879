"""Edit formats: parsing, tolerant matching, validation and messages for the model."""
from __future__ import annotations

import pytest

from autoresearch.edits import (
    EDIT_FORMATS, EditResult, SearchReplace, WholeFile, get_format, parse_description,
    parse_search_replace, repair_prompt,
)

TRAIN = """\
import math

LR = 0.04  # learning rate
DEPTH = 8  # layers


def schedule(step):
    if step < 10:
        return step / 10
    return 1.0


def main():
    for step in range(100):
        lr = LR * schedule(step)
        print(step, lr)
"""
FILES = {"train.py": TRAIN}
EDITABLE = ["train.py"]


def block(search: str, replace: str, name: str = "train.py") -> str:
    return f"{name}\n<<<<<<< SEARCH\n{search}\n=======\n{replace}\n>>>>>>> REPLACE\n"


def apply(reply: str, files=None, editable=None, fmt: str = "search-replace") -> EditResult:
    return get_format(fmt).apply(reply, FILES if files is None else files,
                                 EDITABLE if editable is None else editable)


# ---------------------------------------------------------------------------------
# registry and description


def test_registry_names_both_formats_and_rejects_unknown_with_the_list():
    assert isinstance(get_format("search-replace"), SearchReplace)
    assert isinstance(get_format("whole-file"), WholeFile)
    assert isinstance(get_format(), SearchReplace)  # the default
    with pytest.raises(ValueError, match="search-replace.*whole-file"):
        get_format("udiff")
    assert set(EDIT_FORMATS) == {"search-replace", "whole-file"}


def test_every_format_explains_itself_with_an_example():
    for name in EDIT_FORMATS:
        text = get_format(name).instructions
        assert "DESCRIPTION:" in text and "Example" in text and "train.py" in text


@pytest.mark.parametrize("line", [
    "DESCRIPTION: lower LR", "**Description:** lower LR", "description: lower LR",
    "## DESCRIPTION: lower LR", "**DESCRIPTION**: `lower LR`",
])
def test_description_line_tolerates_markdown_and_case(line):
    assert parse_description(f"{line}\nmore text") == "lower LR"


def test_description_taken_from_the_reply():
    result = apply("DESCRIPTION: lower LR\n" + block("LR = 0.04  # learning rate",
                                                    "LR = 0.03  # learning rate"))
    assert result.ok and result.description == "lower LR" and result.notes == []


def test_missing_description_is_derived_and_noted():
    result = apply(block("LR = 0.04  # learning rate", "LR = 0.03  # learning rate"))
    assert result.ok and result.description == "edit train.py"
    assert any("DESCRIPTION" in note for note in result.notes)


# ---------------------------------------------------------------------------------
# search-replace: parsing and applying


def test_parse_several_blocks_in_order_with_fences_and_inherited_file_name():
    reply = ("DESCRIPTION: x\ntrain.py\n```python\n<<<<<<< SEARCH\na\n=======\nb\n>>>>>>> REPLACE\n"
             "```\n<<<<<<< SEARCH\nc\n=======\nd\n>>>>>>> REPLACE\n")
    blocks = parse_search_replace(reply)
    assert [(b.file, b.search, b.replace) for b in blocks] == [
        ("train.py", ["a"], ["b"]), ("train.py", ["c"], ["d"])]


def test_exact_match_replaces_only_those_lines():
    result = apply("DESCRIPTION: d\n" + block("DEPTH = 8  # layers", "DEPTH = 12  # layers"))
    assert result.files["train.py"] == TRAIN.replace("DEPTH = 8", "DEPTH = 12")


def test_blocks_apply_in_order_each_on_the_previous_result():
    reply = ("DESCRIPTION: d\n" + block("LR = 0.04  # learning rate", "LR = 0.05  # learning rate")
             + block("LR = 0.05  # learning rate", "LR = 0.06  # learning rate"))
    assert "LR = 0.06  # learning rate" in apply(reply).files["train.py"]


def test_trailing_whitespace_differences_are_tolerated():
    result = apply("DESCRIPTION: d\n" + block("DEPTH = 8  # layers   ", "DEPTH = 9  # layers"))
    assert result.ok and "DEPTH = 9  # layers\n" in result.files["train.py"]


def test_indentation_difference_is_tolerated_and_replacement_reindented():
    search = "if step < 10:\n    return step / 10"  # the model dropped one level of indent
    replace = "if step < 20:\n    return step / 20"
    result = apply("DESCRIPTION: d\n" + block(search, replace))
    assert result.ok, result.error
    assert "    if step < 20:\n        return step / 20\n" in result.files["train.py"]


def test_over_indented_search_is_dedented_in_the_replacement():
    search = "            lr = LR * schedule(step)"  # 12 spaces; the file has 8
    replace = "            lr = 2 * LR * schedule(step)"
    result = apply("DESCRIPTION: d\n" + block(search, replace))
    assert result.ok, result.error
    assert "\n        lr = 2 * LR * schedule(step)\n" in result.files["train.py"]


def test_missing_search_text_quotes_it_and_suggests_the_nearest_lines():
    result = apply("DESCRIPTION: d\n" + block("LR = 0.4  # learn rate", "LR = 0.3"))
    assert result.files is None
    assert "LR = 0.4  # learn rate" in result.error  # the search quoted back
    assert "did you mean these lines" in result.error.lower()
    assert "(train.py line 3)?\nLR = 0.04  # learning rate\n" in result.error


def test_nearest_window_picks_the_most_similar_multi_line_run():
    search = "def schedule(stp):\n    if stp < 10:\n        return stp / 10"
    error = apply("DESCRIPTION: d\n" + block(search, "x = 1")).error
    suggestion = error.split("Did you mean these lines", 1)[1]
    assert "def schedule(step):" in suggestion and "lines 7-9" in suggestion


def test_ambiguous_search_asks_for_more_context():
    files = {"train.py": "x = 1\ny = 2\nx = 1\n"}
    result = apply("DESCRIPTION: d\n" + block("x = 1", "x = 3"), files=files)
    assert result.files is None and "matches 2 places" in result.error
    assert "more surrounding lines" in result.error


def test_block_for_a_file_that_may_not_be_edited_names_the_allowed_ones():
    files = {"train.py": TRAIN, "prepare.py": "A = 1\n"}
    result = apply("DESCRIPTION: d\n" + block("A = 1", "A = 2", name="prepare.py"), files=files)
    assert result.files is None and "prepare.py" in result.error
    assert "Only these files may be edited: train.py" in result.error


def test_empty_search_on_a_missing_file_is_refused():
    result = apply("DESCRIPTION: d\n" + block("", "print('new')", name="extra.py"),
                   editable=["train.py", "extra.py"])
    assert result.files is None and "does not exist" in result.error


def test_empty_search_on_a_non_empty_file_asks_for_the_lines():
    result = apply("DESCRIPTION: d\n" + block("", "x = 1"))
    assert result.files is None and "SEARCH section is empty" in result.error


def test_unclosed_block_is_reported():
    reply = ("DESCRIPTION: d\ntrain.py\n<<<<<<< SEARCH\nLR = 0.04  # learning rate\n"
             "=======\nLR = 1\n")
    result = apply(reply)
    assert result.files is None and ">>>>>>> REPLACE" in result.error


def test_block_without_file_name_uses_the_only_editable_file():
    reply = ("DESCRIPTION: d\n<<<<<<< SEARCH\nDEPTH = 8  # layers\n=======\n"
             "DEPTH = 6  # layers\n>>>>>>> REPLACE")
    assert apply(reply).files["train.py"] == TRAIN.replace("DEPTH = 8", "DEPTH = 6")


# ---------------------------------------------------------------------------------
# validation shared by the formats


def test_syntax_error_reports_line_message_and_numbered_lines():
    result = apply("DESCRIPTION: d\n" + block("DEPTH = 8  # layers", "DEPTH = (8  # layers"))
    assert result.files is None
    assert "does not parse" in result.error and "line 4" in result.error
    assert ">> 4 | DEPTH = (8  # layers" in result.error and "   3 | LR = 0.04" in result.error
    assert "Fix" in result.error


def test_reply_over_the_size_limit_is_refused():
    fmt = get_format("search-replace", max_reply_chars=100)
    reply = "DESCRIPTION: d\n" + block("DEPTH = 8  # layers", "DEPTH = 9  # layers" + " " * 100)
    result = fmt.apply(reply, FILES, EDITABLE)
    assert result.files is None and "over the limit" in result.error


@pytest.mark.parametrize("fmt", list(EDIT_FORMATS))
def test_empty_reply_explains_the_format(fmt):
    result = apply("   \n", fmt=fmt)
    assert result.files is None and "empty" in result.error and "DESCRIPTION:" in result.error


@pytest.mark.parametrize("fmt", list(EDIT_FORMATS))
def test_reply_without_edits_explains_the_format(fmt):
    result = apply("DESCRIPTION: I would lower the learning rate.\nThat is all.", fmt=fmt)
    assert result.files is None and "no " in result.error and "Example" in result.error


def test_reply_that_changes_nothing_is_an_error():
    result = apply("DESCRIPTION: d\n" + block("DEPTH = 8  # layers", "DEPTH = 8  # layers"))
    assert result.files is None and "exactly as it was" in result.error


# ---------------------------------------------------------------------------------
# whole-file


def test_whole_file_replaces_the_contents():
    new = TRAIN.replace("DEPTH = 8", "DEPTH = 4")
    result = apply(f"DESCRIPTION: shallower\n**train.py**\n```python\n{new}```\n", fmt="whole-file")
    assert result.ok and result.files == {"train.py": new} and result.description == "shallower"


def test_whole_file_ignores_unnamed_snippets_and_refuses_other_files():
    new = TRAIN.replace("DEPTH = 8", "DEPTH = 4")
    reply = f"DESCRIPTION: d\nfor example\n```\nx = 1\n```\ntrain.py\n```python\n{new}```\n"
    assert apply(reply, fmt="whole-file").files == {"train.py": new}
    result = apply("DESCRIPTION: d\nother.py\n```python\nx = 1\n```\n", fmt="whole-file")
    assert result.files is None and "Only these files may be edited: train.py" in result.error


def test_whole_file_syntax_error_is_caught():
    reply = "DESCRIPTION: d\ntrain.py\n```python\ndef f(:\n    pass\n```\n"
    result = apply(reply, fmt="whole-file")
    assert result.files is None and "line 1" in result.error


# ---------------------------------------------------------------------------------
# repair


def test_repair_prompt_quotes_the_error_and_asks_for_a_full_answer():
    result = apply("DESCRIPTION: d\n" + block("nope", "x"))
    prompt = repair_prompt(result)
    assert result.error in prompt and "Answer again" in prompt
    with pytest.raises(ValueError):
        repair_prompt(EditResult({"train.py": "x"}, "d"))


def test_nearest_lines_of_a_long_block_in_a_long_file_are_found():
    lines = [f"    x_{i} = torch.randn({i * 7 % 997}, {i}) * SCALE_{i % 7}  # row {i}"
             for i in range(400)]
    files = {"train.py": "def f():\n" + "\n".join(lines) + "\n"}
    search = "\n".join(line.replace("SCALE", "SCAL") for line in lines[200:260])
    error = apply("DESCRIPTION: d\n" + block(search, "    pass"), files=files).error
    suggestion = error.split("Did you mean these lines", 1)[1]
    assert "(train.py lines 202-231)?\n" + lines[200] + "\n" in suggestion  # 30 lines offered
