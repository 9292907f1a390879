import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import pytest

from autoresearch.agents.base import AgentContext, Proposal, ProposalError
from autoresearch.agents.command import (DESCRIPTION_FILE, PRESETS, CommandAgent, default_prompt,
                                         make_command_agent)
from autoresearch.gitrepo import GitRepo
from autoresearch.records import DISCARD, ExperimentRecord

FAKE = Path(__file__).parent / "fixtures" / "fake_agent_cli.py"
TRAIN = "LEARNING_RATE = 0.01\n"
PROGRAM = "# program\nLower val_bpb.\n"


@pytest.fixture
def workspace(tmp_path) -> Path:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "train.py").write_text(TRAIN)
    (root / "program.md").write_text(PROGRAM)
    (root / ".gitignore").write_text(".autoresearch/\nresults.tsv\n")
    repo = GitRepo.init(root)
    repo.commit_paths(["train.py", "program.md", ".gitignore"], "baseline")
    (root / "results.tsv").write_text("id\tstatus\n")  # ignored: never reported as a change
    return root


def fake(workspace: Path, mode: str, **options) -> CommandAgent:
    return CommandAgent(workspace, [sys.executable, str(FAKE), "--mode", mode, "{prompt}"], **options)


def context(**fields) -> AgentContext:
    return AgentContext(program=PROGRAM, files={"train.py": TRAIN}, **fields)


def assert_restored(workspace: Path, head: str) -> None:
    repo = GitRepo(workspace)
    assert repo.changed_paths() == []
    assert repo.head() == head
    assert (workspace / "train.py").read_text() == TRAIN
    assert not (workspace / DESCRIPTION_FILE).exists()


def test_an_edit_becomes_the_proposal_and_the_workspace_is_restored(workspace):
    head = GitRepo(workspace).head()
    result = fake(workspace, "edit").propose(context())
    assert isinstance(result, Proposal)
    assert result.files == {"train.py": TRAIN + "LEARNING_RATE = 0.02  # tuned\n"}
    assert result.description == "LEARNING_RATE 0.01 -> 0.02"
    assert result.extra["exit_code"] == 0 and result.extra["seconds"] > 0
    assert "--mode edit {prompt}" in result.extra["command"]
    assert_restored(workspace, head)


def test_description_falls_back_to_stdout_then_to_the_command_name(workspace):
    assert fake(workspace, "stdout-description").propose(context()).description == "halve the warmup"
    assert fake(workspace, "plain").propose(context()).description == f"edit by {Path(sys.executable).name}"


def test_a_stale_description_file_is_not_reused(workspace):
    (workspace / ".autoresearch").mkdir()
    (workspace / DESCRIPTION_FILE).write_text("the previous proposal\n")
    assert fake(workspace, "plain").propose(context()).description.startswith("edit by ")


def test_an_edit_to_program_md_is_refused_and_undone(workspace):
    head = GitRepo(workspace).head()
    result = fake(workspace, "program").propose(context())
    assert isinstance(result, ProposalError) and not result.fatal
    assert "outside the editable ones: program.md" in result.reason
    assert (workspace / "program.md").read_text() == PROGRAM
    assert_restored(workspace, head)


def test_a_new_file_is_refused_and_removed(workspace):
    head = GitRepo(workspace).head()
    result = fake(workspace, "new-file").propose(context())
    assert isinstance(result, ProposalError)
    assert "notes/deep/idea.txt" in result.reason
    assert not (workspace / "notes").exists()
    assert_restored(workspace, head)


def test_a_deleted_file_is_refused_and_brought_back(workspace):
    result = fake(workspace, "delete").propose(context())
    assert isinstance(result, ProposalError) and "program.md" in result.reason
    assert (workspace / "program.md").read_text() == PROGRAM


def test_a_commit_by_the_agent_is_undone_but_its_edit_proposed(workspace):
    head = GitRepo(workspace).head()
    result = fake(workspace, "commit").propose(context())
    assert isinstance(result, Proposal) and "# tuned" in result.files["train.py"]
    assert_restored(workspace, head)


def test_scratch_files_are_removed_without_refusing(workspace):
    assert isinstance(fake(workspace, "scratch").propose(context()), ProposalError)
    result = fake(workspace, "scratch", scratch=(".aider*",)).propose(context())
    assert isinstance(result, Proposal)
    assert not (workspace / ".aider.chat.history.md").exists()


def test_no_change_is_an_error(workspace):
    result = fake(workspace, "nothing").propose(context())
    assert isinstance(result, ProposalError) and result.reason == "the agent changed nothing"


def test_a_failed_command_reports_its_output_tail_and_is_undone(workspace):
    head = GitRepo(workspace).head()
    result = fake(workspace, "fail").propose(context())
    assert isinstance(result, ProposalError) and not result.fatal
    assert "exited with code 1" in result.reason
    assert "fatal: out of credits" in result.reason and "log line 49" in result.reason
    assert "log line 0\n" not in result.reason  # only the tail
    assert result.extra["exit_code"] == 1
    assert_restored(workspace, head)


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # killed, waiting for its new parent to reap it


def test_a_timeout_kills_the_whole_process_group(workspace):
    head = GitRepo(workspace).head()
    started = time.monotonic()
    result = fake(workspace, "sleep", timeout=1.5).propose(context())
    assert time.monotonic() - started < 15
    assert isinstance(result, ProposalError) and "timed out after 1.5s" in result.reason
    assert "working slowly" in result.reason
    assert result.extra["exit_code"] is None
    child = int((workspace / ".autoresearch" / "child.pid").read_text())
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)
    assert_restored(workspace, head)


def test_the_prompt_arrives_as_one_argument(workspace):
    prompt = 'it\'s "quoted"; $HOME `ls` && rm -rf / \n second line {files}'
    agent = fake(workspace, "argv", prompt_builder=lambda ctx: prompt)
    argv = eval(agent.propose(context()).files["train.py"].split("ARGV = ", 1)[1])
    assert argv == ["--mode", "argv", prompt]


def test_a_template_string_is_split_like_a_shell_without_one(workspace):
    template = f"{shlex.join([sys.executable, str(FAKE)])} --mode 'argv' {{prompt}}"
    agent = make_command_agent(workspace, template, prompt_builder=lambda ctx: "a b  c")
    argv = eval(agent.propose(context()).files["train.py"].split("ARGV = ", 1)[1])
    assert argv == ["--mode", "argv", "a b  c"]


def test_the_default_prompt_says_what_to_do_and_carries_the_history():
    history = [ExperimentRecord(id=3, status=DISCARD, val_bpb=1.2345, description="DEPTH 4 -> 6")]
    prompt = default_prompt(context(history=history, best_val_bpb=1.2), ["train.py"])
    assert "program.md" in prompt and "Edit only train.py" in prompt
    assert "Do not run training" in prompt and DESCRIPTION_FILE in prompt
    assert "#3 discard 1.234500 DEPTH 4 -> 6" in prompt


def test_the_default_prompt_is_what_the_command_gets(workspace):
    argv = eval(fake(workspace, "argv").propose(context()).files["train.py"].split("ARGV = ", 1)[1])
    assert argv[-1] == default_prompt(context(), ["train.py"])


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_render_the_prompt_as_one_argument(workspace, name):
    prompt = "improve 'it' now; please"
    argv = make_command_agent(workspace, name).command(prompt)
    assert argv[0] == name
    assert argv.count(prompt) == 1
    assert not any("{" in token for token in argv)


def test_the_aider_preset_names_the_editable_files(workspace):
    argv = make_command_agent(workspace, "aider", editable=("train.py", "model.py")).command("p")
    assert argv[-2:] == ["train.py", "model.py"] and "--no-auto-commits" in argv


def test_an_unknown_preset_is_a_value_error(workspace):
    with pytest.raises(ValueError, match="unknown agent command preset 'claud'.*claude"):
        make_command_agent(workspace, "claud")


def test_a_template_without_prompt_is_a_value_error(workspace):
    with pytest.raises(ValueError, match="no \\{prompt\\} placeholder"):
        make_command_agent(workspace, "mytool --ask")
    with pytest.raises(ValueError, match="no \\{prompt\\} placeholder"):
        CommandAgent(workspace, ["mytool", "--ask"])


def test_a_missing_executable_is_fatal_and_says_how_to_install(workspace, monkeypatch):
    bin_dir = workspace.parent / "bin"  # git and nothing else
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(bin_dir))
    result = make_command_agent(workspace, "claude").propose(context())
    assert isinstance(result, ProposalError) and result.fatal
    assert "'claude' was not found" in result.reason and "npm install -g @anthropic-ai/claude-code" in result.reason
    custom = CommandAgent(workspace, ["no-such-agent-cli", "{prompt}"]).propose(context())
    assert custom.fatal and "'no-such-agent-cli' was not found" in custom.reason
    assert GitRepo(workspace).changed_paths() == []


def test_the_agent_name_is_command(workspace):
    assert make_command_agent(workspace, "codex").name == "command"
    assert os.fspath(make_command_agent(workspace, "codex").root) == os.fspath(workspace)
