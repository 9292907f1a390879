"""The GPT template's model and optimizer, exercised without the harness or a data set."""
import ast
import importlib.util
from pathlib import Path

import pytest
import torch

import autoresearch.templates

TEMPLATE = Path(autoresearch.templates.__file__).parent / "gpt" / "train.py"
# the cpu profile's values of the template constants, at a small vocabulary and context
CPU_CONSTANTS = dict(DEPTH=4, ASPECT_RATIO=32, HEAD_DIM=64, DEVICE_BATCH_SIZE=16, TOTAL_BATCH_SIZE=4096)
VOCAB, SEQ_LEN = 512, 64


def load_template(**constants):
    """Import train.py as a fresh module (importing must not start training)."""
    spec = importlib.util.spec_from_file_location("gpt_template", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, value in constants.items():
        assert hasattr(module, name), name
        setattr(module, name, value)
    return module


@pytest.fixture(scope="module")
def tpl():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return load_template(**CPU_CONSTANTS)


def make_model(tpl, vocab=VOCAB, seq_len=SEQ_LEN, seed=0, randomize=False):
    torch.manual_seed(seed)
    model = tpl.GPT(tpl.config_from_constants(vocab, seq_len))
    model.init_weights()
    if randomize:  # zero-initialised projections would hide any mixing between positions
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model


def test_constants_are_simple_literals():
    tree = ast.parse(TEMPLATE.read_text())
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name.isupper():
                constants[name] = node.value
    expected = {
        "DEPTH", "ASPECT_RATIO", "HEAD_DIM", "WINDOW_PATTERN", "TOTAL_BATCH_SIZE", "DEVICE_BATCH_SIZE",
        "EMBEDDING_LR", "UNEMBEDDING_LR", "MATRIX_LR", "SCALAR_LR", "WEIGHT_DECAY", "ADAM_BETAS",
        "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC",
    }
    assert expected <= constants.keys()
    for name, value in constants.items():  # tools read and rewrite them with ast.literal_eval
        ast.literal_eval(value)


def test_gpu_baseline_shape(tpl):
    base = load_template()
    config = base.config_from_constants(8192, 2048)
    assert (config.n_layer, config.n_embd, config.n_head) == (8, 512, 4)
    model = base.GPT(config)
    assert 49e6 < model.num_params() < 52e6
    assert model.windows == [1024, 1024, 1024, 2048, 1024, 1024, 1024, 2048]
    assert sorted(int(k) for k in model.value_embeds) == [1, 3, 5, 7]


def test_cpu_profile_shape(tpl):
    model = make_model(tpl, vocab=4096, seq_len=256)
    assert (model.config.n_embd, model.config.n_head) == (128, 2)
    assert model.windows == [128, 128, 128, 256]
    assert sorted(int(k) for k in model.value_embeds) == [1, 3]


def test_forward_shapes_and_dtypes(tpl):
    model = make_model(tpl)
    idx = torch.randint(0, VOCAB, (2, SEQ_LEN))
    logits = model(idx)
    assert logits.shape == (2, SEQ_LEN, VOCAB)
    assert logits.dtype == torch.float32
    assert logits.abs().max() <= tpl.LOGIT_SOFTCAP
    loss = model(idx, idx)
    assert loss.shape == () and loss.dtype == torch.float32
    # the head starts tiny, so the first loss is that of a uniform guess
    assert abs(loss.item() - torch.log(torch.tensor(float(VOCAB))).item()) < 0.05


def test_forward_under_bf16_autocast(tpl):
    model = make_model(tpl, randomize=True)
    idx = torch.randint(0, VOCAB, (2, SEQ_LEN))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(idx)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_model_is_causal(tpl):
    model = make_model(tpl, randomize=True).eval()
    idx = torch.randint(0, VOCAB, (1, SEQ_LEN))
    t = 40  # beyond the short window (32) of the S layers
    changed = idx.clone()
    changed[:, t + 1:] = torch.randint(0, VOCAB, (1, SEQ_LEN - t - 1))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


def test_sliding_window_limits_attention(tpl):
    torch.manual_seed(0)
    B, T, H, D, window, t = 1, 32, 2, 8, 5, 20
    q, k, v = (torch.randn(B, T, H, D) for _ in range(3))
    y = tpl.attend(q, k, v, window)
    k2, v2 = k.clone(), v.clone()
    k2[:, : t - window] = torch.randn_like(k2[:, : t - window])  # outside position t's window
    v2[:, : t - window] = torch.randn_like(v2[:, : t - window])
    torch.testing.assert_close(tpl.attend(q, k2, v2, window)[:, t], y[:, t])
    k2[:, t - window] += 1.0  # the oldest key inside the window does matter
    assert not torch.allclose(tpl.attend(q, k2, v2, window)[:, t], y[:, t])


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (3, 96, 96)])
def test_orthogonalize_is_near_orthogonal(tpl, shape):
    torch.manual_seed(0)
    G = torch.randn(shape)
    X = tpl.orthogonalize(G).float()
    assert X.shape == G.shape
    s = torch.linalg.svdvals(X)
    # Polar Express trades exactness for speed: singular values land near 1, not on it
    assert s.min() > 0.5 and s.max() < 1.3, (s.min(), s.max())
    assert abs(s.mean().item() - 1.0) < 0.15


def test_optimizer_groups_cover_every_parameter_once(tpl):
    model = make_model(tpl)
    adamw, muon = tpl.build_optimizers(model)
    seen = [id(p) for opt in (adamw, muon) for g in opt.param_groups for p in g["params"]]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.parameters()}
    for group in muon.param_groups:  # Muon groups hold 2-D block matrices of one shape
        assert len({tuple(p.shape) for p in group["params"]}) == 1
        assert all(p.ndim == 2 for p in group["params"])
    block_params = {id(p) for p in model.blocks.parameters()}
    assert {id(p) for g in muon.param_groups for p in g["params"]} == block_params


def test_lr_schedule(tpl):
    assert tpl.lr_multiplier(0.0) == 1.0 and tpl.lr_multiplier(0.5) == 1.0
    assert tpl.lr_multiplier(0.75) == pytest.approx(0.5)
    assert tpl.lr_multiplier(1.0) == pytest.approx(tpl.FINAL_LR_FRAC)
    assert tpl.muon_momentum(0) == pytest.approx(0.85) and tpl.muon_momentum(300) == pytest.approx(0.95)


def test_loss_decreases_on_a_repeated_batch(tpl):
    model = make_model(tpl)
    adamw, muon = tpl.build_optimizers(model)
    torch.manual_seed(1)
    x = torch.randint(0, VOCAB, (2, SEQ_LEN // 2))
    y = torch.roll(x, -1, dims=1)
    losses = []
    for step in range(30):
        loss = model(x, y)
        loss.backward()
        for group in muon.param_groups:
            group["momentum"] = tpl.muon_momentum(step)
        adamw.step()
        muon.step()
        model.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses


def test_export_matches_eager(tpl):
    model = make_model(tpl, randomize=True).eval()

    class Logits(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, idx):
            return self.inner(idx)

    idx = torch.randint(0, VOCAB, (2, SEQ_LEN))
    program = torch.export.export(Logits(model), (idx,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(idx), model(idx))


@pytest.mark.slow
def test_main_trains_and_submits(tpl, monkeypatch):
    """The whole script against a stand-in harness: a short run ends in one submit call."""
    import sys
    import types

    api = types.ModuleType("autoresearch.harness.api")
    api.MAX_SEQ_LEN, api.TIME_BUDGET, api.VOCAB_SIZE, api.SEED = SEQ_LEN, 2.0, VOCAB, 42
    api.WARMUP_STEPS = 2
    tokenizer = types.SimpleNamespace(get_vocab_size=lambda: VOCAB, get_bos_token_id=lambda: 0)
    api.get_tokenizer = lambda: tokenizer

    def make_dataloader(tokenizer, B, T, split, device="cpu"):
        rows = torch.randint(0, 32, (B, T + 1))
        while True:
            yield rows[:, :-1], rows[:, 1:], 1

    logged, submitted = [], []
    api.make_dataloader = make_dataloader
    api.log = lambda step, **metrics: logged.append((step, metrics))
    api.submit = lambda model, **summary: submitted.append((model, summary))
    monkeypatch.setitem(sys.modules, "autoresearch.harness.api", api)
    module = load_template(**dict(CPU_CONSTANTS, DEVICE_BATCH_SIZE=4, TOTAL_BATCH_SIZE=4 * SEQ_LEN))
    module.main()

    assert len(submitted) == 1
    model, summary = submitted[0]
    assert isinstance(model, module.GPT) and not model.training
    assert summary["num_steps"] > 10 and summary["training_seconds"] >= 2.0
    assert summary["depth"] == 4
    assert [step for step, _ in logged] == list(range(summary["num_steps"]))
    assert logged[-1][1]["loss"] < logged[0][1]["loss"]
