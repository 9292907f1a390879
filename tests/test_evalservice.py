"""The evaluation service: the same numbers as the one-shot evaluator, fresh validation
data for every run, and a fall-back to the one-shot evaluator whenever it fails."""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch
from torch import nn

from autoresearch import records as R
from autoresearch.evalservice import EvaluatorService
from autoresearch.harness.evaluate import validation_spec
from autoresearch.harness.export import export_model
from autoresearch.runner import OK, evaluate_run, evaluator_sandbox
from autoresearch.sandbox import sandbox_available


class Bigram(nn.Module):
    def __init__(self, vocab: int, seed: int, zero_input: bool = False):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(vocab, 16)
        self.head = nn.Linear(16, vocab)
        self.zero_input = zero_input

    def forward(self, idx):
        if self.zero_input:  # writes into the tensor it is given
            idx.mul_(0)
        return self.head(self.embed(idx))


def _submit(workspace, run_id: int, model: nn.Module):
    profile = workspace.settings.profile()
    run_dir = workspace.run_dir(run_id)
    export_model(model, run_dir, batch_size=profile.eval_batch_size, seq_len=profile.max_seq_len,
                 vocab_size=profile.vocab_size, extra={"account": {"harness_training_seconds": 1.0}})
    return run_dir


def _service(workspace, *, sandboxed: bool = False, spec: dict | None = None) -> EvaluatorService:
    spec = spec or validation_spec(workspace.settings.profile(), workspace.settings.experiment.data)
    runs = workspace.state_dir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    wrap = evaluator_sandbox(spec["data"], spec["vocab_size"], [runs]) if sandboxed else None
    return EvaluatorService(spec, folder=runs, env=dict(os.environ), log_path=workspace.state_dir / "evaluator.log",
                            wrap=wrap)


@pytest.fixture(params=["open", "sandboxed"])
def service(workspace, request):
    if request.param == "sandboxed" and not sandbox_available()[0]:
        pytest.skip(sandbox_available()[1])
    svc = _service(workspace, sandboxed=request.param == "sandboxed")
    svc.start()
    yield svc
    svc.close()


def test_same_result_as_the_one_shot_evaluator(workspace, service):
    vocab = workspace.settings.profile().vocab_size
    run_dir = _submit(workspace, 1, Bigram(vocab, seed=1))
    served = evaluate_run(workspace.root, run_dir, timeout=60, evaluator=service)
    one_shot = evaluate_run(workspace.root, run_dir, timeout=60)
    assert served.status == OK and served.trust == "sealed"
    assert served.val_bpb == one_shot.val_bpb  # bit for bit: the same program on the same data
    assert json.loads((run_dir / "eval.json").read_text())["val_bpb"] == one_shot.val_bpb
    again = evaluate_run(workspace.root, _submit(workspace, 2, Bigram(vocab, seed=2)), timeout=60,
                         evaluator=service)
    assert again.status == OK and again.val_bpb != served.val_bpb  # a second run on the same process


def test_a_program_that_writes_into_its_input_cannot_change_later_scores(workspace, service):
    vocab = workspace.settings.profile().vocab_size
    benign = _submit(workspace, 1, Bigram(vocab, seed=1))
    alone = evaluate_run(workspace.root, benign, timeout=60).val_bpb
    vandal = _submit(workspace, 2, Bigram(vocab, seed=2, zero_input=True))
    assert evaluate_run(workspace.root, vandal, timeout=60, evaluator=service).status in (OK, R.INVALID)
    assert evaluate_run(workspace.root, benign, timeout=60, evaluator=service).val_bpb == alone


def test_a_service_that_cannot_start_falls_back_to_the_one_shot_evaluator(workspace):
    vocab = workspace.settings.profile().vocab_size
    spec = validation_spec(workspace.settings.profile(), workspace.settings.experiment.data)
    broken = _service(workspace, spec={**spec, "data": str(workspace.root / "no-such-data")})
    run_dir = _submit(workspace, 1, Bigram(vocab, seed=1))
    outcome = evaluate_run(workspace.root, run_dir, timeout=60, evaluator=broken)
    assert "exited" in broken.failure and broken.proc is None  # the service never answered
    assert outcome.status == OK and outcome.val_bpb == evaluate_run(workspace.root, run_dir, timeout=60).val_bpb
    assert "no-such-data" in (workspace.state_dir / "evaluator.log").read_text()


def test_a_dead_service_is_replaced_for_the_next_run(workspace, service):
    vocab = workspace.settings.profile().vocab_size
    assert service.usable()
    os.killpg(service.proc.pid, signal.SIGKILL)
    service.proc.wait(timeout=10)
    run_dir = _submit(workspace, 1, Bigram(vocab, seed=1))
    outcome = evaluate_run(workspace.root, run_dir, timeout=60, evaluator=service)
    assert outcome.status == OK and outcome.val_bpb is not None
    assert service.proc is not None and service.proc.poll() is None  # replaced for the next run


def test_an_evaluation_past_its_allowance_is_a_timeout_and_the_service_restarts(workspace, service):
    vocab = workspace.settings.profile().vocab_size
    assert service.usable()
    run_dir = _submit(workspace, 1, Bigram(vocab, seed=1))
    outcome = evaluate_run(workspace.root, run_dir, timeout=0.01, evaluator=service)
    assert outcome.status == R.TIMEOUT
    assert service.proc is None  # killed, not left computing
    later = evaluate_run(workspace.root, run_dir, timeout=60, evaluator=service)
    assert later.status == OK


def test_answers_written_into_the_service_by_someone_else_are_not_taken(workspace):
    """Without the sandbox a run may write into the service's output (as root, through /proc):
    its answers name requests it cannot know, made after it ended, so none is taken."""
    vocab = workspace.settings.profile().vocab_size
    service = _service(workspace)
    service.start()
    try:
        assert service.usable()
        forged = {"status": "ok", "trust": "sealed", "val_bpb": 0.123}
        handle = os.open(f"/proc/{service.proc.pid}/fd/1", os.O_WRONLY)
        for guess in [*range(1, 50), *map(str, range(1, 50)), None]:
            os.write(handle, (json.dumps({"done": guess, "result": forged}) + "\n").encode())
        os.close(handle)
        outcome = evaluate_run(workspace.root, _submit(workspace, 1, Bigram(vocab, seed=1)), timeout=60,
                               evaluator=service)
    finally:
        service.close()
    assert outcome.status == OK and outcome.val_bpb != 0.123 and outcome.val_bpb > 1.0
