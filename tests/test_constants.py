import ast

import pytest

from autoresearch.constants import (ConstantNotFound, format_value, parse_value, read_constants,
                                    set_constants)

SOURCE = '''"""A training script."""
import math

# ----- hyperparameters
DEPTH = 4                 # transformer layers
TOTAL_BATCH_SIZE = 2**19  # tokens per optimizer step
MATRIX_LR = 0.04  # Muon
ADAM_BETAS = (0.8, 0.95)
WINDOW_PATTERN = "SSSL"   # S = half context, L = full
WARMUP_RATIO = 0.0
SHIFT = -3
EPS = 1e-10
TOKENS = 4 * 1024
lowercase_name = 5
DEVICE = math.sqrt(2)


def train():
    INNER = 7
    return INNER


if DEPTH > 2:
    NESTED = 1
'''


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b) if x != y]


def test_reads_top_level_literals_and_arithmetic():
    assert read_constants(SOURCE) == {
        "DEPTH": 4, "TOTAL_BATCH_SIZE": 2**19, "MATRIX_LR": 0.04, "ADAM_BETAS": (0.8, 0.95),
        "WINDOW_PATTERN": "SSSL", "WARMUP_RATIO": 0.0, "SHIFT": -3, "EPS": 1e-10,
        "TOKENS": 4096,
    }


def test_annotated_assignment_and_last_assignment_win():
    source = "A: int = 3\nB = 1\nB = 2\n"
    assert read_constants(source) == {"A": 3, "B": 2}
    assert read_constants(set_constants(source, {"A": 4, "B": 5})) == {"A": 4, "B": 5}
    assert set_constants(source, {"B": 5}) == "A: int = 3\nB = 1\nB = 5\n"


def test_set_constants_rewrites_only_the_values():
    after = set_constants(SOURCE, {"MATRIX_LR": 0.05, "WINDOW_PATTERN": "L"})
    assert changed_lines(SOURCE, after) == [
        ("MATRIX_LR = 0.04  # Muon\n", "MATRIX_LR = 0.05  # Muon\n"),
        ('WINDOW_PATTERN = "SSSL"   # S = half context, L = full\n',
         'WINDOW_PATTERN = "L"      # S = half context, L = full\n'),
    ]


def test_aligned_comment_keeps_its_column_while_it_fits():
    after = set_constants(SOURCE, {"DEPTH": 12, "TOTAL_BATCH_SIZE": 2**11 + 1})
    (_, depth), (_, total) = changed_lines(SOURCE, after)
    assert depth == "DEPTH = 12                # transformer layers\n"
    assert depth.index("#") == SOURCE.splitlines()[4].index("#")
    assert total == "TOTAL_BATCH_SIZE = 2049  # tokens per optimizer step\n"
    longer = set_constants(SOURCE, {"DEPTH": 123456789012345678901234})
    assert "DEPTH = 123456789012345678901234  # transformer layers\n" in longer


def test_ordinary_inline_comment_gap_is_kept():
    after = set_constants(SOURCE, {"MATRIX_LR": 0.123456})
    assert "MATRIX_LR = 0.123456  # Muon\n" in after


@pytest.mark.parametrize("value", [
    2**19, 2**12, 1000, 512, 0, -7, 0.05, 3e-4, 1e-10, -0.5, 2.5e20, (0.8, 0.95), (1,), (),
    "SSSL", 'say "hi"', "it's", True, None, [1, 2], {"a": 1},
])
def test_round_trip_of_tricky_values(value):
    after = set_constants(SOURCE, {"SHIFT": value})
    ast.parse(after)
    read = read_constants(after)["SHIFT"]
    assert read == value and type(read) is type(value)
    assert len(changed_lines(SOURCE, after)) == 1


def test_format_value_is_readable():
    assert format_value(2**19) == "2**19"
    assert format_value(1000) == "1000"
    assert format_value(512) == "512"
    assert format_value(0.0003) == "0.0003"
    assert format_value(1e-5) == "1e-5"
    assert format_value(0.05) == "0.05"
    assert format_value("SSSL") == '"SSSL"'
    assert format_value((0.8, 0.95)) == "(0.8, 0.95)"
    with pytest.raises(ValueError):
        format_value(float("nan"))


def test_multiline_value_is_replaced_whole():
    source = "BETAS = (\n    0.8,\n    0.95,\n)  # adam\nX = 1\n"
    assert set_constants(source, {"BETAS": (0.9, 0.99)}) == "BETAS = (0.9, 0.99)  # adam\nX = 1\n"


def test_columns_count_bytes_not_characters():
    source = 'GREETING = "héllo"  # ü\nNAME = "x"\n'
    after = set_constants(source, {"GREETING": "ab", "NAME": "é"})
    assert after == 'GREETING = "ab"  # ü\nNAME = "é"\n'


def test_crlf_line_endings_are_kept():
    source = "A = 1  # one\r\nB = 2\r\n"
    assert set_constants(source, {"A": 3}) == "A = 3  # one\r\nB = 2\r\n"


def test_unknown_constant_names_the_known_ones():
    with pytest.raises(ConstantNotFound) as caught:
        set_constants(SOURCE, {"MATRIX_LR": 0.05, "MATRX_LR": 0.05})
    assert isinstance(caught.value, KeyError)
    message = str(caught.value)
    assert "MATRX_LR" in message and "MATRIX_LR" in message and "DEPTH" in message
    with pytest.raises(ConstantNotFound):
        set_constants(SOURCE, {"INNER": 1})  # inside a function, not top level


def test_parse_value_refuses_code():
    assert parse_value(" 2**19 ") == 2**19
    assert parse_value("(0.8, 0.95)") == (0.8, 0.95)
    for text in ("math.pi", "print(1)", "10**10**10", "1 +", '"a" * 3'):
        with pytest.raises(ValueError):
            parse_value(text)
