import io
import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autoresearch.harness import evaluate as ev
from autoresearch.harness.export import export_model

B, T, V = 4, 16, 64
TOKEN_BYTES = torch.randint(1, 5, (V,), generator=torch.Generator().manual_seed(2), dtype=torch.int32)
TOKEN_BYTES[:2] = 0  # two special tokens


class TinyGPT(nn.Module):
    """Embedding, one causal attention block with an MLP, head; `ahead` > 0 leaks."""

    def __init__(self, dim=32, heads=2, ahead=0, vocab=V):
        super().__init__()
        torch.manual_seed(0)
        self.heads, self.ahead = heads, ahead
        self.emb = nn.Embedding(vocab, dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.up, self.down = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(4 * dim, dim, bias=False)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        b, t = idx.shape
        x = self.emb(idx)
        q, k, v = self.qkv(F.rms_norm(x, (x.size(-1),))).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        mask = torch.ones(t, t, dtype=torch.bool, device=idx.device).tril(self.ahead)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, -1)
        x = x + self.proj(y)
        x = x + self.down(F.relu(self.up(F.rms_norm(x, (x.size(-1),)))).square())
        return self.head(F.rms_norm(x, (x.size(-1),))).float()


def batches(n=3, b=B, t=T, seed=3):
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, V, (b, t + 1), generator=gen) for _ in range(n)]
    return [(r[:, :-1], r[:, 1:]) for r in rows]


def trained_bf16():
    model = TinyGPT()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in batches(3, seed=9):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).view(-1, V), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def export(model, run_dir, **kw):
    return export_model(model, run_dir, batch_size=B, seq_len=T, vocab_size=V, **kw)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_sealed_equals_in_process(tmp_path, dtype):
    model = trained_bf16() if dtype else TinyGPT()
    export(model, tmp_path, autocast_dtype=dtype)
    sealed = ev.evaluate_sealed(tmp_path, batches(), TOKEN_BYTES)
    live = ev.evaluate_in_process(model, batches(), TOKEN_BYTES, autocast_dtype=dtype)
    assert (sealed.status, sealed.trust, sealed.probe_passed) == ("ok", "sealed", True), sealed.error
    assert (live.status, live.trust) == ("ok", "in-process")
    assert sealed.val_bpb == live.val_bpb and 2 < sealed.val_bpb < 4
    assert sealed.tokens == live.tokens > 0 and sealed.bytes == live.bytes
    assert sealed.load_seconds is not None and sealed.eval_seconds >= sealed.load_seconds
    if dtype:  # the autocast really is part of the evaluated program
        fp32 = ev.evaluate_in_process(model, batches(), TOKEN_BYTES)
        assert fp32.val_bpb != sealed.val_bpb


def test_look_ahead_is_invalid_but_reported(tmp_path):
    export(TinyGPT(ahead=1), tmp_path)
    result = ev.evaluate_sealed(tmp_path, batches(), TOKEN_BYTES)
    assert (result.status, result.probe_passed) == ("invalid", False)
    assert result.val_bpb is not None and "future tokens" in result.error


def test_tampered_model_is_invalid(tmp_path):
    export(TinyGPT(), tmp_path)
    other = tmp_path / "other"
    export(TinyGPT(dim=16), other)  # a valid program, just not the submitted one
    (tmp_path / "model.pt2").write_bytes((other / "model.pt2").read_bytes())
    result = ev.evaluate_sealed(tmp_path, batches(), TOKEN_BYTES)
    assert result.status == "invalid" and result.val_bpb is None
    assert "tampered" in result.error


def test_unusable_submissions_are_errors(tmp_path):
    missing = ev.evaluate_sealed(tmp_path, batches(), TOKEN_BYTES)
    assert missing.status == "error" and "submit" in missing.error
    export(TinyGPT(), tmp_path)
    wrong_shape = ev.evaluate_sealed(tmp_path, batches(b=B + 1), TOKEN_BYTES)
    assert wrong_shape.status == "error" and "exported for input [4, 16]" in wrong_shape.error
    wrong_vocab = ev.evaluate_sealed(tmp_path, batches(), TOKEN_BYTES[:-1])
    assert wrong_vocab.status == "error" and "vocabulary 64" in wrong_vocab.error


def test_non_finite_loss_is_an_error():
    result = ev.evaluate_program(lambda x: torch.full((B, T, V), float("nan")), batches(), TOKEN_BYTES,
                                 trust="in-process")
    assert result.status == "error" and result.val_bpb is None and "not finite" in result.error
    empty = ev.evaluate_program(lambda x: x, [], TOKEN_BYTES)
    assert empty.status == "error" and "no validation batches" in empty.error


def test_probe_costs_one_extra_forward_pass():
    model, calls = TinyGPT(), []

    def fn(x):
        calls.append(x)
        return model(x)

    result = ev.evaluate_program(fn, batches(n=3), TOKEN_BYTES)
    assert result.status == "ok" and len(calls) == 3 + 1


def test_result_round_trips_through_eval_json(tmp_path):
    result = ev.EvalResult("ok", val_bpb=1.25, probe_passed=True, probe_max_diff=float("nan"), tokens=7)
    path = ev.write_eval_result(tmp_path, result)
    assert path.name == "eval.json" and os.listdir(tmp_path) == ["eval.json"]
    data = json.loads(path.read_text())  # strict JSON: NaN became null
    assert data["probe_max_diff"] is None and data["val_bpb"] == 1.25
    back = ev.read_eval_result(tmp_path)
    assert back == ev.EvalResult.from_dict({**result.to_dict(), "unknown": 1})


def _rewrite(path, change):
    entries = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            entries[name] = archive.read(name)
    change(entries)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_pickled_code_in_the_program_never_runs(tmp_path):
    import pickle

    export(TinyGPT(), tmp_path)
    marker = tmp_path / "pwned"

    def poison(entries):
        config_name = next(n for n in entries if n.endswith("model_weights_config.json"))
        config = json.loads(entries[config_name])
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
        entries[config_name] = json.dumps(config).encode()
        weight = next(n for n in entries if n.endswith("weights/" + first["path_name"]))
        buffer = io.BytesIO()
        pickle.dump(Payload(str(marker)), buffer)
        entries[weight] = buffer.getvalue()

    _rewrite(tmp_path / "model.pt2", poison)
    with pytest.raises(Exception):
        ev.load_program(tmp_path / "model.pt2")
    assert not marker.exists()
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ  # restored afterwards

    _rewrite(tmp_path / "model.pt2", lambda e: e.update({"model/data/constants/opaque_obj_0": b""}))
    with pytest.raises(ev.SubmissionError, match="pickled object"):
        ev.load_program(tmp_path / "model.pt2")


FRESH = """
import json, sys, torch
from autoresearch.harness.evaluate import evaluate_sealed
try:
    import test_evaluate
    sys.exit("the test module is importable")
except ImportError:
    pass
gen = torch.Generator().manual_seed(3)
rows = [torch.randint(0, {V}, ({B}, {T} + 1), generator=gen) for _ in range(3)]
token_bytes = torch.load(sys.argv[2])
result = evaluate_sealed(sys.argv[1], [(r[:, :-1], r[:, 1:]) for r in rows], token_bytes)
print(json.dumps(result.to_dict()))
"""


def test_program_loads_in_a_fresh_process_without_the_model_source(tmp_path):
    run_dir = tmp_path / "run"
    export(TinyGPT(), run_dir)
    torch.save(TOKEN_BYTES, tmp_path / "bytes.pt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = FRESH.format(V=V, B=B, T=T)
    proc = subprocess.run([sys.executable, "-c", code, str(run_dir), str(tmp_path / "bytes.pt")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "ok"
    assert result["val_bpb"] == ev.evaluate_in_process(TinyGPT(), batches(), TOKEN_BYTES).val_bpb


def test_cli_returns_non_zero_when_it_cannot_write(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    assert ev.main([str(tmp_path / "missing-run"), "--workspace", str(tmp_path)]) == 2


def test_cli_writes_an_error_result_when_setup_fails(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # as the runner does: the workspace is the current folder
    monkeypatch.setattr(sys, "path", ["", str(tmp_path), *sys.path])
    assert ev.main([str(tmp_path), "--workspace", str(tmp_path)]) == 0
    result = ev.read_eval_result(tmp_path)
    assert result.status == "error" and "autoresearch.toml" in result.error
    assert "" not in sys.path and str(tmp_path) not in sys.path  # its train.py stays unimportable


@pytest.mark.slow
def test_cli_scores_a_run_of_a_workspace(tmp_path, data_cache):
    from autoresearch.config import Settings, save_settings
    from autoresearch.harness.profiles import CPU

    workspace, run_dir = tmp_path / "ws", tmp_path / "ws" / "run"
    workspace.mkdir()
    save_settings(workspace, Settings())
    # importing the agent's script would leave a mark
    (workspace / "train.py").write_text("import pathlib; pathlib.Path(__file__).with_name('imported').touch()\n")
    export_model(TinyGPT(dim=16, vocab=CPU.vocab_size), run_dir, batch_size=CPU.eval_batch_size,
                 seq_len=CPU.max_seq_len, vocab_size=CPU.vocab_size)
    env = {**os.environ, "AUTORESEARCH_CACHE": str(data_cache)}
    proc = subprocess.run([sys.executable, "-m", "autoresearch.harness.evaluate", str(run_dir),
                           "--workspace", str(workspace)], cwd=workspace, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = ev.read_eval_result(run_dir)
    assert (result.status, result.trust, result.probe_passed) == ("ok", "sealed", True), result.error
    assert result.tokens > 0.9 * CPU.eval_tokens and result.bytes > result.tokens
    assert not (workspace / "imported").exists()
