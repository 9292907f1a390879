"""An agent that is an external coding CLI (Claude Code, Codex, aider, Gemini...).

The CLI runs as a real subprocess in the workspace with a prompt and edits files itself.
Whatever it changed in the editable files becomes the proposal; the workspace is then put
back as it was, because the loop writes and commits the proposal itself. A change to any
other file is undone and refuses the whole proposal: the prompt asks the CLI to stay in
scope, but the check here is what enforces it.
"""
from __future__ import annotations

import fnmatch
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from autoresearch.agents.base import AgentContext, Proposal, ProposalError
from autoresearch.gitrepo import GitRepo

DESCRIPTION_FILE = ".autoresearch/description.txt"  # ignored by the workspace's .gitignore
DESCRIPTION_PREFIX = "DESCRIPTION:"  # the fallback: a line of the CLI's stdout
TAIL_LINES = 30  # output lines kept in an error
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a timed-out CLI
HISTORY_LINES = 15  # recent experiments summarised in the default prompt


@dataclass(frozen=True)
class Preset:
    argv: tuple  # tokens; "{prompt}" becomes one argument, "{files}" the editable files
    install: str  # how to get the executable, for the "not found" message
    scratch: tuple = ()  # untracked paths the CLI writes for itself: removed, not refused


PRESETS = {
    # -p: print mode, one prompt then exit; acceptEdits approves file edits only, so shell
    # commands (training runs) are refused without anyone to ask.
    "claude": Preset(("claude", "-p", "{prompt}", "--permission-mode", "acceptEdits", "--output-format", "text"),
                     "npm install -g @anthropic-ai/claude-code"),
    # exec: non-interactive; the sandbox lets it write inside the workspace only.
    "codex": Preset(("codex", "exec", "--sandbox", "workspace-write", "{prompt}"), "npm install -g @openai/codex"),
    # aider commits and edits .gitignore by default: both off; its history files are scratch.
    "aider": Preset(("aider", "--yes-always", "--no-auto-commits", "--no-gitignore", "--no-check-update",
                     "--message", "{prompt}", "{files}"),
                    "python -m pip install aider-install && aider-install", scratch=(".aider*",)),
    # -p: headless; auto_edit approves edits, shell commands still need an approval.
    "gemini": Preset(("gemini", "-p", "{prompt}", "--approval-mode", "auto_edit"), "npm install -g @google/gemini-cli"),
}


def parse_template(template: str | list[str]) -> tuple[list[str], Preset | None]:
    """A preset name, a command line with {prompt}, or an argv list -> (tokens, preset)."""
    if isinstance(template, str) and template in PRESETS:
        return list(PRESETS[template].argv), PRESETS[template]
    if isinstance(template, str):
        if not any(ch.isspace() for ch in template) and "{" not in template:
            raise ValueError(f"unknown agent command preset {template!r}; presets: {', '.join(PRESETS)}, "
                             "or give a command line with a {prompt} placeholder, e.g. 'mytool --ask {prompt}'")
        tokens = shlex.split(template)
    else:
        tokens = [str(token) for token in template]
    if not any("{prompt}" in token for token in tokens):
        raise ValueError(f"the agent command {show(tokens)!r} has no {{prompt}} placeholder: add one "
                         "where the prompt goes, e.g. 'mytool --message {prompt}'")
    return tokens, None


def show(tokens: list[str]) -> str:
    """The command line as a user would type it, placeholders unquoted."""
    return " ".join(t if t in ("{prompt}", "{files}") else shlex.quote(t) for t in tokens)


def render(tokens: list[str], prompt: str, files=()) -> list[str]:
    """Fills the placeholders; the prompt stays one argument whatever it contains (no shell)."""
    argv = []
    for token in tokens:
        if token == "{files}":
            argv.extend(files)
        else:
            argv.append(token.replace("{prompt}", prompt))
    return argv


def default_prompt(context: AgentContext, editable) -> str:
    files = ", ".join(editable)
    lines = [
        "You are one step of an automated research loop that improves a training script.",
        "Read program.md for the goal and the rules, then the editable files: " + files + ".",
        "Make ONE focused change that you expect to lower val_bpb (bits per byte, lower is better).",
        f"Edit only {files}; any change to another file makes the harness refuse the whole edit.",
        "Do not run training or the evaluator yourself: the harness trains every edit under a fixed "
        "time budget and measures it. Do not commit; the harness commits.",
        f"Finally write a one-line description of the change (e.g. 'MATRIX_LR 0.04 -> 0.05') to {DESCRIPTION_FILE}.",
    ]
    if context.best_val_bpb is not None:
        lines.append(f"\nBest val_bpb so far: {context.best_val_bpb:.6f}")
    if context.noise_sigma is not None:
        lines.append(f"Run-to-run noise (sigma): {context.noise_sigma:.6f}; smaller gains cannot be seen.")
    if context.history:
        lines.append("\nRecent experiments (id, status, val_bpb, description):")
        for r in context.history[-HISTORY_LINES:]:
            bpb = "-" if r.val_bpb is None else f"{r.val_bpb:.6f}"
            lines.append(f"  #{r.id} {r.status} {bpb} {r.description}")
    for title, text in (("Harness API", context.harness_api), ("Last run", context.telemetry_summary),
                        ("The last failed run's log ends with", context.last_log_tail)):
        if text:
            lines.append(f"\n{title}:\n{text.strip()[-3000:]}")
    return "\n".join(lines)


def _tail(text: str, n: int = TAIL_LINES) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


class CommandAgent:
    name = "command"

    def __init__(self, workspace_root: Path, template: str | list[str], *, timeout: float = 900,
                 prompt_builder=None, editable=("train.py",), scratch=None):
        self.root = Path(workspace_root)
        self.tokens, preset = parse_template(template)
        self.timeout = timeout
        self.prompt_builder = prompt_builder
        self.editable = list(editable)
        self.scratch = tuple(scratch if scratch is not None else (preset.scratch if preset else ()))
        self.install = preset.install if preset else ""
        self.program = Path(self.tokens[0]).name
        self.repo = GitRepo(self.root)

    def command(self, prompt: str) -> list[str]:
        return render(self.tokens, prompt, self.editable)

    # --- one proposal -------------------------------------------------------------------
    def propose(self, context: AgentContext) -> Proposal | ProposalError:
        extra = {"command": show(self.tokens), "exit_code": None, "seconds": 0.0}
        if not self._found():
            hint = f"install it (`{self.install}`)" if self.install else "install it"
            return ProposalError(f"the agent command {self.tokens[0]!r} was not found: {hint} or choose another "
                                 f"command (a preset: {', '.join(PRESETS)}, or a template with {{prompt}})",
                                 extra, fatal=True)
        prompt = self.prompt_builder(context) if self.prompt_builder else default_prompt(context, self.editable)
        description_file = self.root / DESCRIPTION_FILE
        description_file.parent.mkdir(parents=True, exist_ok=True)
        description_file.unlink(missing_ok=True)  # never reuse the previous proposal's line
        before = {name: self._read(name) for name in self.editable}
        head, branch = self.repo.head(), self.repo.git("symbolic-ref", "-q", "HEAD", check=False)
        started = time.monotonic()
        try:
            exit_code, output = self._run(self.command(prompt))
        except OSError as error:  # found, but not runnable (a bad interpreter line, permissions)
            return ProposalError(f"the agent command {self.tokens[0]!r} could not start: {error}", extra, fatal=True)
        extra["exit_code"], extra["seconds"] = exit_code, round(time.monotonic() - started, 3)
        self._undo_git_moves(head, branch)
        description = self._description(description_file, output)
        after = {name: self._read(name) for name in self.editable}
        outside = self._restore(before)
        if exit_code is None:
            return ProposalError(f"the agent command timed out after {self.timeout:g}s; its output ended with:\n"
                                 f"{_tail(output)}", extra)
        if exit_code != 0:
            return ProposalError(f"the agent command exited with code {exit_code}; its output ended with:\n"
                                 f"{_tail(output)}", extra)
        if outside:
            return ProposalError(f"the agent changed files outside the editable ones: {', '.join(outside)} "
                                 f"(only {', '.join(self.editable)} may change); all its changes were undone", extra)
        deleted = [name for name in self.editable if after[name] is None and before[name] is not None]
        if deleted:
            return ProposalError(f"the agent deleted {', '.join(deleted)}", extra)
        files = {name: after[name] for name in self.editable
                 if after[name] is not None and after[name] != context.files.get(name, before[name])}
        if not files:
            return ProposalError("the agent changed nothing", extra)
        return Proposal(description or f"edit by {self.program}", files, extra)

    def _found(self) -> bool:
        program = self.tokens[0]
        if os.sep in program:  # a path: relative to the workspace, where it runs
            path = self.root / program
            return path.is_file() and os.access(path, os.X_OK)
        return shutil.which(program) is not None

    def _run(self, argv: list[str]) -> tuple[int | None, str]:
        """Runs the CLI in its own process group; exit code None means it timed out."""
        with tempfile.TemporaryFile() as out:  # a file, not a pipe: no deadlock on big output
            proc = subprocess.Popen(argv, cwd=self.root, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = proc.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                code = None
                _kill_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=KILL_GRACE)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(proc.pid, signal.SIGKILL)  # also whatever it left running in the background
            proc.wait()
            out.seek(0)
            return code, out.read().decode("utf-8", errors="replace")

    # --- reading and restoring the workspace --------------------------------------------
    def _read(self, name: str) -> str | None:
        path = self.root / name
        return path.read_text() if path.is_file() else None

    def _description(self, path: Path, output: str) -> str:
        lines = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
        path.unlink(missing_ok=True)
        if lines and lines[0].strip():
            return lines[0].strip()
        for line in output.splitlines():
            if line.startswith(DESCRIPTION_PREFIX) and line[len(DESCRIPTION_PREFIX):].strip():
                return line[len(DESCRIPTION_PREFIX):].strip()
        return ""

    def _undo_git_moves(self, head: str, branch: str) -> None:
        """A CLI that committed, staged or switched branch: back to the old commit, edits kept as files."""
        if branch and self.repo.git("symbolic-ref", "-q", "HEAD", check=False) != branch:
            self.repo.git("symbolic-ref", "HEAD", branch)
        self.repo.git("reset", "-q", "--mixed", head)

    def _restore(self, before: dict) -> list[str]:
        """Puts every file back; returns the out-of-scope paths that had changed."""
        for name, text in before.items():
            path = self.root / name
            if text is None:
                path.unlink(missing_ok=True)
            elif self._read(name) != text:
                path.write_text(text)
        changed = [p for p in self.repo.changed_paths() if p not in self.editable]
        tracked = set(self.repo.git("ls-files", "-z").split("\0"))
        outside = []
        for path in changed:
            if path in tracked:
                self.repo.git("checkout", "-q", "HEAD", "--", path)
            else:
                self._remove_untracked(path)
            if path in tracked or not self._is_scratch(path):
                outside.append(path)
        return sorted(outside)

    def _is_scratch(self, path: str) -> bool:
        first = path.split("/", 1)[0]
        return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(first, p) for p in self.scratch)

    def _remove_untracked(self, path: str) -> None:
        target = self.root / path
        target.unlink(missing_ok=True)
        parent = target.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()  # leave no empty folders behind
            parent = parent.parent


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def make_command_agent(workspace_root: Path, preset_or_template: str | list[str], **options) -> CommandAgent:
    """`claude`, `codex`, `aider`, `gemini`, or a command line such as "mytool --ask {prompt}"."""
    return CommandAgent(workspace_root, preset_or_template, **options)
