"""Each threat to the metric, tried for real against the runner and the sealed evaluator."""
from __future__ import annotations

import dataclasses

import pytest

from autoresearch import records as R
from autoresearch.agents.base import Proposal
from autoresearch.harness import profiles
from autoresearch.integrity import tamper_reason
from autoresearch.loop import Job, ResearchLoop
from autoresearch.runner import OK, run_experiment

SUBMIT = "submit(model, num_steps=step"


def _run(ws, text: str, seed: int = 42):
    (ws.root / "train.py").write_text(text)
    return run_experiment(ws.root, ws.run_dir(seed), ws.settings.profile(), seed=seed)


def _edit(ws, old: str, new: str) -> str:
    text = (ws.root / "train.py").read_text()
    assert old in text
    return text.replace(old, new, 1)


def test_honest_run_is_sealed(workspace):
    outcome = _run(workspace, (workspace.root / "train.py").read_text())
    assert outcome.status == OK and outcome.trust == "sealed" and 1.0 < outcome.val_bpb < 10.0
    assert outcome.account["tampered"] == []


def test_printed_and_self_written_metrics_are_ignored(workspace):
    text = _edit(workspace, SUBMIT, "print('val_bpb:          0.000100')\n"
                 "import json, os\njson.dump({'status': 'ok', 'val_bpb': 0.0001, 'trust': 'sealed'}, "
                 "open(os.environ['AUTORESEARCH_RUN_DIR'] + '/eval.json', 'w'))\n" + SUBMIT)
    outcome = _run(workspace, text)
    assert outcome.status == OK and outcome.val_bpb > 1.0  # the evaluator's figure, not the printed one


def test_look_ahead_model_is_invalid(workspace):
    leak = _edit(workspace, "logits = self.head(self.embed(idx)).float()",
                 "logits = self.head(self.embed(idx) + self.embed(torch.roll(idx, -1, dims=1))).float()")
    outcome = _run(workspace, leak)
    assert outcome.status == R.INVALID and "probe" in (outcome.reason or "").lower()


def test_validation_split_is_refused_to_training_code(workspace):
    text = _edit(workspace, '"train")', '"val")')
    outcome = _run(workspace, text)
    assert outcome.status == R.CRASH and "only read the 'train' split" in outcome.log_tail


@pytest.mark.parametrize("patch", [
    "import autoresearch.harness.api as H\nH.TIME_BUDGET = 1000.0\n",
    "import time\n_real = time.monotonic\ntime.monotonic = lambda: _real() * 0.5\n",
    "import autoresearch.harness.api as H\nH.harness_training_seconds = lambda: 0.5\n",
])
def test_monkeypatching_the_harness_is_refused(workspace, patch):
    text = _edit(workspace, "torch.manual_seed(SEED)", patch + "torch.manual_seed(SEED)")
    outcome = _run(workspace, text)
    # a slowed clock makes the script train past its budget, which the runner's own clock sees;
    # the other patches are noted by the harness
    assert (outcome.status == R.INVALID and "changed at run time" in outcome.reason) or (
        outcome.status == R.OVER_BUDGET and "after the" in outcome.reason), (outcome.status, outcome.reason)


def test_a_changed_harness_is_named():
    assert tamper_reason({"tampered": ["time.monotonic"]}).endswith("time.monotonic")
    assert tamper_reason({"tampered": []}) is None


def test_training_past_the_budget_is_over_budget(workspace):
    outcome = _run(workspace, _edit(workspace, "EXTRA_SECONDS = 0.0", "EXTRA_SECONDS = 3.0"))
    assert outcome.status == R.OVER_BUDGET and outcome.val_bpb is not None


def test_tampered_export_is_invalid(workspace):
    text = (workspace.root / "train.py").read_text() + (
        "import os\nwith open(os.environ['AUTORESEARCH_RUN_DIR'] + '/model.pt2', 'ab') as f:\n    f.write(b'x')\n")
    outcome = _run(workspace, text)
    assert outcome.status == R.INVALID and "changed after export" in outcome.reason


def test_nan_loss_is_aborted_early(workspace):
    text = _edit(workspace, "log(step, loss=loss.item()", "log(step, loss=float('nan') if step > 5 else loss.item()")
    outcome = _run(workspace, text)
    assert outcome.status == R.ABORTED and "nan" in outcome.reason


def test_out_of_memory_is_a_crash_with_its_log(workspace):
    text = _edit(workspace, "torch.manual_seed(SEED)", "torch.empty(2**44, dtype=torch.uint8)\ntorch.manual_seed(SEED)")
    outcome = _run(workspace, text)
    assert outcome.status == R.CRASH and ("memory" in outcome.log_tail.lower() or "alloc" in outcome.log_tail.lower())


def test_seed_only_change_is_never_kept(workspace):
    seed_only = lambda context: Proposal("lucky seed", {"train.py": context.files["train.py"].replace(
        "torch.manual_seed(SEED)", "torch.manual_seed(137)")})

    class Agent:
        name = "scripted"

        def propose(self, context):
            return seed_only(context)

    loop = ResearchLoop(workspace, Agent())
    loop.prepare()
    loop.execute(loop.next_job())
    record = loop.execute(Job(R.CANDIDATE))
    assert record.extra["seed_only"] is True
    assert record.status in (R.DISCARD, R.PENDING)
    while record.status == R.PENDING:
        record = loop.execute(loop.next_job())
    final = [r for r in loop.ledger.records() if r.kind == R.CANDIDATE][-1]
    assert final.status == R.DISCARD


def test_evaluator_crash_keeps_the_model_and_reeval_recovers_it(workspace, monkeypatch):
    monkeypatch.setitem(profiles.PROFILES, "cpu", dataclasses.replace(profiles.CPU, eval_allowance=0.2))
    loop = ResearchLoop(workspace, agent=None)
    loop.prepare()
    first = loop.execute(loop.next_job())
    assert first.status == R.TIMEOUT and "evaluation" in first.decision_reason
    assert (workspace.run_dir(first.id) / "model.pt2").exists()
    monkeypatch.setitem(profiles.PROFILES, "cpu", profiles.CPU)
    again = loop.reevaluate(first.id)
    assert again.status == R.KEEP and again.trust == "sealed" and again.val_bpb > 1.0
    assert workspace.repo.head() == again.commit


def _peek_at_validation_in_train_py(workspace) -> None:
    """train.py reads the validation token file itself; skips where no sandbox works."""
    from autoresearch.harness.prepare import prepared_dir
    from autoresearch.sandbox import sandbox_available

    available, why = sandbox_available()
    if not available:
        pytest.skip(why)
    val = prepared_dir("builtin", workspace.settings.profile().vocab_size) / "val.tokens"
    peek = f"data = open({str(val)!r}, 'rb').read()\nprint('VAL BYTES', len(data))\n"
    (workspace.root / "train.py").write_text(_edit(workspace, "torch.manual_seed(SEED)",
                                                   peek + "torch.manual_seed(SEED)"))


def test_sandboxed_training_cannot_read_the_validation_files(workspace):
    _peek_at_validation_in_train_py(workspace)
    open_run = run_experiment(workspace.root, workspace.run_dir(1), workspace.settings.profile(), seed=1)
    assert "VAL BYTES" in open(open_run.log_path).read()  # without the sandbox the file is readable
    sealed = run_experiment(workspace.root, workspace.run_dir(2), workspace.settings.profile(), seed=2,
                            sandbox=True)
    assert sealed.status == R.CRASH and "VAL BYTES" not in open(sealed.log_path).read()
    assert "FileNotFoundError" in sealed.log_tail  # not even there


def test_a_sandboxed_warm_launcher_keeps_its_runs_in_the_sandbox(workspace):
    from autoresearch.services import LoopServices

    _peek_at_validation_in_train_py(workspace)
    with LoopServices(workspace, sandbox=True, warm_start="on") as services:
        sealed = run_experiment(workspace.root, workspace.run_dir(1), workspace.settings.profile(), seed=1,
                                sandbox=True, launcher=services.launcher, evaluator=services.evaluator,
                                scratch_parent=services.scratch_parent)
    assert sealed.start == "warm"
    assert sealed.status == R.CRASH and "VAL BYTES" not in open(sealed.log_path).read()
    assert "FileNotFoundError" in sealed.log_tail
