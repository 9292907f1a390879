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
from autoresearch.harness.export import export_model, read_submission
from autoresearch.harness.metric import probe_calls

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


def sealed(run_dir, data=None, token_bytes=TOKEN_BYTES, **kw):
    """Score run_dir's program as the runner would: model file and submission handed over."""
    return ev.evaluate_sealed(run_dir / "model.pt2", read_submission(run_dir),
                              batches() if data is None else data, token_bytes, **kw)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_sealed_equals_in_process(tmp_path, dtype):
    model = trained_bf16() if dtype else TinyGPT()
    export(model, tmp_path, autocast_dtype=dtype)
    before = sorted(os.listdir(tmp_path))
    result = sealed(tmp_path)
    live = ev.evaluate_in_process(model, batches(), TOKEN_BYTES, autocast_dtype=dtype)
    assert (result.status, result.trust, result.probe_passed) == ("ok", "sealed", True), result.error
    assert result.probe_max_diff == 0.0 and "passed" in result.probe_detail
    assert (live.status, live.trust) == ("ok", "in-process")
    assert result.val_bpb == live.val_bpb and 2 < result.val_bpb < 4
    assert result.tokens == live.tokens > 0 and result.bytes == live.bytes
    assert result.load_seconds is not None and result.eval_seconds >= result.load_seconds
    assert sorted(os.listdir(tmp_path)) == before  # the evaluator writes nothing
    if dtype:  # the autocast really is part of the evaluated program
        fp32 = ev.evaluate_in_process(model, batches(), TOKEN_BYTES)
        assert fp32.val_bpb != result.val_bpb


def test_look_ahead_is_invalid_but_reported(tmp_path):
    export(TinyGPT(ahead=1), tmp_path)
    result = sealed(tmp_path)
    assert (result.status, result.probe_passed) == ("invalid", False)
    assert result.val_bpb is not None and "future tokens" in result.error


class CausalOnce(TinyGPT):
    """Causal on its first call, looking ahead on later ones: a call count in a buffer."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, idx):
        self.calls += 1
        leaky = super().forward(idx.roll(-1, dims=1))
        return torch.where(self.calls > 1, leaky, super().forward(idx))


class Noisy(TinyGPT):
    def forward(self, idx):
        return super().forward(idx) + 1e-3 * torch.randn(idx.shape[0], idx.shape[1], V)


@pytest.mark.parametrize("model, reason", [(CausalOnce, "state between calls"), (Noisy, "random numbers")])
def test_unsafe_programs_are_invalid_before_they_run(tmp_path, model, reason):
    export(model(), tmp_path)
    result = sealed(tmp_path)
    assert (result.status, result.val_bpb, result.probe_passed) == ("invalid", None, None)
    assert result.error.startswith("unsafe program:") and reason in result.error


def test_tampered_model_is_invalid(tmp_path):
    export(TinyGPT(), tmp_path)
    other = tmp_path / "other"
    export(TinyGPT(dim=16), other)  # a valid program, just not the submitted one
    (tmp_path / "model.pt2").write_bytes((other / "model.pt2").read_bytes())
    result = sealed(tmp_path)
    assert result.status == "invalid" and result.val_bpb is None
    assert "tampered" in result.error


def test_unusable_submissions_are_errors(tmp_path):
    sub = export(TinyGPT(), tmp_path)
    model = tmp_path / "model.pt2"

    def error(submission, data=None, token_bytes=TOKEN_BYTES, path=model):
        result = ev.evaluate_sealed(path, submission, batches() if data is None else data, token_bytes)
        assert result.status == "error" and result.val_bpb is None
        return result.error

    assert "not found" in error(sub, path=tmp_path / "missing.pt2")
    assert "exported for input [4, 16], the evaluator feeds [5, 16]" in error(sub, batches(b=B + 1))
    assert "vocabulary 64" in error(sub, token_bytes=TOKEN_BYTES[:-1])
    assert "no validation batches" in error(sub, [])
    assert "JSON object" in error([sub])
    for field, value in [("batch_size", True), ("batch_size", "4"), ("seq_len", -16), ("vocab_size", None)]:
        assert f"'{field}' must be a positive integer" in error({**sub, field: value})
    for value in ["", "../" * 20 + "x" * 4, sub["sha256"].upper(), 7]:
        assert "'sha256' must be 64" in error({**sub, "sha256": value})
    for value in ["file:/etc/passwd", "meta", "cuda:x", 0]:
        assert "'device' must be" in error({**sub, "device": value})


def test_non_finite_loss_is_an_error():
    result = ev.evaluate_program(lambda x: torch.full((B, T, V), float("nan")), batches(), TOKEN_BYTES,
                                 trust="in-process")
    assert result.status == "error" and result.val_bpb is None and "not finite" in result.error
    empty = ev.evaluate_program(lambda x: x, [], TOKEN_BYTES)
    assert empty.status == "error" and "no validation batches" in empty.error


def test_probe_calls_are_natural_rows_slipped_into_the_scoring_pass():
    model, data = TinyGPT(), batches(n=6)
    first_probe = set()
    for seed in range(8):
        calls = []

        def fn(x):
            calls.append(x.clone())
            return model(x)

        result = ev.evaluate_program(fn, data, TOKEN_BYTES, probe_seed=seed)
        assert result.status == "ok" and len(calls) == len(data) + probe_calls(len(data))
        probes = [i for i, x in enumerate(calls) if not any(torch.equal(x, d) for d, _ in data)]
        assert len(probes) == probe_calls(len(data))
        first_probe.add(probes[0])
        for i in probes:  # same shape, made of the rows of a batch scored before it
            scored_before = [x for x in calls[:i] if any(torch.equal(x, d) for d, _ in data)]
            assert any(_made_of_rows(calls[i], x) for x in scored_before)
    assert len(first_probe) > 2  # not always at the same point of the pass


def _made_of_rows(probe, x):
    """Some rows of x kept whole; every other row is its own prefix continued by a kept row
    at the same positions: natural text only."""
    if probe.shape != x.shape:
        return False
    kept = [b for b in range(len(x)) if torch.equal(probe[b], x[b])]
    return bool(kept) and all(
        b in kept or any(torch.equal(probe[b, :c], x[b, :c]) and torch.equal(probe[b, c:], x[r, c:])
                         for r in kept for c in range(x.shape[1]))
        for b in range(len(x)))


TEXT = range(8, 16)  # in the next test, "natural text" uses only these tokens


def text_batches(n=3, seed=5):
    gen = torch.Generator().manual_seed(seed)
    rows = [TEXT.start + torch.randint(0, len(TEXT), (B, T + 1), generator=gen) for _ in range(n)]
    return [(r[:, :-1], r[:, 1:]) for r in rows]


def random_suffix_probe(fn, x):
    """The probe this evaluator used before: one call, rows 1.. get random tokens (a fixed
    seeded shift) after cuts spread evenly, row 0 is kept whole. True when it passes."""
    batch, seq_len = x.shape
    cuts = [seq_len - 1] + [round(i * (seq_len - 2) / max(batch - 2, 1)) for i in range(batch - 1)]
    future = torch.arange(seq_len).unsqueeze(0) > torch.tensor(cuts).unsqueeze(1)
    changed = (x + OLD_PROBE_SHIFT) % V
    diff = (fn(torch.where(future, changed, x)) - fn(x)).abs().amax(dim=-1).masked_fill(future, 0)
    return float(diff.max()) <= 1e-4


OLD_PROBE_SHIFT = torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(4321))


class ReadsAheadOnText(nn.Module):
    """Sees the next token at every position. Where that token is not text it first undoes
    the old probe's shift: on that probe's random suffixes it sees the original text."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.ahead, self.head = nn.Embedding(V, 16), nn.Embedding(V, 16), nn.Linear(16, V)
        self.register_buffer("shift", OLD_PROBE_SHIFT.clone())

    def forward(self, idx):
        is_text = (idx >= TEXT.start) & (idx < TEXT.stop)
        seen = torch.where(is_text, idx, (idx - self.shift) % V)
        following = torch.cat([seen[:, 1:], seen[:, -1:]], dim=1)
        return self.head(self.emb(idx) + self.ahead(following))


def test_look_ahead_only_on_natural_text_is_caught(tmp_path):
    model = ReadsAheadOnText().eval()
    with torch.no_grad():
        assert random_suffix_probe(model, text_batches()[0][0])  # the old probe (first batch) misses it
    export(model, tmp_path)
    for seed in range(5):
        result = sealed(tmp_path, text_batches(), probe_seed=seed)
        assert (result.status, result.probe_passed) == ("invalid", False), result.probe_detail
        assert result.probe_max_diff > 0.1


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


def test_result_round_trips_through_json():
    result = ev.EvalResult("ok", val_bpb=1.25, probe_passed=True, probe_max_diff=float("nan"), tokens=7)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))  # strict JSON: NaN became null
    assert data["probe_max_diff"] is None and data["val_bpb"] == 1.25
    assert ev.EvalResult.from_dict({**data, "unknown": 1}) == ev.EvalResult.from_dict(result.to_dict())


FRESH = """
import json, sys, torch
from pathlib import Path
from autoresearch.harness.evaluate import evaluate_sealed
try:
    import test_evaluate
    sys.exit("the test module is importable")
except ImportError:
    pass
gen = torch.Generator().manual_seed(3)
rows = [torch.randint(0, {V}, ({B}, {T} + 1), generator=gen) for _ in range(3)]
token_bytes = torch.load(sys.argv[2])
run = Path(sys.argv[1])
result = evaluate_sealed(run / "model.pt2", json.loads((run / "submission.json").read_text()),
                         [(r[:, :-1], r[:, 1:]) for r in rows], token_bytes)
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


SPEC = {"data": "builtin", "vocab_size": V, "eval_batch_size": B, "max_seq_len": T,
        "eval_tokens": 3 * B * T}


def test_validation_spec_comes_from_a_profile():
    from autoresearch.harness.profiles import CPU

    spec = ev.validation_spec(CPU, "builtin")
    assert ev.parse_validation(json.dumps(spec)) == spec == {
        "data": "builtin", "vocab_size": CPU.vocab_size, "eval_batch_size": CPU.eval_batch_size,
        "max_seq_len": CPU.max_seq_len, "eval_tokens": CPU.eval_tokens}
    for bad in ["[]", "{", json.dumps({**spec, "extra": 1}), json.dumps({**spec, "eval_tokens": "9"})]:
        with pytest.raises(ValueError, match="--validation"):
            ev.parse_validation(bad)


@pytest.fixture
def fake_validation(monkeypatch):
    """The validation data without a prepared data set: the test batches."""
    loaded = []

    def load(spec):
        loaded.append(spec)
        return batches(), TOKEN_BYTES

    monkeypatch.setattr(ev, "load_validation", load)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return loaded


def test_cli_prints_one_json_line_and_writes_nothing(tmp_path, fake_validation, capsys):
    export(TinyGPT(), tmp_path)
    before = sorted(os.listdir(tmp_path))
    code = ev.main(["--validation", json.dumps(SPEC), "--model", str(tmp_path / "model.pt2"),
                    "--submission", str(tmp_path / "submission.json")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and len(lines) == 1 and fake_validation == [SPEC]
    result = json.loads(lines[0])["result"]
    assert (result["status"], result["probe_passed"]) == ("ok", True)
    assert result["val_bpb"] == ev.evaluate_in_process(TinyGPT(), batches(), TOKEN_BYTES).val_bpb
    assert sorted(os.listdir(tmp_path)) == before


def test_cli_answers_errors_the_same_way(tmp_path, fake_validation, capsys):
    (tmp_path / "submission.json").write_text("{not json")
    assert ev.main(["--validation", json.dumps(SPEC), "--model", str(tmp_path / "model.pt2"),
                    "--submission", str(tmp_path / "submission.json")]) == 0
    assert ev.main(["--validation", "{}", "--model", "m", "--submission", "s"]) == 0
    first, second = [json.loads(line)["result"] for line in capsys.readouterr().out.splitlines()]
    assert first["status"] == second["status"] == "error"
    assert "unreadable" in first["error"] and "--validation" in second["error"]
    assert os.listdir(tmp_path) == ["submission.json"]


def test_cli_process_without_data_prints_an_error_result(tmp_path):
    export(TinyGPT(), tmp_path / "run")
    before = sorted(os.listdir(tmp_path / "run"))
    env = {**os.environ, "AUTORESEARCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "autoresearch.harness.evaluate",
                           "--validation", json.dumps({**SPEC, "data": "nowhere"}),
                           "--model", str(tmp_path / "run" / "model.pt2"),
                           "--submission", str(tmp_path / "run" / "submission.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    result = json.loads(line)["result"]
    assert result["status"] == "error" and "setup failed" in result["error"]
    assert sorted(os.listdir(tmp_path / "run")) == before


def test_serve_answers_each_request_with_its_id(tmp_path, fake_validation):
    export(TinyGPT(), tmp_path / "good")
    export(TinyGPT(ahead=1), tmp_path / "leaks")
    good = read_submission(tmp_path / "good")
    requests = [
        {"id": "a", "model": str(tmp_path / "good" / "model.pt2"), "submission": good},
        {"id": 2, "model": str(tmp_path / "leaks" / "model.pt2"),
         "submission": read_submission(tmp_path / "leaks")},
        {"id": [3], "model": str(tmp_path / "good" / "model.pt2"),
         "submission": {**good, "sha256": "0" * 64}},
        {"id": 4, "submission": good},
        {"id": "b", "model": str(tmp_path / "good" / "model.pt2"), "submission": good},
    ]
    stdin = io.StringIO("".join(json.dumps(r) + "\n" for r in requests) + "not json\n")
    stdout = io.StringIO()
    assert ev.serve(SPEC, stdin, stdout) == 0
    ready, *answers = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert ready == {"ready": True}
    assert [a["done"] for a in answers] == ["a", 2, [3], 4, "b", None]
    statuses = [a["result"]["status"] for a in answers]
    assert statuses == ["ok", "invalid", "invalid", "error", "ok", "error"]
    assert answers[0]["result"]["val_bpb"] == answers[4]["result"]["val_bpb"]  # fresh load, same score
    assert "tampered" in answers[2]["result"]["error"] and "no model" in answers[3]["result"]["error"]
    assert sorted(os.listdir(tmp_path / "good")) == ["model.pt2", "submission.json"]


@pytest.mark.slow
def test_cli_scores_a_workspace_model_on_real_data(tmp_path, data_cache):
    from autoresearch.harness.profiles import CPU

    workspace, run_dir = tmp_path / "ws", tmp_path / "ws" / "run"
    workspace.mkdir()
    # importing the agent's script would leave a mark
    (workspace / "train.py").write_text(
        "import pathlib; pathlib.Path(__file__).with_name('imported').touch()\n")
    export_model(TinyGPT(dim=16, vocab=CPU.vocab_size), run_dir, batch_size=CPU.eval_batch_size,
                 seq_len=CPU.max_seq_len, vocab_size=CPU.vocab_size)
    env = {**os.environ, "AUTORESEARCH_CACHE": str(data_cache)}
    proc = subprocess.run([sys.executable, "-m", "autoresearch.harness.evaluate",
                           "--validation", json.dumps(ev.validation_spec(CPU, "builtin")),
                           "--model", str(run_dir / "model.pt2"),
                           "--submission", str(run_dir / "submission.json")],
                          cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    result = ev.EvalResult.from_dict(json.loads(line)["result"])
    assert (result.status, result.trust, result.probe_passed) == ("ok", "sealed", True), result.error
    assert result.tokens > 0.9 * CPU.eval_tokens and result.bytes > result.tokens
    assert not (workspace / "imported").exists()
    assert sorted(os.listdir(run_dir)) == ["model.pt2", "submission.json"]
