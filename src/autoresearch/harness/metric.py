"""The official metric (validation bits per byte) and the causality probe; no I/O.

Both take a `logits_fn(x) -> logits [B, T, V]`, so the same code scores a live model
and a program loaded from a sealed file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

LogitsFn = Callable[[torch.Tensor], torch.Tensor]

# Changing log-softmax by d needs a logit change of at least d/2, so a program whose
# prefix logits move by at most PROBE_ATOL when the future changes can gain at most
# 2 * PROBE_ATOL nats per token from looking ahead. A causal program moves them by
# exactly zero (same kernels, same prefix), in fp32 and under bf16 autocast alike.
PROBE_ATOL = 1e-4
PROBE_SEED = 4321


@dataclass(frozen=True)
class Metric:
    """A metric's name and direction, so that callers never compare raw numbers."""

    name: str = "val_bpb"
    lower_is_better: bool = True

    def better(self, a: float | None, b: float | None) -> bool:
        """True when `a` is strictly better than `b`; a missing or NaN value never is."""
        if not _usable(a):
            return False
        if not _usable(b):
            return True
        return a < b if self.lower_is_better else a > b

    def improvement(self, old: float, new: float) -> float:
        """How much better `new` is than `old`; positive means better."""
        return old - new if self.lower_is_better else new - old


VAL_BPB = Metric()


def _usable(value) -> bool:
    return value is not None and math.isfinite(value)


@dataclass(frozen=True)
class BpbResult:
    val_bpb: float
    total_nats: float
    total_bytes: int
    tokens: int  # scored targets (special tokens excluded)


@dataclass(frozen=True)
class ProbeResult:
    passed: bool
    max_diff: float
    detail: str


def bits_per_byte(
    logits_fn: LogitsFn,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    token_bytes,
) -> BpbResult:
    """Cross-entropy of every target in nats over ln 2 x the targets' UTF-8 bytes.

    Targets with 0 bytes (special tokens) count in neither sum, which makes the
    number comparable across vocabularies.
    """
    token_bytes = torch.as_tensor(token_bytes, dtype=torch.int64)
    vocab = token_bytes.numel()
    total_nats, total_bytes, tokens = 0.0, 0, 0  # Python floats are float64
    for x, y in batches:
        logits = logits_fn(x)
        if logits.dim() != 3 or logits.shape[:2] != y.shape or logits.shape[-1] < vocab:
            raise ValueError(f"logits of shape {list(logits.shape)} do not fit targets "
                             f"{list(y.shape)} and a vocabulary of {vocab}")
        if int(y.min()) < 0 or int(y.max()) >= vocab:
            raise ValueError(f"target ids must lie in [0, {vocab})")
        # Entries past the vocabulary (padding for fast matmuls) can never be targets.
        logits = logits[..., :vocab].float()
        y = y.to(logits.device)
        nats = F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1), reduction="none")
        nbytes = token_bytes.to(logits.device)[y.reshape(-1)]
        scored = nbytes > 0
        total_nats += nats[scored].double().sum().item()
        total_bytes += int(nbytes.sum().item())
        tokens += int(scored.sum().item())
    if total_bytes == 0:
        raise ValueError("no target with a non-zero byte length: nothing to score")
    return BpbResult(total_nats / (math.log(2) * total_bytes), total_nats, total_bytes, tokens)


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-position max |a - b| over the vocabulary; equal infinities count as equal."""
    diff = torch.where(a == b, torch.zeros_like(a), (a - b).abs())
    return diff.amax(dim=-1)


def causality_probe(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    *,
    positions: Iterable[int] | None = None,
    atol: float = PROBE_ATOL,
    vocab_size: int | None = None,
    reference: torch.Tensor | None = None,
) -> ProbeResult:
    """Check that logits at positions <= t do not depend on tokens after t.

    One extra forward pass: row b of a copy of `x` keeps its tokens up to a cut t_b and
    gets different tokens after it, and its logits up to t_b must not move. The cuts
    spread over the sequence (or cycle through `positions`). With more than one row,
    row 0 keeps all its tokens and must not move at all: rows of a batch may be
    consecutive text, so a row must not see its neighbours. A leak confined to
    positions that no cut hits goes unseen; a look-ahead in the attention pattern
    shows at every cut. `reference` is logits_fn(x) when the caller already has it.
    """
    batch, seq_len = x.shape
    if seq_len < 2:
        raise ValueError("the causality probe needs sequences of at least 2 tokens")
    base = logits_fn(x) if reference is None else reference
    vocab = vocab_size or base.shape[-1]
    probed_rows = range(1, batch) if batch > 1 else range(1)
    if positions is None:
        n = len(probed_rows)
        wanted = [round(i * (seq_len - 2) / max(n - 1, 1)) for i in range(n)]
    else:
        wanted = [min(max(int(t), 0), seq_len - 2) for t in positions] or [0]
    cuts = [seq_len - 1] * batch  # seq_len - 1: the row is left as it is
    for i, b in enumerate(probed_rows):
        cuts[b] = wanted[i % len(wanted)]
    gen = torch.Generator().manual_seed(PROBE_SEED)
    shift = torch.randint(1, vocab, x.shape, generator=gen).to(x.device)
    changed = (x + shift) % vocab  # differs from x at every position
    cut = torch.tensor(cuts, device=x.device).unsqueeze(1)
    future = torch.arange(seq_len, device=x.device).unsqueeze(0) > cut
    diff = _max_abs_diff(logits_fn(torch.where(future, changed, x)), base).masked_fill(future, 0.0)
    worst = float(diff.max())
    row = int(diff.amax(dim=1).argmax())
    detail = (f"tokens changed after positions {sorted(set(cuts[b] for b in probed_rows))}"
              f"{' (row 0 kept whole)' if batch > 1 else ''}: earlier logits moved by up to "
              f"{worst:.3g} (row {row})")
    passed = not math.isnan(worst) and worst <= atol
    return ProbeResult(passed, worst, ("passed: " if passed else f"FAILED (atol {atol:g}): ") + detail)
