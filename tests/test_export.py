import hashlib
import json

import pytest
import torch
from torch import nn

from autoresearch.harness.export import (
    ExportError,
    SubmissionError,
    TamperedSubmission,
    export_model,
    read_submission,
    verify_checksum,
)

B, T, V = 2, 8, 32


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.mix, self.head = nn.Embedding(V, 16), nn.Linear(16, 16), nn.Linear(16, V)

    def forward(self, idx):
        h = self.emb(idx)
        return self.head(torch.relu(self.mix(h.cumsum(1))))


def tokens():
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(5))


def export(model, run_dir, **kw):
    return export_model(model, run_dir, batch_size=B, seq_len=T, vocab_size=V, **kw)


def test_export_writes_program_and_submission(tmp_path):
    model = Small().train()
    sub = export(model, tmp_path, extra={"account": {"steps": 3}})
    model_file = tmp_path / "model.pt2"
    assert sub["sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert (sub["model_file"], sub["batch_size"], sub["seq_len"], sub["vocab_size"]) == ("model.pt2", B, T, V)
    assert sub["device"] == "cpu" and sub["account"] == {"steps": 3} and sub["export_seconds"] >= 0
    assert read_submission(tmp_path) == sub == json.loads((tmp_path / "submission.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2", "submission.json"]  # no temp files
    assert model.training  # the caller's mode is restored
    program = torch.export.load(model_file).module()
    with torch.no_grad():
        assert torch.equal(program(tokens()), model.eval()(tokens()))


def test_autocast_is_sealed_inside_the_program(tmp_path):
    model = Small()
    export(model, tmp_path, autocast_dtype=torch.bfloat16)
    program = torch.export.load(tmp_path / "model.pt2").module()
    with torch.no_grad():
        out = program(tokens())  # no autocast around the call
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = model(tokens()).float()
        assert out.dtype == torch.float32
        assert torch.equal(out, expected)
        assert not torch.equal(out, model(tokens()))
    assert read_submission(tmp_path)["autocast_dtype"] == "bfloat16"


def test_compiled_wrapper_is_unwrapped(tmp_path):
    model = Small()
    compiled = torch.compile(model)  # lazy: nothing is compiled until called
    export(compiled, tmp_path)
    program = torch.export.load(tmp_path / "model.pt2").module()
    assert any(name.startswith("model.emb") for name, _ in program.named_parameters())


def test_program_is_fixed_to_the_submitted_shape(tmp_path):
    export(Small(), tmp_path)
    program = torch.export.load(tmp_path / "model.pt2").module()
    with pytest.raises(Exception):
        program(torch.zeros(B + 1, T, dtype=torch.long))


class DataDependent(Small):
    def forward(self, idx):
        if idx.sum().item() > 0:  # Python control flow on data cannot be traced
            return super().forward(idx)
        return super().forward(idx) * 2


class WrongShape(Small):
    def forward(self, idx):
        return super().forward(idx)[:, -1]


def test_export_errors_are_reported(tmp_path):
    with pytest.raises(ExportError, match="torch.export failed"):
        export(DataDependent(), tmp_path)
    with pytest.raises(ExportError, match="must return logits"):
        export(WrongShape(), tmp_path)
    with pytest.raises(ValueError, match="overwrite"):
        export(Small(), tmp_path, extra={"sha256": "x"})
    assert not (tmp_path / "submission.json").exists()


def test_checksum_detects_tampering(tmp_path):
    sub = export(Small(), tmp_path)
    verify_checksum(tmp_path, sub)
    with open(tmp_path / "model.pt2", "ab") as f:
        f.write(b"\0")
    with pytest.raises(TamperedSubmission, match="changed after export"):
        verify_checksum(tmp_path, sub)


def test_submission_must_exist_and_name_a_local_file(tmp_path):
    with pytest.raises(SubmissionError, match="never called submit"):
        read_submission(tmp_path)
    sub = export(Small(), tmp_path)
    with pytest.raises(SubmissionError, match="file name inside"):
        verify_checksum(tmp_path, {**sub, "model_file": "../model.pt2"})
    (tmp_path / "submission.json").write_text("[1]")
    with pytest.raises(SubmissionError, match="not a JSON object"):
        read_submission(tmp_path)


class InPlace(Small):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, idx):
        h = self.emb(idx)
        h.mul_(2)  # in place on an intermediate: fine once functionalised
        self.calls += 1  # in place on a buffer: state, which the evaluator refuses
        return self.head(h)


def test_export_functionalises_the_program(tmp_path):
    export(InPlace(), tmp_path)
    program = torch.export.load(tmp_path / "model.pt2")
    ops = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.mul.Tensor in ops
    assert not any(a.alias_info is not None and a.alias_info.is_write
                   for op in ops for a in op._schema.arguments)
    assert list(program.graph_signature.buffers_to_mutate.values()) == ["model.calls"]
