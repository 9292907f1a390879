"""Edit formats an LLM may answer in: parse a reply, apply it to the files, validate.

A format is a small class registered by name in EDIT_FORMATS. Its `instructions` go
into the prompt; its `apply(reply, files, editable)` is a pure function returning an
EditResult. Every failure comes back as `EditResult.error`, a message written for the
model (what went wrong, what to send instead), so a repair turn can quote it verbatim.

Every reply starts with a line `DESCRIPTION: <one line>`; then come the edits:

    search-replace (default)   the file name on its own line, then
                               <<<<<<< SEARCH / old lines / ======= / new lines / >>>>>>> REPLACE
    whole-file                 the file name on its own line, then a fenced code block
                               holding the complete new contents
"""
from __future__ import annotations

import ast
import difflib
import re
from dataclasses import dataclass, field

DEFAULT_MAX_REPLY_CHARS = 200_000
MAX_DESCRIPTION_CHARS = 200
QUOTED_LINES = 6  # lines of a failed SEARCH quoted back to the model
SUGGESTED_LINES = 30  # at most this many real lines offered in their place
PROBE_LINES = 8  # lines of a failed SEARCH compared against the file to find its place
CANDIDATE_WINDOWS = 10  # windows scored in full after the quick pre-filter


@dataclass
class EditResult:
    files: dict[str, str] | None  # full new contents of every changed file; None on error
    description: str
    error: str | None = None  # for the model: what failed and what to do
    notes: list[str] = field(default_factory=list)  # things tolerated, e.g. a missing DESCRIPTION

    @property
    def ok(self) -> bool:
        return self.error is None


class EditError(Exception):
    """Raised inside a format while applying; its message is meant for the model."""


# ---------------------------------------------------------------------------------
# the description line

_DESCRIPTION = re.compile(r"^[\s*_#>`-]*description[\s*_`]*:[\s*_`]*(?P<text>.*)$", re.IGNORECASE)


def parse_description(reply: str) -> str:
    """The text of the first `DESCRIPTION:` line (markdown and case tolerated), or ""."""
    for line in reply.splitlines():
        match = _DESCRIPTION.match(line)
        if match:
            text = " ".join(match.group("text").strip(" *_`").split())
            return text[:MAX_DESCRIPTION_CHARS]
    return ""


# ---------------------------------------------------------------------------------
# shared helpers


def _clean_file_name(line: str) -> str:
    """'**train.py**:', '`train.py`', '### ./train.py' -> 'train.py'."""
    name = line.strip().strip("*_`#:").strip().strip("*_`:")
    if name.startswith("./"):
        name = name[2:]
    return name


def _looks_like_file_name(name: str) -> bool:
    return bool(name) and not any(c.isspace() for c in name) and ("." in name or "/" in name)


def _is_fence(line: str) -> bool:
    return line.strip().startswith("```")


def _check_editable(name: str, editable: list[str], what: str) -> None:
    if name not in editable:
        allowed = ", ".join(editable) or "(none)"
        raise EditError(f"{what} names {name!r}, which may not be edited. "
                        f"Only these files may be edited: {allowed}. Put the file name alone "
                        "on the line before the block.")


def _numbered(lines: list[str], first_number: int, mark: int | None = None) -> str:
    width = len(str(first_number + len(lines)))
    out = []
    for offset, line in enumerate(lines):
        number = first_number + offset
        arrow = ">>" if number == mark else "  "
        out.append(f"{arrow} {number:>{width}} | {line}")
    return "\n".join(out)


def _syntax_problem(name: str, text: str) -> str | None:
    try:
        ast.parse(text, filename=name)
    except SyntaxError as error:
        lines = text.splitlines()
        line = error.lineno or 1
        start = max(1, line - 3)
        shown = _numbered(lines[start - 1:line + 2], start, mark=line)
        return (f"After your edits, {name} does not parse: line {line}: {error.msg}.\n"
                f"{shown}\nFix the edit so that {name} is valid Python.")
    return None


# ---------------------------------------------------------------------------------
# the common pipeline


class EditFormat:
    """Base of the formats: checks and validation shared by all; subclasses parse."""

    name = ""
    instructions = ""

    def __init__(self, max_reply_chars: int = DEFAULT_MAX_REPLY_CHARS):
        self.max_reply_chars = max_reply_chars

    def apply(self, reply: str, files: dict[str, str], editable: list[str]) -> EditResult:
        if not reply or not reply.strip():
            return EditResult(None, "", "The reply was empty. " + self._expected())
        if len(reply) > self.max_reply_chars:
            return EditResult(None, "", (
                f"The reply is {len(reply):,} characters, over the limit of "
                f"{self.max_reply_chars:,}. Send only the edits, keeping them short."))
        description = parse_description(reply)
        try:
            changed = self._edit(reply, dict(files), list(editable))
        except EditError as error:
            return EditResult(None, description, str(error))
        changed = {n: text for n, text in changed.items() if files.get(n) != text}
        if not changed:
            return EditResult(None, description, (
                "The edits leave every file exactly as it was. Propose a change that "
                "actually modifies the code."))
        for name in sorted(changed):
            if name.endswith(".py"):
                problem = _syntax_problem(name, changed[name])
                if problem:
                    return EditResult(None, description, problem)
        notes = []
        if not description:
            description = "edit " + ", ".join(sorted(changed))
            notes.append(f"the reply had no DESCRIPTION line; using {description!r}")
        return EditResult(changed, description, None, notes)

    def _edit(self, reply: str, files: dict[str, str], editable: list[str]) -> dict[str, str]:
        """New contents of the files the reply touches; raises EditError."""
        raise NotImplementedError

    def _expected(self) -> str:
        return "Answer in this format:\n\n" + self.instructions


# ---------------------------------------------------------------------------------
# search-replace

_SEARCH = re.compile(r"^\s*<{5,9}\s*SEARCH\s*$")
_DIVIDER = re.compile(r"^\s*={5,9}\s*$")
_REPLACE = re.compile(r"^\s*>{5,9}\s*REPLACE\s*$")


@dataclass
class SearchReplaceBlock:
    file: str
    search: list[str]  # lines, without line endings
    replace: list[str]
    number: int  # 1-based position in the reply, for messages


def parse_search_replace(reply: str) -> list[SearchReplaceBlock]:
    """The blocks of a reply in order; raises EditError on a block that is not closed."""
    lines = reply.splitlines()
    blocks: list[SearchReplaceBlock] = []
    index = 0
    previous_file = ""
    while index < len(lines):
        if not _SEARCH.match(lines[index]):
            index += 1
            continue
        number = len(blocks) + 1
        file_name = _name_before(lines, index) or previous_file
        search, index = _collect(lines, index + 1, _DIVIDER, number, "=======")
        replace, index = _collect(lines, index + 1, _REPLACE, number, ">>>>>>> REPLACE")
        blocks.append(SearchReplaceBlock(file_name, search, replace, number))
        previous_file = file_name
        index += 1
    return blocks


def _name_before(lines: list[str], index: int, skip_fences: bool = True) -> str:
    """The file name on the nearest line above a block, skipping blank lines (and fences)."""
    for line in reversed(lines[max(0, index - 3):index]):
        if not line.strip() or (skip_fences and _is_fence(line)):
            continue
        name = _clean_file_name(line)
        return name if _looks_like_file_name(name) else ""
    return ""


def _collect(lines, start, end_marker, number, marker_text):
    for index in range(start, len(lines)):
        if end_marker.match(lines[index]):
            return lines[start:index], index
        if _SEARCH.match(lines[index]):
            break
    raise EditError(f"Block {number} is not complete: a line `{marker_text}` is missing. "
                    "Each block is <<<<<<< SEARCH, the old lines, =======, the new lines, "
                    ">>>>>>> REPLACE.")


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


def _find_exact(haystack, needle, same) -> list[int]:
    n = len(needle)
    return [i for i in range(len(haystack) - n + 1)
            if all(same(haystack[i + k], needle[k]) for k in range(n))]


def _indent_shift(window: list[str], search: list[str]) -> tuple[str, str] | None:
    """(added, removed) prefix that turns search's indentation into window's, if consistent."""
    pairs = [(w, s) for w, s in zip(window, search) if s.strip()]
    if not pairs or any(w.strip() != s.strip() for w, s in zip(window, search)):
        return None
    first_window, first_search = _indent(pairs[0][0]), _indent(pairs[0][1])
    if first_window.endswith(first_search):
        added, removed = first_window[:len(first_window) - len(first_search)], ""
    elif first_search.endswith(first_window):
        added, removed = "", first_search[:len(first_search) - len(first_window)]
    else:
        return None
    for w, s in pairs:
        if not _indent(s).startswith(removed) or _indent(w) != added + _indent(s)[len(removed):]:
            return None
    return added, removed


def _reindent(lines: list[str], added: str, removed: str) -> list[str]:
    out = []
    for line in lines:
        if not line.strip():
            out.append(line)
            continue
        if removed and line.startswith(removed):
            line = line[len(removed):]
        elif removed:
            line = line.lstrip()
        out.append(added + line)
    return out


def _locate(content: list[str], block: SearchReplaceBlock) -> tuple[int, list[str]]:
    """Where the block's SEARCH matches and the replacement lines to put there."""
    search = block.search
    for same in (lambda a, b: a == b, lambda a, b: a.rstrip() == b.rstrip()):
        found = _find_exact(content, search, same)
        if len(found) == 1:
            return found[0], block.replace
        if found:
            raise _ambiguous(block, found)
    shifted = []
    for i in range(len(content) - len(search) + 1):
        shift = _indent_shift([l.rstrip() for l in content[i:i + len(search)]],
                              [l.rstrip() for l in search])
        if shift is not None:
            shifted.append((i, shift))
    if len(shifted) == 1:
        start, (added, removed) = shifted[0]
        return start, _reindent(block.replace, added, removed)
    if shifted:
        raise _ambiguous(block, [i for i, _ in shifted])
    raise EditError(_not_found_message(content, block))


def _ambiguous(block: SearchReplaceBlock, starts: list[int]) -> EditError:
    where = ", ".join(str(s + 1) for s in starts[:5])
    return EditError(
        f"Block {block.number}: the SEARCH text matches {len(starts)} places in {block.file} "
        f"(starting at lines {where}). Include more surrounding lines in SEARCH so that it "
        "matches exactly one place.")


def _not_found_message(content: list[str], block: SearchReplaceBlock) -> str:
    quoted = "\n".join(block.search[:QUOTED_LINES])
    if len(block.search) > QUOTED_LINES:
        quoted += f"\n... ({len(block.search) - QUOTED_LINES} more lines)"
    message = (f"Block {block.number}: the SEARCH text is not in {block.file}. It begins:\n"
               f"{quoted}\n")
    start, length = _nearest_window(content, block.search)
    if length:
        nearest = "\n".join(content[start:start + length])
        span = f"line {start + 1}" if length == 1 else f"lines {start + 1}-{start + length}"
        where = f"{block.file} {span}"
        message += f"\nDid you mean these lines ({where})?\n{nearest}\n"
    return message + ("\nSEARCH must copy the current lines exactly, including comments "
                      "and indentation.")


def _nearest_window(content: list[str], search: list[str]) -> tuple[int, int]:
    """Start and length of the run of file lines most similar to the search text.

    Windows are compared on the first PROBE_LINES lines of the search only, which keeps
    the cost linear in the file's length even for long blocks.
    """
    length = min(len(search), len(content), SUGGESTED_LINES)
    if not length:
        return 0, 0
    probe = min(length, PROBE_LINES)
    matcher = difflib.SequenceMatcher(autojunk=False)
    matcher.set_seq2("\n".join(line.strip() for line in search[:probe]))  # indexed once
    scored = []
    for start in range(len(content) - probe + 1):
        matcher.set_seq1("\n".join(line.strip() for line in content[start:start + probe]))
        scored.append((matcher.quick_ratio(), -start))
    # quick_ratio bounds ratio from above: only the most promising get the full score
    best_start, best_score = 0, -1.0
    for _, negative_start in sorted(scored, reverse=True)[:CANDIDATE_WINDOWS]:
        start = -negative_start
        matcher.set_seq1("\n".join(line.strip() for line in content[start:start + probe]))
        score = matcher.ratio()
        if score > best_score or (score == best_score and start < best_start):
            best_start, best_score = start, score
    return best_start, min(length, len(content) - best_start)


class SearchReplace(EditFormat):
    name = "search-replace"
    instructions = """\
Start the answer with one line
DESCRIPTION: <one line: what you change and why>
Then give one or more edit blocks. Each block is the file name alone on a line, followed by
<<<<<<< SEARCH
the lines to change, copied exactly from the current file (enough lines to be unique)
=======
the lines that replace them
>>>>>>> REPLACE
Blocks are applied in order. Keep each SEARCH short but unique; to change several places,
use several blocks. Only the editable files may be changed.

Example:
DESCRIPTION: raise the matrix learning rate from 0.04 to 0.05
train.py
<<<<<<< SEARCH
MATRIX_LR = 0.04  # learning rate of matrix parameters
=======
MATRIX_LR = 0.05  # learning rate of matrix parameters
>>>>>>> REPLACE"""

    def _edit(self, reply, files, editable):
        blocks = parse_search_replace(reply)
        if not blocks:
            raise EditError("The reply has no edit blocks. " + self._expected())
        current = dict(files)
        for block in blocks:
            if not block.file and len(editable) == 1:
                block.file = editable[0]  # only one file could be meant
            if not block.file:
                raise EditError(f"Block {block.number} does not say which file it edits. "
                                "Put the file name alone on the line before <<<<<<< SEARCH.")
            _check_editable(block.file, editable, f"Block {block.number}")
            if block.file not in current:
                raise EditError(f"Block {block.number}: {block.file} does not exist; only "
                                "existing files can be edited.")
            current[block.file] = _apply_block(current[block.file], block)
        return current


def _apply_block(text: str, block: SearchReplaceBlock) -> str:
    if not any(line.strip() for line in block.search):
        if text.strip():
            raise EditError(f"Block {block.number}: the SEARCH section is empty. Copy the "
                            f"exact lines of {block.file} that the block replaces.")
        return "\n".join(block.replace) + "\n"
    content = text.splitlines()
    start, replacement = _locate(content, block)
    new = content[:start] + replacement + content[start + len(block.search):]
    return "\n".join(new) + ("\n" if text.endswith("\n") or not text else "")


# ---------------------------------------------------------------------------------
# whole-file


class WholeFile(EditFormat):
    name = "whole-file"
    instructions = """\
Start the answer with one line
DESCRIPTION: <one line: what you change and why>
Then, for each file you change, give the file name alone on a line followed by a fenced
code block with the COMPLETE new contents of that file (not only the changed part).
Only the editable files may be changed.

Example:
DESCRIPTION: raise the matrix learning rate from 0.04 to 0.05
train.py
```python
<every line of the new train.py>
```"""

    def _edit(self, reply, files, editable):
        lines = reply.splitlines()
        changed: dict[str, str] = {}
        index = 0
        while index < len(lines):
            if not _is_fence(lines[index]):
                index += 1
                continue
            name = (_name_before(lines, index, skip_fences=False)
                    or _name_in_fence(lines[index], editable))
            end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == "```"), None)
            if end is None:
                raise EditError(f"The code block for {name or 'a file'} is not closed with ```. "
                                "Send the complete file inside one fenced block.")
            if name:
                _check_editable(name, editable, "A code block")
                changed[name] = "\n".join(lines[index + 1:end]) + "\n"
            index = end + 1
        if not changed:
            raise EditError("The reply has no file blocks. " + self._expected())
        return changed


def _name_in_fence(line: str, editable: list[str]) -> str:
    """```python train.py: a file named in the fence's info string."""
    words = line.strip().lstrip("`").split()
    return next((_clean_file_name(w) for w in words if _clean_file_name(w) in editable), "")


# ---------------------------------------------------------------------------------
# registry

EDIT_FORMATS: dict[str, type[EditFormat]] = {
    SearchReplace.name: SearchReplace,
    WholeFile.name: WholeFile,
}
DEFAULT_FORMAT = SearchReplace.name


def get_format(name: str = DEFAULT_FORMAT, **options) -> EditFormat:
    """An instance of the format registered as `name`; options go to its constructor."""
    if name not in EDIT_FORMATS:
        raise ValueError(f"unknown edit format {name!r}; available: {', '.join(EDIT_FORMATS)}")
    return EDIT_FORMATS[name](**options)


def repair_prompt(result: EditResult) -> str:
    """The follow-up message asking the model to fix an answer that could not be applied."""
    if result.error is None:
        raise ValueError("repair_prompt needs a result with an error")
    return (f"Your answer could not be applied:\n\n{result.error}\n\n"
            "No file was changed. Answer again in full, in the same format (the DESCRIPTION "
            "line, then the edits), against the files exactly as they were shown to you.")
