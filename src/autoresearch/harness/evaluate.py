"""The evaluator: scores a model on validation data and returns the result as data.

Sealed mode runs in its own process and loads only the exported program, so no code
of the training script runs while the metric is computed. The program is untrusted:
it is loaded without unpickling anything, refused unless its graph is pure ATen
computation (graphcheck), loaded afresh for every evaluation, and probed for
causality with calls it cannot tell from scoring calls. The evaluator writes no
files: the one-shot CLI prints one JSON line, the service answers on stdout.

    python -m autoresearch.harness.evaluate --validation JSON --model FILE --submission FILE
    python -m autoresearch.harness.evaluate --validation JSON --serve

In-process mode scores a live model with the same core, for targets that cannot be
exported.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from autoresearch.harness.export import (
    SealedForward,
    SubmissionError,
    model_device,
    trace_program,
)
from autoresearch.harness.graphcheck import UnsafeProgram, check_program
from autoresearch.harness.metric import probed_bits_per_byte

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


def evaluate_program(logits_fn, batches, token_bytes, *, trust: str = SEALED,
                     probe_seed: int | None = None) -> EvalResult:
    """Score every batch with the causality probe slipped in; the core shared by sealed
    and in-process mode. `probe_seed` fixes the probe's choices (tests only)."""
    start = time.perf_counter()
    token_bytes = torch.as_tensor(token_bytes)
    try:
        with torch.inference_mode():
            bpb, probe = probed_bits_per_byte(logits_fn, list(batches), token_bytes, seed=probe_seed)
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
                        probe_seed: int | None = None) -> EvalResult:
    """Score a live model with exactly the forward that export would seal."""
    sealed = SealedForward(model, autocast_dtype)
    device = model_device(sealed.model)
    was_training = sealed.model.training
    sealed.eval()
    try:
        return evaluate_program(lambda x: sealed(x.to(device)), batches, token_bytes,
                                trust=IN_PROCESS, probe_seed=probe_seed)
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


def load_program(source) -> torch.export.ExportedProgram:
    """Load an exported program (a path or a binary file) without running any pickled
    Python objects. Its graph is not checked here: see graphcheck.check_program."""
    name = getattr(source, "name", None) or "the program"
    with zipfile.ZipFile(source) as archive:
        for entry in archive.namelist():
            base = entry.rsplit("/", 1)[-1]
            if "/data/constants/" in f"/{entry}" and base.startswith(("custom_obj_", "opaque_obj_")):
                raise SubmissionError(f"{name} holds a pickled object ({entry}); only "
                                      "tensors are allowed in a sealed model")
    if hasattr(source, "seek"):
        source.seek(0)
    with _weights_only_loads():
        return torch.export.load(source)


# The submission comes from the training process: every field is checked before use.
_SHA256 = re.compile(r"[0-9a-f]{64}")
_DEVICE = re.compile(r"cpu|cuda(:[0-9]{1,2})?")


def _positive_int(submission: dict, key: str) -> int:
    value = submission.get(key)
    if type(value) is not int or value <= 0:  # bool is an int too: refused by `type`
        raise SubmissionError(f"submission field {key!r} must be a positive integer, got {value!r}")
    return value


def check_submission(submission, shape: tuple[int, int], vocab_size: int) -> torch.device:
    """Validate the untrusted submission against what the evaluator feeds; its device."""
    if not isinstance(submission, dict):
        raise SubmissionError(f"the submission must be a JSON object, got {type(submission).__name__}")
    sha = submission.get("sha256")
    if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
        raise SubmissionError(f"submission field 'sha256' must be 64 lowercase hex digits, got {sha!r}")
    exported = (_positive_int(submission, "batch_size"), _positive_int(submission, "seq_len"))
    if exported != tuple(shape):
        raise SubmissionError(f"the model was exported for input {list(exported)}, the evaluator "
                              f"feeds {list(shape)}")
    vocab = _positive_int(submission, "vocab_size")
    if vocab != vocab_size:
        raise SubmissionError(f"the model was exported for vocabulary {vocab}, the validation "
                              f"data uses {vocab_size}")
    device = submission.get("device", "cpu")
    if device is None:
        device = "cpu"
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise SubmissionError(f"submission field 'device' must be 'cpu' or 'cuda[:N]', got {device!r}")
    return torch.device(device)


def evaluate_sealed(model_file: Path, submission: dict, batches, token_bytes, *,
                    device=None, probe_seed: int | None = None) -> EvalResult:
    """Verify, check, load and score the program in `model_file` as `submission` describes it."""
    start = time.perf_counter()
    token_bytes = torch.as_tensor(token_bytes)
    batches = list(batches)

    def failed(status: str, message: str) -> EvalResult:
        return EvalResult(status, SEALED, error=message, eval_seconds=time.perf_counter() - start)

    if not batches:
        return failed(ERROR, "no validation batches")
    model_file = Path(model_file)
    try:
        exported_on = check_submission(submission, tuple(batches[0][0].shape), token_bytes.numel())
        if not model_file.is_file():
            raise SubmissionError(f"{model_file} not found")
        # Read once: the bytes that are hashed are the bytes that are loaded.
        content = model_file.read_bytes()
        actual = hashlib.sha256(content).hexdigest()
    except (SubmissionError, OSError) as exc:
        return failed(ERROR, str(exc))
    if actual != submission["sha256"]:
        return failed(INVALID, f"tampered submission: {model_file.name} changed after export: sha256 "
                               f"{actual[:12]}... differs from the submitted {submission['sha256'][:12]}...")
    device = torch.device(device) if device is not None else exported_on
    if device.type == "cuda" and not torch.cuda.is_available():
        return failed(ERROR, f"the model was exported on {device}, which this evaluator lacks")
    try:
        program = load_program(io.BytesIO(content))
    except Exception as exc:
        return failed(ERROR, f"cannot load the exported model: {type(exc).__name__}: {exc}")
    try:
        check_program(program)  # before anything of it runs
    except UnsafeProgram as exc:
        return failed(INVALID, f"unsafe program: {exc}")
    except Exception as exc:  # a graph the check cannot read is refused too
        return failed(INVALID, f"unsafe program: the graph check failed: {type(exc).__name__}: {exc}")
    try:
        module = program.module()  # a fresh instance, used for this evaluation only
    except Exception as exc:
        return failed(ERROR, f"cannot load the exported model: {type(exc).__name__}: {exc}")
    load_seconds = time.perf_counter() - start
    result = evaluate_program(lambda x: module(x.to(device)), batches, token_bytes,
                              trust=SEALED, probe_seed=probe_seed)
    result.load_seconds = load_seconds
    result.eval_seconds = time.perf_counter() - start
    return result


VALIDATION_KEYS = ("data", "vocab_size", "eval_batch_size", "max_seq_len", "eval_tokens")


def validation_spec(profile, data: str) -> dict:
    """What the evaluator scores on, for its --validation argument: from a harness
    profile and a data source."""
    return {"data": str(data), "vocab_size": profile.vocab_size,
            "eval_batch_size": profile.eval_batch_size, "max_seq_len": profile.max_seq_len,
            "eval_tokens": profile.eval_tokens}


def parse_validation(text: str) -> dict:
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--validation is not JSON: {exc}") from None
    if not isinstance(spec, dict) or set(spec) != set(VALIDATION_KEYS):
        raise ValueError(f"--validation must be an object with exactly the keys {list(VALIDATION_KEYS)}")
    if not isinstance(spec["data"], str):
        raise ValueError("--validation's data must be a string")
    for key in VALIDATION_KEYS[1:]:
        if type(spec[key]) is not int or spec[key] <= 0:
            raise ValueError(f"--validation's {key} must be a positive integer")
    return spec


def load_validation(spec: dict):
    """The validation batches (a list) and token byte lengths that `spec` names."""
    from autoresearch.harness.dataloader import validation_batches
    from autoresearch.harness.prepare import load_prepared

    prepared = load_prepared(spec["data"], spec["vocab_size"])
    batches = validation_batches(prepared, spec["eval_batch_size"], spec["max_seq_len"],
                                 spec["eval_tokens"])
    return list(batches), prepared.token_bytes()


def _read_submission_file(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SubmissionError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise SubmissionError(f"{path} is not a JSON object")
    return data


def _evaluate_fresh(model, submission, batches, token_bytes) -> EvalResult:
    """One evaluation on copies of the validation data: a program that somehow wrote
    into its input could not change what later evaluations are scored on."""
    fresh = [(x.clone(), y.clone()) for x, y in batches]
    try:
        return evaluate_sealed(Path(model), submission, fresh, token_bytes.clone())
    except Exception as exc:
        return EvalResult(ERROR, SEALED, error=f"evaluator failed: {type(exc).__name__}: {exc}")


def _warm_up() -> None:
    """Trace, check, load and run a tiny program once, in memory: the first load of a
    process pays for imports and code paths that every later one reuses."""

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(8, 4)
            self.head = torch.nn.Linear(4, 8)

        def forward(self, idx):
            return self.head(self.embed(idx))

    idx = torch.zeros(1, 4, dtype=torch.int64)
    buffer = io.BytesIO()
    torch.export.save(trace_program(SealedForward(Tiny()).eval(), idx), buffer)
    buffer.seek(0)
    program = load_program(buffer)
    check_program(program)
    with torch.inference_mode():
        program.module()(idx)


def _answer(line: str, batches, token_bytes) -> dict:
    try:
        request = json.loads(line)
    except ValueError as exc:
        return {"done": None, "result": _error(f"the request is not JSON: {exc}")}
    if not isinstance(request, dict):
        return {"done": None, "result": _error("the request is not a JSON object")}
    request_id = request.get("id")
    model = request.get("model")
    if not isinstance(model, str) or not model:
        return {"done": request_id, "result": _error("the request names no model file")}
    result = _evaluate_fresh(model, request.get("submission"), batches, token_bytes)
    return {"done": request_id, "result": result.to_dict()}


def _error(message: str) -> dict:
    return EvalResult(ERROR, SEALED, error=message).to_dict()


def serve(spec: dict, stdin=None, stdout=None) -> int:
    """Evaluation service: set-up once, then one evaluation per request.

    Each line of stdin is {"id": ANY, "model": PATH, "submission": {...}}; each answer
    on stdout is {"done": ID, "result": {...}}. A {"ready": true} line says set-up is done.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    from autoresearch.harness.zygote import _make_undumpable

    _make_undumpable()  # its pipes and memory are not open to other processes through /proc
    batches, token_bytes = load_validation(spec)
    _warm_up()
    print(json.dumps({"ready": True}), file=stdout, flush=True)
    for line in stdin:
        if line.strip():
            print(json.dumps(_answer(line, batches, token_bytes)), file=stdout, flush=True)
    return 0


def evaluate_once(spec: dict, model: Path, submission_file: Path) -> EvalResult:
    try:
        submission = _read_submission_file(submission_file)
    except SubmissionError as exc:
        return EvalResult(ERROR, SEALED, error=str(exc))
    batches, token_bytes = load_validation(spec)
    return _evaluate_fresh(model, submission, batches, token_bytes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m autoresearch.harness.evaluate",
        description="Score a sealed model; print the result as one JSON line {\"result\": {...}}.")
    parser.add_argument("--validation", required=True,
                        help="JSON object: " + ", ".join(VALIDATION_KEYS))
    parser.add_argument("--model", type=Path, help="the exported program (model.pt2)")
    parser.add_argument("--submission", type=Path, help="the submission.json that describes it")
    parser.add_argument("--serve", action="store_true",
                        help="answer requests from stdin, one JSON object per line")
    args = parser.parse_args(argv)
    one_shot = args.model is not None and args.submission is not None
    if args.serve == one_shot or (args.serve and (args.model or args.submission)):
        parser.error("give --model and --submission, or --serve")
    # The current folder may be the workspace: never let its train.py become importable.
    here = {"", os.getcwd(), str(Path.cwd().resolve())}
    sys.path[:] = [p for p in sys.path if p not in here]
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        spec = parse_validation(args.validation)
    except ValueError as exc:
        if args.serve:
            parser.error(str(exc))
        spec = None
        result = EvalResult(ERROR, SEALED, error=str(exc))
    if args.serve:
        return serve(spec)
    if spec is not None:
        try:
            result = evaluate_once(spec, args.model.resolve(), args.submission)
        except Exception as exc:  # data missing: still answer with a readable result
            result = EvalResult(ERROR, SEALED, error=f"evaluator setup failed: {type(exc).__name__}: {exc}")
    print(json.dumps({"result": result.to_dict()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
