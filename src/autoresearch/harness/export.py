"""Seal a trained model into a file the evaluator can run without the model's source.

The model is traced with `torch.export` at exactly the shape the evaluator feeds, saved
as `model.pt2`, and described by `submission.json` (shape, device, checksum). The
evaluator loads only this program, so nothing the training script defines runs there.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from autoresearch.harness.session import MODEL_FILE, SUBMISSION_FILE

FORMAT_VERSION = 1
EXAMPLE_SEED = 1234  # example tokens are fixed so that two exports of one model match


class SubmissionError(Exception):
    """The submission is missing, unreadable or unusable."""


class ExportError(SubmissionError):
    """The model could not be exported."""


class TamperedSubmission(SubmissionError):
    """model.pt2 changed after it was exported."""


class SealedForward(nn.Module):
    """The exact computation the evaluator runs: autocast inside forward, fp32 logits.

    An ambient autocast around `torch.export` is not captured in the program, so the
    autocast has to live inside the traced forward.
    """

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.model = unwrap(model)
        self.autocast_dtype = autocast_dtype

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self.model(idx).float()
        with torch.autocast(idx.device.type, dtype=self.autocast_dtype):
            logits = self.model(idx)
        return logits.float()


def unwrap(model: nn.Module) -> nn.Module:
    """`torch.compile` returns a wrapper; the module to export is the one it wraps."""
    while hasattr(model, "_orig_mod"):
        model = model._orig_mod
    return model


def model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def example_tokens(batch_size: int, seq_len: int, vocab_size: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(EXAMPLE_SEED)
    idx = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen, dtype=torch.int64)
    return idx.to(device)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json_atomic(path: Path, data: dict) -> None:
    """A reader never sees a half-written file: write a sibling, then rename over."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _output_shape(program) -> tuple | None:
    """Shape of the program's output from trace metadata, without running it."""
    for node in program.graph.nodes:
        if node.op == "output":
            outs = node.args[0]
            if isinstance(outs, (tuple, list)) and len(outs) == 1:
                val = getattr(outs[0], "meta", {}).get("val")
                if isinstance(val, torch.Tensor):
                    return tuple(val.shape)
            return None
    return None


def trace_program(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """Trace `module` into a functional ATen program.

    Functionalising turns in-place updates of intermediates into pure ops, so honest
    code that uses them passes the evaluator's graph check, while in-place updates of
    buffers show up in the graph signature, where the check refuses them (state kept
    between calls). Numerics stay bitwise those of the eager forward.
    """
    return torch.export.export(module, (example,)).run_decompositions({})


def export_model(
    model: nn.Module,
    run_dir: Path,
    *,
    batch_size: int,
    seq_len: int,
    vocab_size: int,
    autocast_dtype: torch.dtype | None = None,
    extra: dict | None = None,
) -> dict:
    """Export `model` to run_dir/model.pt2 and describe it in run_dir/submission.json."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    clash = set(extra or {}) & {"model_file", "sha256", "batch_size", "seq_len", "vocab_size",
                                "device", "autocast_dtype", "export_seconds", "format_version",
                                "torch_version"}
    if clash:
        raise ValueError(f"extra fields would overwrite submission fields: {sorted(clash)}")
    start = time.perf_counter()
    inner = unwrap(model)
    device = model_device(inner)
    was_training = inner.training
    sealed = SealedForward(inner, autocast_dtype).eval()
    example = example_tokens(batch_size, seq_len, vocab_size, device)
    try:
        program = trace_program(sealed, example)
    except Exception as exc:  # any tracing failure is the model's, reported as such
        raise ExportError(f"torch.export failed: {type(exc).__name__}: {exc}") from exc
    finally:
        inner.train(was_training)
    shape = _output_shape(program)
    if shape is not None and (len(shape) != 3 or shape[:2] != (batch_size, seq_len)
                              or shape[2] < vocab_size):
        raise ExportError(f"forward(idx) must return logits [{batch_size}, {seq_len}, "
                          f">={vocab_size}], got {list(shape)}")
    model_path = run_dir / MODEL_FILE
    tmp = run_dir / f".{os.getpid()}.{MODEL_FILE}"  # torch.export.save wants a .pt2 name
    try:
        torch.export.save(program, tmp)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"torch.export.save failed: {type(exc).__name__}: {exc}") from exc
    os.replace(tmp, model_path)
    submission = dict(extra or {})
    submission.update(
        format_version=FORMAT_VERSION,
        model_file=MODEL_FILE,
        sha256=sha256_file(model_path),
        batch_size=batch_size,
        seq_len=seq_len,
        vocab_size=vocab_size,
        device=str(device),
        autocast_dtype=str(autocast_dtype).removeprefix("torch.") if autocast_dtype else None,
        torch_version=torch.__version__,
        export_seconds=round(time.perf_counter() - start, 3),
    )
    write_json_atomic(run_dir / SUBMISSION_FILE, submission)
    return submission


def read_submission(run_dir: Path) -> dict:
    path = Path(run_dir) / SUBMISSION_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SubmissionError(f"{path} not found: the run never called submit(model)") from None
    except (OSError, ValueError) as exc:
        raise SubmissionError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise SubmissionError(f"{path} is not a JSON object")
    missing = {"model_file", "sha256", "batch_size", "seq_len", "vocab_size"} - set(data)
    if missing:
        raise SubmissionError(f"{path} lacks field(s) {sorted(missing)}")
    return data


def model_path(run_dir: Path, submission: dict) -> Path:
    """The model file named by the submission; only a plain name inside run_dir."""
    name = str(submission["model_file"])
    if Path(name).name != name or name in ("", ".", ".."):
        raise SubmissionError(f"model_file must be a file name inside the run folder, got {name!r}")
    return Path(run_dir) / name


def verify_checksum(run_dir: Path, submission: dict) -> None:
    path = model_path(run_dir, submission)
    if not path.is_file():
        raise SubmissionError(f"{path} not found although submission.json names it")
    actual = sha256_file(path)
    if actual != submission["sha256"]:
        raise TamperedSubmission(
            f"{path.name} changed after export: sha256 {actual[:12]}... differs from the "
            f"submitted {str(submission['sha256'])[:12]}..."
        )
