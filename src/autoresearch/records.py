"""The record of one experiment: what the ledger stores, the policy judges and the report draws."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Outcomes of one experiment. Only KEEP advances the branch.
KEEP = "keep"
DISCARD = "discard"
CRASH = "crash"  # the run failed or produced no result
INVALID = "invalid"  # a result exists but an integrity check refused it
TIMEOUT = "timeout"  # killed by the runner's wall-clock limit
OVER_BUDGET = "over_budget"  # trained longer than the budget
ABORTED = "aborted"  # stopped early: NaN or diverging loss
INTERRUPTED = "interrupted"  # the loop was stopped or killed while it ran
FAILED_PROPOSAL = "failed_proposal"  # the agent's edit was refused before running
PENDING = "pending"  # measured, waiting for a confirmation run
RUNNING = "running"  # written when a run starts; replaced by its outcome when it ends
STATUSES = (KEEP, DISCARD, CRASH, INVALID, TIMEOUT, OVER_BUDGET, ABORTED, INTERRUPTED,
            FAILED_PROPOSAL, PENDING, RUNNING)
UNDECIDED = (PENDING, RUNNING)  # not yet a row of results.tsv

# kinds of experiment
BASELINE = "baseline"  # train.py as the branch has it, to anchor and measure noise
CANDIDATE = "candidate"  # an agent's proposal
CONFIRM = "confirm"  # a re-run of a candidate on a new seed

TRUST_LEVELS = ("self-reported", "in-process", "sealed")  # weakest first


def trust_rank(level: str | None) -> int:
    """-1 for no result; higher is more trustworthy."""
    return TRUST_LEVELS.index(level) if level in TRUST_LEVELS else -1


@dataclass
class ExperimentRecord:
    id: int
    kind: str = CANDIDATE
    parent: str = ""  # commit the proposal was made on (the best at the time)
    commit: str = ""  # commit that was run
    description: str = ""
    agent: str = ""
    diff_lines: int = 0  # lines added + removed against the parent
    status: str = PENDING
    decision_reason: str = ""
    val_bpb: float | None = None
    trust: str | None = None
    seed: int | None = None
    noise_sigma: float | None = None  # noise estimate when the decision was made
    repeat_of: int | None = None  # for CONFIRM and repeated BASELINE runs
    training_seconds: float | None = None
    wall_seconds: float | None = None
    eval_seconds: float | None = None
    peak_memory_mb: float | None = None
    mfu_percent: float | None = None
    total_tokens: int | None = None
    num_steps: int | None = None
    num_params: int | None = None
    profile: str = ""
    log_path: str = ""
    started_at: float | None = None  # unix seconds
    finished_at: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExperimentRecord":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
