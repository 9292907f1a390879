"""Keep or discard: the rules that judge a measured experiment, and the noise they need.

The original keeps any strictly lower val_bpb (GreedyPolicy). Two runs of the same code
on different seeds already differ by a few 1e-4, so that rule keeps noise as progress
(its last published "improvement" was a seed change). ConfirmPolicy, the default, keeps
a change only when its gain stands out from the measured noise.

The confirm rule, for a candidate measured n times (mean c) against the current best
measured n_best times (mean b), with noise sigma of a single measurement:

    gain      = b - c                                   (positive is better)
    threshold = k * sigma * sqrt(1/n + 1/n_best)        (k standard errors of b - c)
    keep      if gain > 0 and gain >= threshold
    rerun     if 0 < gain < threshold and n < max_measurements (a new seed, same code)
    discard   otherwise

Re-running shrinks the standard error, so a real small gain gets kept on its mean while
a lucky seed regresses towards the best and is discarded. Reasons quote the standard
error sigma * sqrt(1/n + 1/n_best) as "sigma".

Without a noise estimate (sigma None) the policy uses `min_sigma` (default 0.0) in its
place, and treats any positive gain as unconfirmed: it re-runs up to max_measurements,
which also gives the loop the repeated measurements that a noise estimate is made of.
With a floor of 0 a candidate still unconfirmed after those runs is kept when its mean
is strictly better, like the original rule.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field

from autoresearch.config import PolicySettings
from autoresearch.records import (
    DISCARD, INVALID, KEEP, OVER_BUDGET, PENDING, ExperimentRecord, trust_rank,
)

# statuses whose val_bpb is a trustworthy measurement of the code at that commit
MEASURED_STATUSES = (KEEP, DISCARD, PENDING)
REFUSED_STATUSES = (INVALID, OVER_BUDGET)  # a number exists but must not be used


@dataclass(frozen=True)
class Decision:
    action: str  # "keep" | "discard" | "rerun"
    reason: str


# ---------------------------------------------------------------------------------
# noise


def _is_measurement(record: ExperimentRecord) -> bool:
    value = record.val_bpb
    return (bool(record.commit) and record.status in MEASURED_STATUSES
            and value is not None and math.isfinite(value))


def measurements_of(records: list[ExperimentRecord], commit: str) -> list[float]:
    """Every usable val_bpb measured for the code at `commit` (for decide's value lists)."""
    return [r.val_bpb for r in records if r.commit == commit and _is_measurement(r)]


@dataclass
class NoiseEstimate:
    """Pooled within-group standard deviation of repeated runs of the same code.

    A group is one piece of code (a commit) measured on different seeds; differences
    inside a group are pure noise, differences between groups are not, so only the
    former are pooled: sigma^2 = sum of squared deviations from each group's mean,
    divided by (values - groups).
    """

    groups: dict = field(default_factory=dict)  # key -> list of values

    def add(self, group_key: str, value: float) -> None:
        self.groups.setdefault(group_key, []).append(float(value))

    @property
    def count(self) -> int:
        """How many values were added, in all groups."""
        return sum(len(values) for values in self.groups.values())

    @property
    def degrees_of_freedom(self) -> int:
        return self.count - len(self.groups)

    def sigma(self) -> float | None:
        """None until some group has two values."""
        if self.degrees_of_freedom < 1:
            return None
        squares = 0.0
        for values in self.groups.values():
            mean = sum(values) / len(values)
            squares += sum((v - mean) ** 2 for v in values)
        return math.sqrt(squares / self.degrees_of_freedom)

    @classmethod
    def from_records(cls, records: list[ExperimentRecord]) -> "NoiseEstimate":
        estimate = cls()
        for record in records:
            if _is_measurement(record):
                estimate.add(record.commit, record.val_bpb)
        return estimate


# ---------------------------------------------------------------------------------
# seed-only changes

_TOKEN = re.compile(
    r"""(?P<comment>\#.*)
      | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
      | (?P<number>(?:\d[\d_]*\.?[\d_]*|\.\d[\d_]*)(?:[eE][+-]?\d+)?[jJ]?)
      | (?P<name>[A-Za-z_]\w*)
      | (?P<operator>==|!=|<=|>=|:=|\*\*=?|//=?|->|[-+*/%@&|^]=|\S)
    """,
    re.VERBOSE,
)


def _tokens(line: str) -> list[tuple[str, str]]:
    """(kind, text) of each code token; comments are dropped, whitespace ignored."""
    return [(m.lastgroup, m.group()) for m in _TOKEN.finditer(line) if m.lastgroup != "comment"]


def _mentions_seed(token: tuple[str, str]) -> bool:
    return token[0] in ("name", "string") and "seed" in token[1].lower()


def _in_seed_context(tokens: list[tuple[str, str]], position: int) -> bool:
    """Is the number at `position` a seed: assigned to, passed to or named as one?"""
    # SEED = 42, or rng_seed: int = 42
    assignment = next((i for i, t in enumerate(tokens) if t == ("operator", "=")), None)
    if assignment is not None and assignment < position:
        if any(_mentions_seed(t) for t in tokens[:assignment]):
            return True
    # seed=42 as a keyword, or "seed": 42 in a dict
    if position >= 2 and tokens[position - 1][1] in ("=", ":") and _mentions_seed(tokens[position - 2]):
        return True
    # torch.manual_seed(42): the call that encloses the number
    depth = 0
    for i in range(position - 1, 0, -1):
        text = tokens[i][1]
        if text in (")", "]", "}"):
            depth += 1
        elif text in ("(", "[", "{"):
            if depth == 0:
                if text == "(" and _mentions_seed(tokens[i - 1]):
                    return True
                continue  # keep looking outwards: manual_seed(int(42))
            depth -= 1
    return False


def _lines_differ_only_in_seeds(old_line: str, new_line: str) -> bool:
    old, new = _tokens(old_line), _tokens(new_line)
    if len(old) != len(new):
        return False
    for position, (before, after) in enumerate(zip(old, new)):
        if before == after:
            continue
        if not (_seed_value(before) and _seed_value(after) and _in_seed_context(new, position)):
            return False
    return True


def _seed_value(token) -> bool:
    """A literal seed, or a name that holds one (SEED -> 137 is still only a seed change)."""
    kind, text = token[0], token[1]
    return kind == "number" or (kind == "name" and "seed" in text.lower())


def is_seed_only_change(old_text: str, new_text: str) -> bool:
    """True if the code differs, and only in the numbers given to random seeds."""
    old_lines, new_lines = old_text.splitlines(), new_text.splitlines()
    matcher = difflib.SequenceMatcher(a=old_lines, b=new_lines, autojunk=False)
    changed_code = False
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag == "equal":
            continue
        old_part, new_part = old_lines[a0:a1], new_lines[b0:b1]
        # lines that hold only comments or whitespace are not code
        old_part = [line for line in old_part if _tokens(line)]
        new_part = [line for line in new_part if _tokens(line)]
        if len(old_part) != len(new_part):
            return False  # code lines were added or removed
        for old_line, new_line in zip(old_part, new_part):
            if _tokens(old_line) == _tokens(new_line):
                continue  # a comment or spacing edit
            if not _lines_differ_only_in_seeds(old_line, new_line):
                return False
            changed_code = True
    return changed_code


# ---------------------------------------------------------------------------------
# policies


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _refusal(candidate_values, trust, status, min_trust) -> Decision | None:
    """Reasons to discard that come before any comparison of numbers."""
    if status in REFUSED_STATUSES:
        return Decision(DISCARD, f"result refused: {status}")
    if status not in MEASURED_STATUSES or not candidate_values:
        return Decision(DISCARD, f"no result: {status}")
    if trust_rank(trust) < trust_rank(min_trust):
        return Decision(DISCARD, f"trust {trust or 'none'} below required {min_trust}")
    return None


def _not_better(delta: float, best_mean: float) -> Decision:
    return Decision(DISCARD, f"{delta:+.4f}: not better than best {best_mean:.4f}")


@dataclass
class GreedyPolicy:
    """The original rule: keep iff the mean val_bpb is strictly lower than the best's."""

    min_trust: str = "self-reported"
    name: str = "greedy"

    def decide(self, candidate_values: list[float], best_values: list[float],
               sigma: float | None, *, trust: str | None, status: str,
               seed_only: bool) -> Decision:
        refused = _refusal(candidate_values, trust, status, self.min_trust)
        if refused:
            return refused
        if not best_values:
            return Decision(KEEP, "first result")
        delta = _mean(candidate_values) - _mean(best_values)
        if delta < 0:
            return Decision(KEEP, f"{delta:+.6f}: better than best {_mean(best_values):.6f}")
        return _not_better(delta, _mean(best_values))


@dataclass
class ConfirmPolicy:
    """Keep only gains of at least k standard errors; re-run the uncertain ones.

    See the module docstring for the rule.
    """

    k_sigma: float = 2.0
    min_trust: str = "sealed"
    max_measurements: int = 3  # of one candidate, the first run included
    min_sigma: float = 0.0  # floor under the noise estimate, used alone when there is none
    name: str = "confirm"

    def decide(self, candidate_values: list[float], best_values: list[float],
               sigma: float | None, *, trust: str | None, status: str,
               seed_only: bool) -> Decision:
        refused = _refusal(candidate_values, trust, status, self.min_trust)
        if refused:
            return refused
        if seed_only:
            return Decision(DISCARD, "seed-only change")
        if not best_values:
            return Decision(KEEP, "first result")
        n, n_best = len(candidate_values), len(best_values)
        best_mean = _mean(best_values)
        delta = _mean(candidate_values) - best_mean  # negative is better
        if delta >= 0:
            return _not_better(delta, best_mean)
        rerun = f"rerun {n + 1}/{self.max_measurements}"
        if sigma is None:
            if n < self.max_measurements:
                return Decision("rerun", f"{delta:+.4f}: no noise estimate yet: {rerun}")
            noise, unknown = self.min_sigma, " (no noise estimate: floor)"
        else:
            noise, unknown = max(sigma, self.min_sigma), ""
        standard_error = noise * math.sqrt(1 / n + 1 / n_best)
        k = f"{self.k_sigma:g} sigma ({standard_error:.4f}){unknown}"
        if -delta >= self.k_sigma * standard_error:
            return Decision(KEEP, f"{delta:+.4f} > {k}")
        if n < self.max_measurements:
            return Decision("rerun", f"{delta:+.4f} < {k}: {rerun}")
        return Decision(DISCARD, f"{delta:+.4f} < {k} after {n} runs")


def make_policy(settings: PolicySettings) -> GreedyPolicy | ConfirmPolicy:
    if settings.name == "greedy":
        return GreedyPolicy(min_trust=settings.min_trust)
    if settings.name == "confirm":
        return ConfirmPolicy(k_sigma=settings.k_sigma, min_trust=settings.min_trust)
    raise ValueError(f"unknown policy {settings.name!r}; choose 'confirm' or 'greedy'")
