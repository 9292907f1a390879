"""The offline agent: a coordinate sweep over train.py's hyperparameter constants.

Each proposal moves one constant (occasionally two) along a grid of sane values and
rewrites only that value in train.py. The history steers it: a direction that was kept
is followed with a longer stride, a direction that failed is reversed, and a failure on
both sides shrinks the stride; constants tried less often come first; a configuration
already run is never proposed again.

What the sweep reads from each ExperimentRecord: `status`, `kind`, `repeat_of`,
`description` and, when present, `extra["constants"]` (the full constants of the run,
as `read_constants` gives them). With `extra["constants"]` the history is exact; without
it the configurations are rebuilt from descriptions of the form "NAME old -> new".
"""
from __future__ import annotations

import bisect
import math
import random
import re
from dataclasses import dataclass

from autoresearch.agents.base import AgentContext, Proposal, ProposalError
from autoresearch.constants import format_value, parse_value, read_constants, set_constants
from autoresearch.records import (ABORTED, BASELINE, CONFIRM, CRASH, DISCARD, INTERRUPTED,
                                  INVALID, KEEP, OVER_BUDGET, PENDING, TIMEOUT)

HURT = (DISCARD, CRASH, INVALID, TIMEOUT, OVER_BUDGET, ABORTED)  # the change did not help
RAN = (KEEP, DISCARD, PENDING)  # trained and measured: the configuration works
NOT_TRIED = (INTERRUPTED,)  # never measured: running it again is allowed

# Scoring of candidate moves. Priors span about 0.5-10, so a constant tried once drops
# below the next few untried ones, and a kept direction jumps back to the front.
EXPLORE_PENALTY = 5.0  # per earlier change of the same constant
MOMENTUM_BONUS = 7.0  # the last change of this constant was kept: follow it
WRONG_WAY_PENALTY = 2.0  # moving against the planned direction
STEP_PENALTY = 1.0  # per grid step beyond the planned stride (half that below it)
MAX_STRIDE = 3  # longest planned stride, in grid steps
JITTER = 0.3  # seeded tie-breaking noise
PAIR_CHANCE = 0.5  # chance of joining two constants that both just improved into one move


def nice_grid(low: float, high: float) -> tuple[float, ...]:
    """Readable values from low to high, about 1.3x apart (0.04, 0.05, 0.06, 0.08, 0.1...)."""
    values = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in ("1", "1.5", "2", "3", "4", "5", "6", "8"):
            value = float(f"{mantissa}e{exponent}")
            if low <= value <= high:
                values.append(value)
    return tuple(values)


def powers_of_two(low: int, high: int) -> tuple[int, ...]:
    return tuple(2**k for k in range(low.bit_length() - 1, high.bit_length()) if low <= 2**k <= high)


@dataclass(frozen=True)
class Knob:
    """One searchable value: a constant, or one element of a tuple constant."""

    name: str
    grid: tuple  # the values it may take, in order (moves are steps along it)
    prior: float  # how promising a first change looks; higher goes first
    direction: int  # first direction to try: +1 toward the end of the grid, -1 toward the start
    stride: int = 1  # grid steps of the first move
    element: int | None = None  # index inside a tuple constant

    def read(self, config: dict):
        value = config.get(self.name)
        if self.element is None:
            return value
        if isinstance(value, (tuple, list)) and len(value) > self.element:
            return value[self.element]
        return None

    def write(self, config: dict, value) -> dict:
        if self.element is None:
            return {**config, self.name: value}
        items = list(config[self.name])
        items[self.element] = value
        return {**config, self.name: tuple(items)}

    def position(self, value) -> float | None:
        """Index of value on the grid; halfway between neighbours when it is off the grid."""
        if value in self.grid and type(value) is not bool:
            return float(self.grid.index(value))
        numeric = all(isinstance(v, (int, float)) for v in self.grid)
        if not numeric or not isinstance(value, (int, float)) or isinstance(value, bool):
            return None  # an unknown string or type: leave the constant alone
        return bisect.bisect_left(self.grid, value) - 0.5


# The search space and its priors, written for a short budget on a small machine (the
# cpu profile: about a minute, a 4-layer 128-wide model, about a hundred optimizer steps).
# There, the number of steps limits the result more than anything else:
#  - a smaller model trains more steps in the same time. Measured on the 2-core cpu
#    profile (single runs, noise sigma about 0.008): DEPTH 2, which also halves the width
#    to 64 through rounding to HEAD_DIM, gave -0.025 val_bpb with 175 steps instead of 104;
#    DEPTH 3 and WINDOW_PATTERN "L" stayed within the noise; a wider model (ASPECT_RATIO 48)
#    gave +0.08, HEAD_DIM 32 +0.03; learning rates x1.5-2 moved it less than the noise.
#    So depth goes down first, in a long stride, and width down before up;
#  - a smaller TOTAL_BATCH_SIZE gives more optimizer steps in the same time;
#  - higher learning rates make more of few steps (Muon's first), and a longer warmdown
#    helps a short run settle; less weight decay suits a short run;
#  - at 256 tokens a full-context window costs little, so "L" layers are tried;
#  - DEVICE_BATCH_SIZE only trades speed for memory: tried last.
# These are starting guesses only: one failure in a direction turns the sweep around.
SEARCH_SPACE: tuple[Knob, ...] = (
    Knob("DEPTH", tuple(range(1, 17)), prior=11, direction=-1, stride=2),
    Knob("TOTAL_BATCH_SIZE", powers_of_two(2**10, 2**21), prior=10, direction=-1),
    Knob("MATRIX_LR", nice_grid(0.005, 0.3), prior=9, direction=+1, stride=2),
    Knob("WARMDOWN_RATIO", (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
         prior=8, direction=+1, stride=2),
    Knob("UNEMBEDDING_LR", nice_grid(0.0005, 0.05), prior=7, direction=+1, stride=2),
    Knob("EMBEDDING_LR", nice_grid(0.05, 3.0), prior=6, direction=+1, stride=2),
    Knob("ASPECT_RATIO", (16, 24, 32, 48, 64, 96, 128), prior=5.5, direction=-1),
    Knob("WEIGHT_DECAY", (0.0,) + nice_grid(0.01, 1.0), prior=4.5, direction=-1, stride=2),
    Knob("SCALAR_LR", nice_grid(0.05, 2.0), prior=4, direction=+1, stride=2),
    Knob("WINDOW_PATTERN", ("SSSL", "SSL", "SL", "L"), prior=3.5, direction=+1),
    Knob("ADAM_BETAS", (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95), prior=3, direction=+1,
         element=0),
    Knob("WARMUP_RATIO", (0.0, 0.02, 0.05, 0.1, 0.2, 0.3), prior=2.5, direction=+1),
    Knob("ADAM_BETAS", (0.9, 0.95, 0.98, 0.99), prior=2, direction=+1, element=1),
    Knob("FINAL_LR_FRAC", (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5), prior=2, direction=+1),
    Knob("HEAD_DIM", (32, 64, 128), prior=1.5, direction=-1),
    Knob("DEVICE_BATCH_SIZE", powers_of_two(1, 512), prior=0.5, direction=+1),
)


# ----------------------------------------------------------------------------------
# Configurations: validity and identity


def infer_seq_len(working_configs: list[dict]) -> int | None:
    """Tokens per row, from configurations that ran (the current one first): MAX_SEQ_LEN
    when the script sets it, else the smallest TOTAL / DEVICE batch ratio that worked.
    That is never below the true length, so changes it allows stay valid."""
    if isinstance(working_configs[0].get("MAX_SEQ_LEN"), int):
        return working_configs[0]["MAX_SEQ_LEN"]
    ratios = [c.get("TOTAL_BATCH_SIZE", 0) // c.get("DEVICE_BATCH_SIZE", 0)
              for c in working_configs
              if isinstance(c.get("TOTAL_BATCH_SIZE"), int)
              and isinstance(c.get("DEVICE_BATCH_SIZE"), int) and c["DEVICE_BATCH_SIZE"] > 0]
    return max(1, min(ratios)) if ratios else None


def is_valid(config: dict, seq_len: int | None) -> bool:
    """The rules train.py needs between constants (only those present are checked)."""
    total, device = config.get("TOTAL_BATCH_SIZE"), config.get("DEVICE_BATCH_SIZE")
    if isinstance(total, int) and isinstance(device, int) and seq_len:
        if device < 1 or total % (device * seq_len) != 0:
            return False  # gradient accumulation needs a whole number of device batches
    depth, aspect, head = (config.get(n) for n in ("DEPTH", "ASPECT_RATIO", "HEAD_DIM"))
    if all(isinstance(v, int) for v in (depth, aspect, head)) and depth * aspect < head:
        return False  # fewer channels than one head
    warmup, warmdown = config.get("WARMUP_RATIO"), config.get("WARMDOWN_RATIO")
    if isinstance(warmup, (int, float)) and isinstance(warmdown, (int, float)):
        if warmup + warmdown > 1 + 1e-9:
            return False
    return True


def _fit_device_batch(config: dict, seq_len: int | None) -> dict:
    """A smaller TOTAL_BATCH_SIZE brings DEVICE_BATCH_SIZE down with it when it must."""
    total, device = config.get("TOTAL_BATCH_SIZE"), config.get("DEVICE_BATCH_SIZE")
    if not (isinstance(total, int) and isinstance(device, int) and seq_len):
        return config
    if device * seq_len > total and total // seq_len >= 1:
        return {**config, "DEVICE_BATCH_SIZE": total // seq_len}
    return config


def _freeze(value):
    """Lists (as JSON gives tuples back) become tuples, so configurations compare and hash."""
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def config_key(config: dict) -> frozenset:
    """Identity of a configuration whose values are already frozen (see _freeze)."""
    return frozenset(config.items())


# ----------------------------------------------------------------------------------
# Descriptions: "MATRIX_LR 0.04 -> 0.05, DEPTH 4 -> 5"

_CHANGE = re.compile(r"([A-Z][A-Z0-9_]*) (.+?) -> (.+?)(?:, (?=[A-Z][A-Z0-9_]* )|$)")


def describe(before: dict, after: dict, order: list[str]) -> str:
    return ", ".join(f"{n} {format_value(before[n])} -> {format_value(after[n])}" for n in order)


def parse_description(text: str) -> list[tuple[str, object, object]] | None:
    """(name, old, new) for each change, or None when the text is not in that form."""
    changes, position = [], 0
    for match in _CHANGE.finditer(text):
        if match.start() != position:
            return None
        try:
            changes.append((match.group(1), parse_value(match.group(2)), parse_value(match.group(3))))
        except ValueError:
            return None
        position = match.end()
    return changes if changes and position == len(text) else None


# ----------------------------------------------------------------------------------
# History: which configurations ran, and what each change of a knob did


@dataclass
class Trial:
    config: dict | None  # constants of the run; None when they cannot be known
    parent: dict | None  # the best configuration when it was proposed
    status: str

    def changed(self) -> set[str]:
        if self.config is None or self.parent is None:
            return set()
        return {n for n, v in self.config.items() if self.parent.get(n, v) != v}


def _stored_constants(record) -> dict | None:
    stored = record.extra.get("constants") if isinstance(record.extra, dict) else None
    return {k: _freeze(v) for k, v in stored.items()} if isinstance(stored, dict) else None


def _starting_config(history: list, current: dict) -> dict | None:
    """The configuration before the first kept change: the current one with every kept
    change undone, newest first. None when a kept change cannot be read."""
    config = dict(current)
    for record in reversed(history):
        if record.status != KEEP or record.kind == BASELINE:
            continue  # a baseline changes nothing; undoing a change twice is harmless
        changes = parse_description(record.description)
        if changes is None:
            return None
        for name, old, _ in changes:
            config[name] = _freeze(old)
    return config


def reconstruct_trials(history: list, current: dict) -> list[Trial]:
    """Each record's configuration and the best configuration it was compared with."""
    best = _starting_config(history, current)
    by_id, trials = {}, []
    for record in history:
        config = _stored_constants(record)
        if config is None and record.kind == CONFIRM and record.repeat_of in by_id:
            config = by_id[record.repeat_of]
        elif config is None and record.kind == BASELINE:
            config = best
        elif config is None and best is not None:
            changes = parse_description(record.description)
            if changes is not None:
                config = {**best, **{name: _freeze(new) for name, _, new in changes}}
        if config is not None:
            by_id[record.id] = config
        trials.append(Trial(config, best, record.status))
        if record.status == KEEP and config is not None:
            best = config
    return trials


@dataclass(frozen=True)
class Step:
    direction: int  # +1, -1 along the knob's grid; 0 when a value was off every grid
    stride: int
    helped: bool | None  # None: no verdict (pending, interrupted...)


def knob_steps(knob: Knob, trials: list[tuple[Trial, set]]) -> list[Step]:
    """Every change of this knob in the history, oldest first; trials come with the
    names each one changed."""
    steps = []
    for trial, changed in trials:
        if knob.name not in changed:
            continue
        old, new = knob.read(trial.parent), knob.read(trial.config)
        if old == new:
            continue
        helped = True if trial.status == KEEP else False if trial.status in HURT else None
        a, b = knob.position(old), knob.position(new)
        if a is None or b is None:
            steps.append(Step(0, 1, helped))
        else:
            steps.append(Step(1 if b > a else -1, max(1, math.ceil(abs(b - a))), helped))
    return steps


def plan(knob: Knob, steps: list[Step]) -> tuple[int, int, float]:
    """(direction, stride, bonus) for the next move of this knob."""
    judged = [s for s in steps if s.direction and s.helped is not None]
    if not judged:
        return knob.direction, knob.stride, 0.0
    last = judged[-1]
    if last.helped:  # keep going, further
        return last.direction, min(2 * last.stride, MAX_STRIDE), MOMENTUM_BONUS
    before = judged[-2] if len(judged) > 1 else None
    if before is not None and not before.helped and before.direction == -last.direction:
        # worse on both sides: the best value lies closer, so look closer
        return -last.direction, max(1, min(last.stride, before.stride) // 2), 0.0
    return -last.direction, last.stride, 0.0  # turn around


# ----------------------------------------------------------------------------------
# Moves


@dataclass
class Move:
    knob: Knob
    config: dict  # the configuration after the move (coupled fixes included)
    score: float
    follows_success: bool  # continues this knob's last kept change


def _moves_of(knob: Knob, config: dict, steps: list[Step], seq_len, tried: set,
              rng: random.Random) -> list[Move]:
    here = knob.position(knob.read(config))
    if here is None:
        return []
    direction_planned, stride_planned, bonus = plan(knob, steps)
    base = knob.prior - EXPLORE_PENALTY * len(steps) + bonus
    moves = []
    for index, value in enumerate(knob.grid):
        if index == here:
            continue
        direction = 1 if index > here else -1
        stride = math.ceil(abs(index - here))
        moved = _fit_device_batch(knob.write(config, value), seq_len)
        if not is_valid(moved, seq_len) or config_key(moved) in tried:
            continue
        score = base - (WRONG_WAY_PENALTY if direction != direction_planned else 0.0)
        if stride > stride_planned:
            score -= STEP_PENALTY * (stride - stride_planned)
        else:
            score -= STEP_PENALTY / 2 * (stride_planned - stride)
        moves.append(Move(knob, moved, score + rng.uniform(0, JITTER), bonus > 0))
    return moves


def _changed_names(before: dict, after: dict, first: list[str]) -> list[str]:
    names = [n for n in first if before.get(n) != after.get(n)]
    return names + [n for n in after if before.get(n) != after[n] and n not in names]


def _pair(best: Move, moves: list[Move], current: dict, seq_len, tried: set) -> dict | None:
    """Two constants that both just improved, each moved on in its direction at once.
    Only such pairs: a failed pair teaches both constants to turn around."""
    if not best.follows_success or len(_changed_names(current, best.config, [])) != 1:
        return None
    for other in moves:
        if (not other.follows_success or other.knob.name == best.knob.name
                or len(_changed_names(current, other.config, [])) != 1):
            continue
        combined = other.knob.write(best.config, other.knob.read(other.config))
        if is_valid(combined, seq_len) and config_key(combined) not in tried:
            return combined
    return None


class SweepAgent:
    name = "sweep"

    def __init__(self, seed: int = 0, seq_len: int | None = None, target: str = "train.py"):
        self.seed = seed
        self.seq_len = seq_len  # MAX_SEQ_LEN of the profile; inferred when None
        self.target = target

    def propose(self, context: AgentContext) -> Proposal | ProposalError:
        source = context.files.get(self.target)
        if source is None:
            return ProposalError(f"{self.target} is not among the editable files")
        try:
            current = {k: _freeze(v) for k, v in read_constants(source).items()}
        except SyntaxError as error:
            return ProposalError(f"{self.target} does not parse: {error}")
        knobs = [k for k in SEARCH_SPACE if k.position(k.read(current)) is not None]
        if not knobs:
            known = ", ".join(sorted({k.name for k in SEARCH_SPACE}))
            return ProposalError(f"{self.target} sets none of the constants the sweep knows ({known})")

        history = list(context.history)
        trials = reconstruct_trials(history, current)
        tried = {config_key(t.config) for t in trials
                 if t.config is not None and t.status not in NOT_TRIED}
        tried.add(config_key(current))
        seq_len = self.seq_len or infer_seq_len(
            [current] + [t.config for t in trials if t.config is not None and t.status in RAN])
        rng = random.Random(f"sweep:{self.seed}:{len(history)}")

        with_changes = [(t, t.changed()) for t in trials]
        moves = []
        for knob in knobs:
            moves += _moves_of(knob, current, knob_steps(knob, with_changes), seq_len, tried, rng)
        if not moves:
            return ProposalError(
                f"search space exhausted: every value of the {len(knobs)} known constants "
                "has been tried from the best configuration")
        moves.sort(key=lambda m: m.score, reverse=True)
        chosen = moves[0].config
        if rng.random() < PAIR_CHANCE:
            chosen = _pair(moves[0], moves[1:], current, seq_len, tried) or chosen

        names = _changed_names(current, chosen, [moves[0].knob.name])
        new_source = set_constants(source, {n: chosen[n] for n in names})
        return Proposal(description=describe(current, chosen, names),
                        files={self.target: new_source})
