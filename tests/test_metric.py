import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import random

from autoresearch.harness.metric import (
    PROBE_CALLS,
    VAL_BPB,
    Metric,
    bits_per_byte,
    causality_probe,
    plan_probe,
    probe_calls,
    probe_input,
    probed_bits_per_byte,
)

# token 0 is a special token (0 bytes), token 2 is a 3-byte token
TOKEN_BYTES = torch.tensor([0, 1, 3, 2], dtype=torch.int32)


def table_fn(table):
    """logits_fn that returns fixed logits, whatever the input."""
    return lambda x: table


def test_bpb_matches_hand_computation():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0],           # target 1: p = 1/4
                            [0.0, 0.0, math.log(2), 0.0],   # target 2: p = 2/5
                            [-100.0, 0.0, 0.0, 0.0]]])      # target 0: special, left out
    y = torch.tensor([[1, 2, 0]])
    result = bits_per_byte(table_fn(logits), [(y, y)], TOKEN_BYTES)
    assert result.total_bytes == 1 + 3
    assert result.tokens == 2
    assert result.total_nats == pytest.approx(math.log(4) + math.log(2.5), rel=1e-6)
    assert result.val_bpb == pytest.approx((2 + math.log2(2.5)) / 4, rel=1e-6)


def test_bpb_sums_over_batches_instead_of_averaging_them():
    uniform = torch.zeros(1, 2, 4)
    batches = [(None, torch.tensor([[1, 1]])), (None, torch.tensor([[2, 2]]))]
    result = bits_per_byte(table_fn(uniform), batches, TOKEN_BYTES)
    # four targets at 2 bits each over 1 + 1 + 3 + 3 bytes
    assert result.val_bpb == pytest.approx(8 / 8)
    assert result.tokens == 4


def test_bpb_ignores_padded_vocabulary_columns():
    logits = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0))
    padded = torch.cat([logits, torch.full((2, 3, 2), 5.0)], dim=-1)
    y = torch.tensor([[1, 2, 3], [3, 2, 1]])
    plain = bits_per_byte(table_fn(logits), [(y, y)], TOKEN_BYTES)
    assert bits_per_byte(table_fn(padded), [(y, y)], TOKEN_BYTES).val_bpb == pytest.approx(plain.val_bpb)


def test_bpb_rejects_bad_shapes_and_targets():
    y = torch.tensor([[1, 2]])
    with pytest.raises(ValueError, match="do not fit"):
        bits_per_byte(table_fn(torch.zeros(1, 3, 4)), [(y, y)], TOKEN_BYTES)
    with pytest.raises(ValueError, match="target ids"):
        bits_per_byte(table_fn(torch.zeros(1, 2, 4)), [(y, torch.tensor([[1, 4]]))], TOKEN_BYTES)
    with pytest.raises(ValueError, match="nothing to score"):
        bits_per_byte(table_fn(torch.zeros(1, 2, 4)), [(y, torch.zeros(1, 2, dtype=torch.long))], TOKEN_BYTES)


class Attend(nn.Module):
    """One attention layer; `ahead` > 0 lets position i see tokens up to i + ahead,
    `rows` lets each row add the next row's hidden state."""

    def __init__(self, vocab=64, dim=32, ahead=0, rows=False):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.qkv, self.head = nn.Embedding(vocab, dim), nn.Linear(dim, 3 * dim), nn.Linear(dim, vocab)
        self.ahead, self.rows = ahead, rows

    def forward(self, idx):
        h = self.emb(idx)
        if self.rows:
            h = h + h.roll(-1, dims=0)
        q, k, v = self.qkv(h).unsqueeze(1).chunk(3, dim=-1)
        t = idx.shape[1]
        mask = torch.ones(t, t, dtype=torch.bool, device=idx.device).tril(self.ahead)
        return self.head(h + F.scaled_dot_product_attention(q, k, v, attn_mask=mask).squeeze(1)).float()


def autocast_fn(model, dtype):
    def fn(x):
        if dtype is None:
            return model(x)
        with torch.autocast("cpu", dtype=dtype):
            return model(x)
    return fn


X = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_probe_passes_a_causal_model_exactly(dtype):
    with torch.no_grad():
        result = causality_probe(autocast_fn(Attend(), dtype), X)
    assert result.passed, result.detail
    assert result.max_diff == 0.0


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_probe_rejects_a_model_that_sees_one_future_token(dtype):
    with torch.no_grad():
        result = causality_probe(autocast_fn(Attend(ahead=1), dtype), X)
    assert not result.passed
    assert result.max_diff > 1e-3
    assert "FAILED" in result.detail


def test_probe_rejects_a_model_that_reads_other_rows():
    with torch.no_grad():
        results = [causality_probe(Attend(rows=True), X, seed=seed) for seed in range(5)]
    assert not any(r.passed for r in results)
    assert any("reads other rows" in r.detail for r in results)


class FirstTokenOfNextRow(nn.Module):
    """Causal within a row, but every position also sees the next row's first token: a
    probe that never changes position 0 cannot see it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(64, 16), nn.Linear(16, 64)

    def forward(self, idx):
        h = self.emb(idx)
        return self.head(h + h[:, :1].roll(-1, dims=0))


def test_probe_replaces_whole_rows_too():
    with torch.no_grad():
        for seed in range(5):
            assert not causality_probe(FirstTokenOfNextRow(), X, seed=seed).passed


def test_probe_inputs_are_validation_rows_that_hide_the_original_future():
    batch, seq_len = 8, 16
    x = torch.arange(batch * seq_len).view(batch, seq_len)  # every token unique: easy to trace
    plan = plan_probe(batch, seq_len, random.Random(0), calls=3)
    cuts = sorted(t for call in plan for t in call.cuts if t < seq_len - 1)
    assert len(cuts) == 3 * 6 and cuts.count(-1) >= 3  # two kept rows, one replaced whole, per pass
    assert all(-1 <= t <= seq_len - 2 for t in cuts)
    for call in plan:
        kept = call.kept(seq_len)
        probe = probe_input(x, call)
        assert len(kept) == 2 and all(torch.equal(probe[b], x[b]) for b in kept)
        for b, t in enumerate(call.cuts):
            if b in kept:
                continue
            assert call.donors[b] in kept
            assert torch.equal(probe[b, :t + 1], x[b, :t + 1])
            assert torch.equal(probe[b, t + 1:], x[call.donors[b], t + 1:])
            assert not torch.isin(x[b, t + 1:], probe).any()  # its own future is nowhere in the input
    with pytest.raises(ValueError, match="at least 2 rows"):
        plan_probe(1, seq_len, random.Random(0))


def test_probed_scoring_runs_the_probe_among_the_scoring_calls():
    model, calls = Attend(), []
    data = [(X + i, (X + i + 1) % 64) for i in range(5)]

    def fn(x):
        calls.append(x)
        return model(x % 64)

    with torch.no_grad():
        bpb, probe = probed_bits_per_byte(fn, data, torch.ones(64, dtype=torch.int32), seed=3)
        plain = bits_per_byte(lambda x: model(x % 64), data, torch.ones(64, dtype=torch.int32))
    assert probe.passed and probe.max_diff == 0.0 and bpb == plain
    assert len(calls) == len(data) + probe_calls(len(data))


class LeakExcept(nn.Module):
    """Looks one token ahead at every position except `spared`: where a predictable probe cuts."""

    def __init__(self, spared):
        super().__init__()
        self.spared, self.emb = set(spared), nn.Embedding(64, 64)

    def forward(self, idx):
        h = self.emb(idx).clone()
        for t in range(idx.shape[1] - 1):
            if t not in self.spared:
                h[:, t] += self.emb(idx[:, t + 1])
        return h


def test_a_look_ahead_that_spares_evenly_spaced_positions_is_caught():
    """Evenly spaced cuts are the same in every evaluation: a program can look ahead everywhere
    else. Drawn cuts catch it (every seed tried), and so does the default, unseeded probe."""
    x = torch.randint(0, 64, (8, 64), generator=torch.Generator().manual_seed(2))
    batch, seq_len = x.shape
    count = PROBE_CALLS * (batch - max(1, batch // 4))
    spaced = {round(-1 + i * (seq_len - 1) / (count - 1)) for i in range(count)}
    model = LeakExcept(spaced)
    data = [(x, (x + 1) % 64)] * 8
    with torch.no_grad():
        for seed in range(5):
            assert not probed_bits_per_byte(model, data, torch.ones(64, dtype=torch.int32), seed=seed)[1].passed
        assert not probed_bits_per_byte(model, data, torch.ones(64, dtype=torch.int32))[1].passed


def test_more_scoring_batches_get_more_probe_passes():
    assert probe_calls(1) == PROBE_CALLS and probe_calls(6) == 3 and probe_calls(1000) == 8


class LeakAt(nn.Module):
    """Causal except that position `at` also sees the token right after it."""

    def __init__(self, at):
        super().__init__()
        self.at, self.emb = at, nn.Embedding(64, 64)

    def forward(self, idx):
        h = self.emb(idx)
        h[:, self.at] += h[:, self.at + 1]
        return h


def test_probe_cuts_at_the_given_positions():
    with torch.no_grad():
        assert causality_probe(LeakAt(10), X, positions=[3]).passed
        assert not causality_probe(LeakAt(10), X, positions=[3, 10]).passed


def test_probe_reuses_a_given_reference():
    calls = []
    model = Attend()

    def fn(x):
        calls.append(x)
        return model(x)

    with torch.no_grad():
        result = causality_probe(fn, X, reference=model(X))
    assert result.passed and len(calls) == PROBE_CALLS


def test_probe_fails_on_nan_logits():
    nan = torch.full((4, 16, 64), float("nan"))
    assert not causality_probe(table_fn(nan), X).passed


def test_metric_direction():
    assert VAL_BPB.better(1.0, 1.1) and not VAL_BPB.better(1.1, 1.0)
    assert not VAL_BPB.better(1.0, 1.0)
    assert VAL_BPB.better(1.5, None) and not VAL_BPB.better(None, 1.5)
    assert not VAL_BPB.better(float("nan"), 2.0)
    assert VAL_BPB.improvement(1.2, 1.0) == pytest.approx(0.2)
    accuracy = Metric("accuracy", lower_is_better=False)
    assert accuracy.better(0.9, 0.8) and accuracy.improvement(0.8, 0.9) == pytest.approx(0.1)
