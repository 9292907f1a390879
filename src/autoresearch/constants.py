"""Read and rewrite the UPPER_CASE constants at the top level of a Python script.

Both functions work on text. `set_constants` replaces only the value expression of each
assignment, found through the syntax tree's positions, so comments, spacing and every
other line stay byte for byte as they were: a diff shows exactly the values changed.
"""
from __future__ import annotations

import ast
import math
import operator
import re

CONSTANT_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")

# Arithmetic allowed inside a constant's value, e.g. `2**19` or `4 * 1024`.
_BINARY_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY_OPERATORS = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_EXPONENT = 256  # keeps `10**10**10` from stalling the reader


class ConstantNotFound(KeyError):
    """A change names a constant the script does not assign at its top level."""

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = known
        listed = ", ".join(known) if known else "none"
        super().__init__(f"no top-level constant {name!r}; the script's constants are: {listed}")

    def __str__(self) -> str:  # KeyError would print the message inside quotes
        return self.args[0]


def _evaluate(node: ast.AST):
    """The value of a literal or of simple arithmetic on literals; ValueError otherwise."""
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATORS:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (left, right)):
            raise ValueError("arithmetic on non-numbers")
        if isinstance(node.op, ast.Pow) and abs(right) > _MAX_EXPONENT:
            raise ValueError("exponent too large")
        try:
            return _BINARY_OPERATORS[type(node.op)](left, right)
        except (ArithmeticError, ValueError) as error:
            raise ValueError(str(error)) from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY_OPERATORS:
        operand = _evaluate(node.operand)
        if not isinstance(operand, (int, float)) or isinstance(operand, bool):
            raise ValueError("sign on a non-number")
        return _UNARY_OPERATORS[type(node.op)](operand)
    if isinstance(node, ast.Tuple):
        return tuple(_evaluate(item) for item in node.elts)
    if isinstance(node, ast.List):
        return [_evaluate(item) for item in node.elts]
    return ast.literal_eval(node)  # strings, numbers, dicts, ...; raises ValueError


def parse_value(text: str):
    """The value of one constant's source text, e.g. "2**19" -> 524288; ValueError if not one."""
    try:
        return _evaluate(ast.parse(text.strip(), mode="eval").body)
    except (SyntaxError, TypeError, RecursionError) as error:
        raise ValueError(f"not a constant value: {text!r}") from error


def _constant_assignments(tree: ast.Module) -> dict[str, ast.expr]:
    """Name -> value node of each top-level `NAME = value`; the last assignment wins."""
    found = {}
    for statement in tree.body:
        if isinstance(statement, ast.Assign) and len(statement.targets) == 1:
            target = statement.targets[0]
        elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
            target = statement.target
        else:
            continue
        if isinstance(target, ast.Name) and CONSTANT_NAME.match(target.id):
            found[target.id] = statement.value
    return found


def _evaluable(assignments: dict[str, ast.expr]) -> dict[str, object]:
    values = {}
    for name, node in assignments.items():
        try:
            values[name] = _evaluate(node)
        except (ValueError, TypeError, SyntaxError, RecursionError):
            continue  # computed at run time (a function call, another name): not a constant
    return values


def read_constants(source: str) -> dict[str, object]:
    """Every top-level UPPER_CASE name assigned a literal (or arithmetic on literals)."""
    return _evaluable(_constant_assignments(ast.parse(source)))


def format_value(value) -> str:
    """Readable Python source for a constant's value, e.g. `2**19`, `0.0003`, `"SSSL"`."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value >= 1024 and value & (value - 1) == 0:
            return f"2**{value.bit_length() - 1}"
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no literal form in Python source")
        # repr is the shortest text that reads back as the same float; drop exponent padding
        return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m.group(1).lstrip("+") + m.group(2), repr(value))
    if isinstance(value, str):
        text = repr(value)
        if text.startswith("'") and '"' not in value:
            text = '"' + text[1:-1] + '"'
        return text
    if isinstance(value, tuple):
        items = [format_value(item) for item in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{format_value(k)}: {format_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write a {type(value).__name__} as a constant: {value!r}")


def _line_starts(data: bytes) -> list[int]:
    """Byte offset where each line begins (the tree's columns count UTF-8 bytes)."""
    return [0] + [i + 1 for i, byte in enumerate(data) if byte == 0x0A]


def _respace_comment(rest_of_line: bytes, width_change: int) -> bytes:
    """Keep a trailing comment in its column when the value before it changed width."""
    match = re.match(rb"([ \t]+)(#.*)", rest_of_line, re.DOTALL)
    if match is None or b"\t" in match.group(1):
        return rest_of_line
    old_gap = len(match.group(1))
    if old_gap <= 2:  # an ordinary inline comment, not one aligned in a column
        return rest_of_line
    new_gap = max(old_gap - width_change, 2)  # aligned while it fits, else two spaces
    return b" " * new_gap + match.group(2)


def set_constants(source: str, changes: dict) -> str:
    """`source` with the values of the named top-level constants replaced, nothing else."""
    assignments = _constant_assignments(ast.parse(source))
    for name in changes:
        if name not in assignments:
            raise ConstantNotFound(name, list(assignments))
    data = source.encode("utf-8")
    starts = _line_starts(data)
    # rewrite from the bottom up so earlier offsets stay valid
    ordered = sorted(changes, key=lambda n: (assignments[n].lineno, assignments[n].col_offset), reverse=True)
    for name in ordered:
        node = assignments[name]
        begin = starts[node.lineno - 1] + node.col_offset
        end = starts[node.end_lineno - 1] + node.end_col_offset
        new_text = format_value(changes[name]).encode("utf-8")
        line_end = data.find(b"\n", end)
        line_end = len(data) if line_end == -1 else line_end
        rest = data[end:line_end]
        if node.lineno == node.end_lineno:
            old_width = len(data[begin:end].decode("utf-8"))
            rest = _respace_comment(rest, len(new_text.decode("utf-8")) - old_width)
        data = data[:begin] + new_text + rest + data[line_end:]
    return data.decode("utf-8")
