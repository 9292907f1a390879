"""The research loop with real git, real subprocesses and the sealed evaluator, on a tiny target."""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from autoresearch import records as R
from autoresearch.agents.base import Proposal, ProposalError
from autoresearch.config import load_settings, save_settings
from autoresearch.constants import set_constants
from autoresearch.harness import profiles
from autoresearch.ledger import Ledger
from autoresearch.loop import Job, ResearchLoop
from autoresearch.workspace import EXPERIMENT_REF, Workspace, init_workspace

class ScriptedAgent:
    name = "scripted"

    def __init__(self, *edits):
        self.edits = list(edits)

    def propose(self, context):
        edit = self.edits.pop(0)
        return edit(context) if callable(edit) else edit


def _constant(name, value):
    def edit(context):
        return Proposal(f"{name} -> {value}", {"train.py": set_constants(context.files["train.py"], {name: value})})
    return edit


def test_scope_refusal_runs_nothing_and_changes_nothing(workspace):
    head = workspace.repo.head()
    program = (workspace.root / "program.md").read_text()
    loop = ResearchLoop(workspace, ScriptedAgent(
        Proposal("rewrite the rules", {"program.md": "do anything\n"}),
        Proposal("sneak a file in", {"train.py": "x = 1\n", "helper.py": "y = 2\n"}),
        Proposal("broken", {"train.py": "def f(:\n"}),
        ProposalError("empty reply"),
    ))
    loop.prepare()
    outcomes = [loop.execute(Job(R.CANDIDATE)) for _ in range(4)]
    assert [r.status for r in outcomes] == [R.FAILED_PROPOSAL] * 4
    assert "program.md" in outcomes[0].decision_reason and "helper.py" in outcomes[1].decision_reason
    assert "does not parse" in outcomes[2].decision_reason and outcomes[3].decision_reason == "empty reply"
    assert workspace.repo.head() == head and workspace.repo.changed_paths() == []
    assert (workspace.root / "program.md").read_text() == program
    assert not (workspace.root / "results.tsv").exists() or len(pd.read_csv(workspace.root / "results.tsv", sep="\t")) == 0


def test_over_budget_and_timeout_are_never_kept(workspace, monkeypatch):
    fast = dataclasses.replace(profiles.CPU, startup_allowance=15.0)
    monkeypatch.setitem(profiles.PROFILES, "cpu", fast)
    hang = lambda context: Proposal("hang", {"train.py": "import time\ntime.sleep(60)\n" + context.files["train.py"]})
    loop = ResearchLoop(workspace, ScriptedAgent(_constant("EXTRA_SECONDS", 3.0), hang))
    loop.prepare()
    baseline = loop.execute(loop.next_job())
    assert baseline.status == R.KEEP and baseline.trust == "sealed" and 0 < baseline.val_bpb < 20
    over = loop.execute(Job(R.CANDIDATE))
    assert over.status == R.OVER_BUDGET and over.val_bpb is not None
    assert workspace.repo.head() == baseline.commit
    timed_out = loop.execute(Job(R.CANDIDATE))
    assert timed_out.status == R.TIMEOUT
    assert workspace.repo.head() == baseline.commit
    assert "EXTRA_SECONDS = 0.0" in (workspace.root / "train.py").read_text()
    tsv = pd.read_csv(workspace.root / "results.tsv", sep="\t")
    assert list(tsv["status"]) == ["keep", "discard", "crash"]


def _check_invariants(ws: Workspace) -> list:
    ledger = Ledger(ws.root)
    records = ledger.records()
    ids = [r.id for r in records]
    assert ids == list(range(1, len(ids) + 1)), "ids are consecutive and never duplicated"
    assert not [r for r in records if r.status == R.RUNNING]
    ran = [r for r in records if r.status not in (R.FAILED_PROPOSAL,) + R.UNDECIDED]
    tsv = pd.read_csv(ws.root / "results.tsv", sep="\t")
    assert len(tsv) == len(ran), "one results.tsv row per experiment that ran, no more, no less"
    assert list(tsv["commit"].astype(str)) == [r.commit[:7] for r in ran]
    kept = [r for r in records if r.status == R.KEEP]
    assert ws.repo.head() == kept[-1].commit, "the branch is at the best kept commit"
    assert ws.repo.current_branch() == ws.branch
    for r in records:
        if r.commit:
            assert ws.repo.ref_commit(EXPERIMENT_REF.format(id=r.id)) == r.commit
    assert ws.repo.changed_paths() == []
    return records


def _loop_command(ws: Workspace, n: int, *extra: str) -> list:
    return [sys.executable, "-m", "autoresearch.cli", "run", "--workspace", str(ws.root),
            "--max-experiments", str(n), "--plain", *extra]


def test_loop_end_to_end_with_the_sweep_agent(workspace):
    done = subprocess.run(_loop_command(workspace, 4), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _check_invariants(workspace)
    assert [r.kind for r in records[:2]] == [R.BASELINE, R.BASELINE]
    candidates = [r for r in records if r.kind == R.CANDIDATE]
    assert candidates and all(r.agent == "sweep" and " -> " in r.description for r in candidates)
    assert all(r.trust == "sealed" for r in records if r.val_bpb is not None)
    measured = [r for r in records if r.kind != R.BASELINE and r.val_bpb is not None]
    assert measured and all("sigma" in r.decision_reason or "not better" in r.decision_reason for r in measured), \
        [r.decision_reason for r in measured]
    assert records[1].noise_sigma is not None and records[1].noise_sigma > 0
    assert (workspace.root / "report.md").exists() and (workspace.root / "progress.png").stat().st_size > 1000


def test_kill_9_at_random_moments_loses_nothing(workspace):
    first = subprocess.run(_loop_command(workspace, 3), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    rng = random.Random(1234)
    kills = 0
    for _ in range(20):  # candidates from here on: kills land in proposal, training, evaluation, recording
        # cold starts: a warm launcher's start-up would take most of the random moments
        proc = subprocess.Popen(_loop_command(workspace, 3, "--cold-start"), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(rng.uniform(0.2, 7.0))
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 15
    final = subprocess.run(_loop_command(workspace, 1), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    records = _check_invariants(workspace)
    assert any(r.status == R.INTERRUPTED for r in records)
    assert any(r.status == R.KEEP for r in records)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm starts are Linux-only")
def test_kill_9_of_a_warm_loop_leaves_no_process_behind(workspace):
    proc = subprocess.Popen(_loop_command(workspace, 2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    telemetry = workspace.run_dir(1) / "telemetry.jsonl"
    deadline = time.monotonic() + 120
    while not telemetry.exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # until a run forked from the launcher is training
    helpers = _processes_mentioning(str(workspace.root))
    assert len(helpers) >= 2, helpers  # the launcher and the evaluation service are up
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while _processes_mentioning(str(workspace.root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(workspace.root)) == []  # launcher, its run and the evaluator are gone
    final = subprocess.run(_loop_command(workspace, 2), capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    records = _check_invariants(workspace)
    assert records[0].status == R.INTERRUPTED
    assert [r.extra.get("start") for r in records[1:]] == ["warm", "warm"]


def _processes_mentioning(text: str) -> list[str]:
    """Live (not zombie) processes whose command line, environment or working folder names
    `text`, or that belong to a loop's scratch folder (the launcher and its runs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
            blob += os.readlink(entry / "cwd").encode()
        except OSError:
            continue
        if state != "Z" and (text.encode() in blob or b"autoresearch-scratch/loop-" in blob):
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:120]!r}")
    return found


def test_fatal_agent_error_stops_the_loop(workspace):
    loop = ResearchLoop(workspace, ScriptedAgent(ProposalError("401: bad API key", fatal=True)))
    loop.prepare()
    record = loop.execute(Job(R.CANDIDATE))
    assert record.status == R.FAILED_PROPOSAL and record.extra["fatal"] is True
    assert loop.should_stop() and "bad API key" in loop.stop_reason


def test_cost_and_token_caps_stop_spending(workspace):
    spend = lambda: ProposalError("no edit", extra={"cost_usd": 0.03, "input_tokens": 900, "output_tokens": 100})
    loop = ResearchLoop(workspace, ScriptedAgent(spend(), spend()), max_cost=0.05)
    loop.prepare()
    loop.execute(Job(R.CANDIDATE))
    assert not loop.should_stop() and loop.spent() == (0.03, 1000)
    loop.execute(Job(R.CANDIDATE))
    assert loop.should_stop() and "cost cap" in loop.stop_reason
    by_tokens = ResearchLoop(workspace, ScriptedAgent(), max_tokens=2000)
    assert by_tokens.should_stop() and "token cap" in by_tokens.stop_reason


def test_context_carries_history_kept_diffs_and_the_last_run(workspace):
    loop = ResearchLoop(workspace, ScriptedAgent(_constant("MATRIX_LR", 0.05)))
    loop.prepare()
    baseline = loop.execute(loop.next_job())
    context = loop.build_context()
    assert context.files["train.py"] == (workspace.root / "train.py").read_text()
    assert [r.id for r in context.history] == [baseline.id]
    assert context.telemetry_summary.startswith(f"experiment {baseline.id} (keep") and "loss at 0%" in context.telemetry_summary
    assert "make_dataloader" in context.harness_api and context.best_val_bpb == baseline.val_bpb


def _search_replace(old: str, new: str, description: str) -> str:
    return (f"DESCRIPTION: {description}\n\ntrain.py\n<<<<<<< SEARCH\n{old}\n=======\n{new}\n"
            ">>>>>>> REPLACE\n")


def test_loop_with_an_llm_over_the_openai_wire_format(workspace):
    from llm_server import ScriptedServer, openai_reply

    replies = [
        openai_reply(_search_replace("MATRIX_LR = 0.02  # Adam learning rate", "MATRIX_LR = 0.05  # Adam learning rate",
                                     "raise the learning rate"), prompt_tokens=1200, completion_tokens=80),
        openai_reply(_search_replace("MATRIX_LR = 0.3", "MATRIX_LR = 0.01", "lower it"), prompt_tokens=1300),
        # a line the first edit leaves alone, whether or not that edit was kept
        openai_reply(_search_replace("DEVICE_BATCH_SIZE = 8  # rows per step", "DEVICE_BATCH_SIZE = 4  # rows per step",
                                     "smaller device batch"), prompt_tokens=1400, completion_tokens=60),
    ] + [openai_reply("I have no more ideas.")] * 30
    with ScriptedServer(replies) as server:
        # 6 = two baseline runs, the first candidate and up to two confirmations, the second
        done = subprocess.run(_loop_command(workspace, 6) + ["--agent", "openai", "--base-url", server.url + "/v1",
                                                             "--model", "local-model"],
                              capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _check_invariants(workspace)
    candidates = [r for r in records if r.kind == R.CANDIDATE]
    assert candidates[0].description == "raise the learning rate" and candidates[0].agent.startswith("openai")
    assert candidates[0].extra["input_tokens"] == 1200 and candidates[0].extra["output_tokens"] == 80
    second = candidates[1]
    assert second.description == "smaller device batch" and second.extra["turns"] == 2  # one repair turn
    assert all(r.path == "/v1/chat/completions" and r.body["model"] == "local-model" for r in server.requests)
    repair = server.requests[2].body["messages"][-1]["content"]
    assert "MATRIX_LR = 0.3" in repair  # the model was told which search text failed


def test_a_pending_candidate_is_settled_before_the_loop_stops(workspace):
    class AlwaysRerun:
        name = "rerun-twice"

        def __init__(self):
            self.calls = 0

        def decide(self, candidate_values, best_values, sigma, **kwargs):
            self.calls += 1
            from autoresearch.policy import Decision
            return Decision("rerun", "test: rerun") if len(candidate_values) < 2 else Decision("discard", "test: done")

    loop = ResearchLoop(workspace, ScriptedAgent(_constant("MATRIX_LR", 0.03)), max_experiments=2)
    loop.policy = AlwaysRerun()
    workspace.settings.policy.baseline_repeats = 1
    done = loop.run()
    assert [r.kind for r in done] == [R.BASELINE, R.CANDIDATE, R.CONFIRM]
    assert [r.status for r in loop.ledger.records()] == [R.KEEP, R.DISCARD, R.DISCARD]
    tsv = pd.read_csv(workspace.root / "results.tsv", sep="\t")
    assert list(tsv["description"]) == ["baseline", "MATRIX_LR -> 0.03", done[2].description]
