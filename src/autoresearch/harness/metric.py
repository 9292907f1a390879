"""The official metric (validation bits per byte) and the causality probe; no I/O.

Both take a `logits_fn(x) -> logits [B, T, V]`, so the same code scores a live model
and a program loaded from a sealed file.

The probe compares the logits a program gives for a validation batch with those it
gives when the batch's future tokens are swapped for other validation text: a causal
program's earlier logits do not move. Probe inputs are made of real validation rows
only, and the probe calls are slipped in among the scoring calls at random, so a
program (which graphcheck keeps free of state) has nothing to tell them apart by.
"""
from __future__ import annotations

import math
import random
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
PROBE_CALLS = 2  # extra forward passes per evaluation, each testing many cut positions ...
MAX_PROBE_CALLS = 8  # ... one for every two scoring batches, up to this many


def probe_calls(scoring_batches: int) -> int:
    """Probe passes for an evaluation of this many batches: more data, more positions tested."""
    return min(MAX_PROBE_CALLS, max(PROBE_CALLS, scoring_batches // 2))


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



@dataclass(frozen=True)
class ProbeCall:
    """One probe pass: row b keeps its tokens up to cuts[b] and continues with the tokens
    of row donors[b] at the same positions. A cut of seq_len - 1 keeps the row whole;
    a cut of -1 replaces it all."""

    cuts: tuple[int, ...]
    donors: tuple[int, ...]

    def kept(self, seq_len: int) -> list[int]:
        return [b for b, t in enumerate(self.cuts) if t >= seq_len - 1]


def plan_probe(batch: int, seq_len: int, rng: random.Random, *, calls: int = PROBE_CALLS,
               positions: Iterable[int] | None = None) -> list[ProbeCall]:
    """Which rows each probe pass keeps whole and where the others are cut.

    A quarter of the rows (at least one) stays whole in each pass and donates its text
    to the others: a row's own future then appears nowhere in the probe input, so no
    program can rebuild the original batch from it, and a kept row whose logits move
    reads other rows. The cuts are drawn uniformly from [-1, seq_len - 2] (or cycle
    through `positions`) and go to random rows.
    """
    if batch < 2 or seq_len < 2:
        raise ValueError(f"the causality probe needs batches of at least 2 rows of 2 tokens, got "
                         f"[{batch}, {seq_len}]")
    kept_per_call = max(1, batch // 4)
    count = max(calls, 1) * (batch - kept_per_call)
    if positions is None:  # drawn, not spaced: evenly spaced cuts are the same every time, and a
        # program that looks ahead everywhere else would never be caught. One row per pass is
        # replaced whole (cut -1): a row that reads another row's first tokens is seen too.
        per_call = batch - kept_per_call
        cuts = [-1 if i % per_call == 0 else rng.randint(-1, seq_len - 2) for i in range(count)]
    else:
        wanted = [min(max(int(t), -1), seq_len - 2) for t in positions] or [0]
        cuts = [wanted[i % len(wanted)] for i in range(count)]
    if positions is not None:
        rng.shuffle(cuts)
    plan = []
    for _ in range(max(calls, 1)):
        rows = rng.sample(range(batch), batch)
        kept, spliced = rows[:kept_per_call], rows[kept_per_call:]
        row_cuts, donors = [seq_len - 1] * batch, list(range(batch))
        for b in spliced:  # rows are in random order, so which row is replaced whole is random too
            row_cuts[b], donors[b] = cuts.pop(0), rng.choice(kept)
        plan.append(ProbeCall(tuple(row_cuts), tuple(donors)))
    return plan


def _future_mask(call: ProbeCall, x: torch.Tensor) -> torch.Tensor:
    cut = torch.tensor(call.cuts, device=x.device).unsqueeze(1)
    return torch.arange(x.shape[1], device=x.device).unsqueeze(0) > cut


def probe_input(x: torch.Tensor, call: ProbeCall) -> torch.Tensor:
    """x with each row's tokens after its cut taken from its donor row: natural text."""
    donors = torch.tensor(call.donors, device=x.device)
    return torch.where(_future_mask(call, x), x[donors], x)


def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-position max |a - b| over the vocabulary; equal infinities count as equal."""
    diff = torch.where(a == b, torch.zeros_like(a), (a - b).abs())
    return diff.amax(dim=-1)


class CausalityProbe:
    """The probe passes for one validation batch and what they found."""

    def __init__(self, x: torch.Tensor, plan: list[ProbeCall], atol: float = PROBE_ATOL):
        self.x = x.clone()  # the probe inputs are built from the batch as it was given
        self.plan = plan
        self.atol = atol
        self.found: list[tuple[float, int, int]] = []  # (max diff, pass, row) per pass

    def run(self, logits_fn: LogitsFn, index: int, reference: torch.Tensor) -> None:
        """Pass `index` of the plan; `reference` is logits_fn(x) from the scoring pass."""
        call = self.plan[index]
        logits = logits_fn(probe_input(self.x, call))
        if logits.shape != reference.shape:
            raise ValueError(f"the probe pass gave logits of shape {list(logits.shape)}, the scoring "
                             f"pass {list(reference.shape)}")
        future = _future_mask(call, self.x).to(logits.device)
        diff = _max_abs_diff(logits, reference).masked_fill(future, 0.0).amax(dim=1)
        if torch.isnan(diff).any():
            self.found.append((math.nan, index, int(torch.isnan(diff).int().argmax())))
        else:
            self.found.append((float(diff.max()), index, int(diff.argmax())))

    def result(self) -> ProbeResult:
        if len(self.found) != len(self.plan):
            raise RuntimeError(f"the probe ran {len(self.found)} of its {len(self.plan)} passes")
        nan = [f for f in self.found if math.isnan(f[0])]
        worst, index, row = nan[0] if nan else max(self.found)
        seq_len = self.x.shape[1]
        cuts = sorted({t for call in self.plan for t in call.cuts if t < seq_len - 1})
        kept = len(self.plan[0].kept(seq_len))
        where = f"pass {index}, row {row}"
        if row in self.plan[index].kept(seq_len):
            where += ", a row kept whole: it reads other rows"
        detail = (f"{len(self.plan)} pass(es), rows continued with other rows' text after positions "
                  f"{cuts}, {kept} row(s) per pass kept whole: earlier logits moved by up to "
                  f"{worst:.3g} ({where})")
        passed = not math.isnan(worst) and worst <= self.atol
        verdict = "passed: " if passed else f"FAILED (atol {self.atol:g}): "
        return ProbeResult(passed, worst, verdict + detail)


def causality_probe(
    logits_fn: LogitsFn,
    x: torch.Tensor,
    *,
    calls: int = PROBE_CALLS,
    positions: Iterable[int] | None = None,
    atol: float = PROBE_ATOL,
    reference: torch.Tensor | None = None,
    seed: int | None = None,
) -> ProbeResult:
    """Check that logits at positions <= t of a row depend on nothing but its tokens up to t.

    Runs the probe passes for batch `x` one after another; `reference` is logits_fn(x)
    when the caller already has it. `seed` fixes the plan (default: unpredictable).
    """
    rng = random.SystemRandom() if seed is None else random.Random(seed)
    probe = CausalityProbe(x, plan_probe(*x.shape, rng, calls=calls, positions=positions), atol)
    reference = logits_fn(x) if reference is None else reference
    for index in range(len(probe.plan)):
        probe.run(logits_fn, index, reference)
    return probe.result()


def probed_bits_per_byte(
    logits_fn: LogitsFn,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    token_bytes,
    *,
    calls: int | None = None,
    atol: float = PROBE_ATOL,
    seed: int | None = None,
) -> tuple[BpbResult, ProbeResult]:
    """bits_per_byte over `batches` with the causality probe slipped into the scoring pass.

    The probe takes a random batch, and its passes run at random points after that
    batch was scored, through the same logits_fn; their reference is the batch's own
    scoring logits. `seed` fixes the choices (default: unpredictable).
    """
    if not batches:
        raise ValueError("no validation batches")
    # unpredictable by default: the operating system's randomness, no state a program could know
    rng = random.SystemRandom() if seed is None else random.Random(seed)
    calls = calls if calls is not None else probe_calls(len(batches))
    source = rng.randrange(len(batches))
    x = batches[source][0]
    probe = CausalityProbe(x, plan_probe(*x.shape, rng, calls=calls), atol)
    after = sorted(rng.randint(source, len(batches) - 1) for _ in probe.plan)
    calls_made = 0
    reference = None

    def scoring(batch_x: torch.Tensor) -> torch.Tensor:
        nonlocal calls_made, reference
        index, calls_made = calls_made, calls_made + 1
        logits = logits_fn(batch_x)
        if index == source:
            reference = logits
        for k, slot in enumerate(after):
            if slot == index:
                probe.run(logits_fn, k, reference)
        if index == after[-1]:
            reference = None  # not held longer than needed: it can be gigabytes
        return logits

    bpb = bits_per_byte(scoring, batches, token_bytes)
    return bpb, probe.result()
