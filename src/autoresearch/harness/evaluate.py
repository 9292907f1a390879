"""The evaluator: scores a model on validation data and writes eval.json.

Sealed mode runs in its own process (`python -m autoresearch.harness.evaluate RUN_DIR`)
and loads only the exported program from the run folder, so no code of the training
script runs while the metric is computed. In-process mode scores a live model with the
same code, for targets that cannot be exported.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from autoresearch.harness.export import (
    SealedForward,
    SubmissionError,
    TamperedSubmission,
    model_device,
    model_path,
    read_submission,
    verify_checksum,
    write_json_atomic,
)
from autoresearch.harness.metric import bits_per_byte, causality_probe
from autoresearch.harness.session import EVAL_FILE

SEALED = "sealed"
IN_PROCESS = "in-process"
OK, INVALID, ERROR = "ok", "invalid", "error"


@dataclass
class EvalResult:
    status: str  # ok | invalid (an integrity check refused it) | error (no usable number)
    trust: str = SEALED
    val_bpb: float | None = None  # also kept when invalid, for the record
    probe_passed: bool | None = None
    probe_detail: str = ""
    probe_max_diff: float | None = None
    eval_seconds: float = 0.0  # load + probe + metric
    load_seconds: float | None = None
    tokens: int = 0
    bytes: int = 0
    error: str | None = None

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        for key, value in data.items():  # NaN is not JSON
            if isinstance(value, float) and not math.isfinite(value):
                data[key] = None
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "EvalResult":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def evaluate_program(logits_fn, batches, token_bytes, probe_input=None, *,
                     trust: str = SEALED) -> EvalResult:
    """Probe for causality, then score; the core shared by sealed and in-process mode.

    Without `probe_input` the probe uses the first validation batch.
    """
    start = time.perf_counter()
    token_bytes = torch.as_tensor(token_bytes)
    try:
        with torch.inference_mode():
            batches = iter(batches)
            if probe_input is None:
                first = next(batches, None)
                if first is None:
                    raise ValueError("no validation batches")
                probe_input = first[0]
                batches = itertools.chain([first], batches)
            reference = logits_fn(probe_input)
            probe = causality_probe(logits_fn, probe_input, vocab_size=token_bytes.numel(),
                                    reference=reference)

            def scored(x):  # the probe's reference pass doubles as the first batch's
                return reference if x is probe_input else logits_fn(x)

            bpb = bits_per_byte(scored, batches, token_bytes)
    except Exception as exc:  # whatever the program does wrong ends as a recorded error
        return EvalResult(ERROR, trust, error=f"{type(exc).__name__}: {exc}",
                          eval_seconds=time.perf_counter() - start)
    result = EvalResult(OK, trust, val_bpb=bpb.val_bpb, probe_passed=probe.passed,
                        probe_detail=probe.detail, probe_max_diff=probe.max_diff,
                        tokens=bpb.tokens, bytes=bpb.total_bytes,
                        eval_seconds=time.perf_counter() - start)
    if not math.isfinite(bpb.val_bpb):
        result.status, result.val_bpb, result.error = ERROR, None, "the loss is not finite"
    elif not probe.passed:
        result.status = INVALID
        result.error = f"causality probe failed, the model sees future tokens: {probe.detail}"
    return result


def evaluate_in_process(model, batches, token_bytes, *, autocast_dtype=None,
                        probe_input=None) -> EvalResult:
    """Score a live model with exactly the forward that export would seal."""
    sealed = SealedForward(model, autocast_dtype)
    device = model_device(sealed.model)
    was_training = sealed.model.training
    sealed.eval()
    try:
        return evaluate_program(lambda x: sealed(x.to(device)), batches, token_bytes,
                                probe_input, trust=IN_PROCESS)
    finally:
        sealed.model.train(was_training)


@contextlib.contextmanager
def _weights_only_loads():
    """Force every torch.load inside to refuse arbitrary pickles: the file comes from
    the training process, and unpickling could run its code in the evaluator."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD",
                                                  "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def load_program(path: Path):
    """Load an exported program without running any pickled Python objects."""
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            base = name.rsplit("/", 1)[-1]
            if "/data/constants/" in f"/{name}" and base.startswith(("custom_obj_", "opaque_obj_")):
                raise SubmissionError(f"{path.name} holds a pickled object ({name}); only "
                                      "tensors are allowed in a sealed model")
    with _weights_only_loads():
        return torch.export.load(path)


def evaluate_sealed(run_dir: Path, batches, token_bytes, *, device=None,
                    probe_input=None) -> EvalResult:
    """Verify, load and score run_dir/model.pt2 as described by its submission.json."""
    start = time.perf_counter()
    token_bytes = torch.as_tensor(token_bytes)

    def failed(status: str, message: str) -> EvalResult:
        return EvalResult(status, SEALED, error=message, eval_seconds=time.perf_counter() - start)

    try:
        submission = read_submission(run_dir)
        verify_checksum(run_dir, submission)
    except TamperedSubmission as exc:
        return failed(INVALID, f"tampered submission: {exc}")
    except SubmissionError as exc:
        return failed(ERROR, str(exc))
    if int(submission["vocab_size"]) != token_bytes.numel():
        return failed(ERROR, f"the model was exported for vocabulary {submission['vocab_size']}, "
                             f"the validation data uses {token_bytes.numel()}")
    device = torch.device(device or submission.get("device") or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        return failed(ERROR, f"the model was exported on {device}, which this evaluator lacks")
    try:
        module = load_program(model_path(run_dir, submission)).module()
    except Exception as exc:
        return failed(ERROR, f"cannot load the exported model: {type(exc).__name__}: {exc}")
    load_seconds = time.perf_counter() - start
    shape = (int(submission["batch_size"]), int(submission["seq_len"]))

    def logits_fn(x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != shape:
            raise ValueError(f"the model was exported for input {list(shape)}, the evaluator "
                             f"feeds {list(x.shape)}")
        return module(x.to(device))

    result = evaluate_program(logits_fn, batches, token_bytes, probe_input, trust=SEALED)
    result.load_seconds = load_seconds
    result.eval_seconds = time.perf_counter() - start
    return result


def write_eval_result(run_dir: Path, result: EvalResult) -> Path:
    path = Path(run_dir) / EVAL_FILE
    write_json_atomic(path, result.to_dict())
    return path


def read_eval_result(run_dir: Path) -> EvalResult:
    return EvalResult.from_dict(json.loads((Path(run_dir) / EVAL_FILE).read_text()))


def _validation(workspace: Path):
    """The workspace's validation batches and token byte lengths."""
    from autoresearch.config import load_settings
    from autoresearch.harness.dataloader import validation_batches
    from autoresearch.harness.prepare import load_prepared

    settings = load_settings(workspace)
    profile = settings.profile()
    prepared = load_prepared(settings.experiment.data, profile.vocab_size)
    batches = validation_batches(prepared, profile.eval_batch_size, profile.max_seq_len,
                                 profile.eval_tokens)
    return batches, prepared.token_bytes()


def _evaluate_run(run_dir: Path, workspace: Path | None) -> EvalResult:
    from autoresearch.harness.session import find_workspace

    batches, token_bytes = _validation(workspace or find_workspace(run_dir))
    return evaluate_sealed(run_dir, batches, token_bytes)


def _warm_up_loading(folder: Path) -> None:
    """Exports, loads and runs a tiny program once: the first load of a process pays
    for imports and code paths that every later one reuses (about 2 s on two cores)."""
    from autoresearch.harness.export import export_model

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(8, 4)
            self.head = torch.nn.Linear(4, 8)

        def forward(self, idx):
            return self.head(self.embed(idx))

    export_model(Tiny(), folder, batch_size=1, seq_len=4, vocab_size=8)
    with torch.inference_mode():
        load_program(folder / "model.pt2").module()(torch.zeros(1, 4, dtype=torch.int64))


def serve(workspace: Path, stdin=None, stdout=None) -> int:
    """Evaluation service for a loop: set-up once, then one run folder per input line.

    Each line of stdin is {"run_dir": PATH}; each answer on stdout is {"done": PATH,
    "status": ..., "result": {...}} once eval.json is written. The validation batches
    are copied for every evaluation, so a program that writes into its input cannot
    change what later runs are scored on.
    """
    import tempfile

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    batches, token_bytes = _validation(workspace)
    batches = list(batches)
    with tempfile.TemporaryDirectory(prefix="autoresearch-eval-") as folder:
        _warm_up_loading(Path(folder))
    print(json.dumps({"ready": True}), file=stdout, flush=True)
    for line in stdin:
        run_dir = Path(json.loads(line)["run_dir"]).resolve()
        fresh = ((x.clone(), y.clone()) for x, y in batches)
        try:
            result = evaluate_sealed(run_dir, fresh, token_bytes.clone())
        except Exception as exc:
            result = EvalResult(ERROR, SEALED, error=f"evaluator failed: {type(exc).__name__}: {exc}")
        try:
            write_eval_result(run_dir, result)
        except OSError as exc:
            print(f"cannot write {run_dir / EVAL_FILE}: {exc}", file=sys.stderr, flush=True)
        print(json.dumps({"done": str(run_dir), "status": result.status, "result": result.to_dict()}),
              file=stdout, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autoresearch.harness.evaluate",
        description="Score the sealed model of one run and write eval.json into its folder.")
    parser.add_argument("run_dir", type=Path, nargs="?", help="run folder holding submission.json and model.pt2")
    parser.add_argument("--workspace", type=Path, default=None,
                        help="research workspace (default: found from the run folder)")
    parser.add_argument("--serve", action="store_true",
                        help="read run folders from stdin, one per line, and evaluate each (needs --workspace)")
    args = parser.parse_args(argv)
    if args.serve == (args.run_dir is not None) or (args.serve and args.workspace is None):
        parser.error("give a run folder, or --serve with --workspace")
    # The current folder may be the workspace: never let its train.py become importable.
    here = {"", os.getcwd(), str(Path.cwd().resolve())}
    sys.path[:] = [p for p in sys.path if p not in here]
    torch.set_num_threads(os.cpu_count() or 1)
    if args.serve:
        return serve(args.workspace.resolve())
    run_dir = args.run_dir.resolve()
    try:
        result = _evaluate_run(run_dir, args.workspace)
    except Exception as exc:  # settings or data missing: still leave a readable result
        result = EvalResult(ERROR, SEALED, error=f"evaluator setup failed: {type(exc).__name__}: {exc}")
    try:
        write_eval_result(run_dir, result)
    except OSError as exc:
        print(f"cannot write {run_dir / EVAL_FILE}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
