"""The one interface every agent implements: propose(context) -> Proposal or ProposalError."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from autoresearch.records import ExperimentRecord


@dataclass
class Proposal:
    description: str  # one line, e.g. "MATRIX_LR 0.04 -> 0.05"
    files: dict  # relative path -> full new contents, editable files only
    extra: dict = field(default_factory=dict)  # recorded with the experiment (tokens, cost, ...)


@dataclass
class ProposalError:
    reason: str  # why no usable proposal came back; recorded, and the loop goes on
    extra: dict = field(default_factory=dict)  # tokens and cost spent even on a failure
    fatal: bool = False  # e.g. bad credentials: the loop stops instead of retrying forever


@dataclass
class AgentContext:
    program: str  # program.md
    files: dict  # relative path -> current contents of each editable file (best commit)
    history: list = field(default_factory=list)  # ExperimentRecord, oldest first
    noise_sigma: float | None = None
    best_val_bpb: float | None = None
    last_log_tail: str = ""  # the last failed run's log tail
    kept_diffs: dict = field(default_factory=dict)  # experiment id -> diff of a kept change
    telemetry_summary: str = ""  # the last run: loss at a few points of progress, tokens/s, memory
    harness_api: str = ""  # what train.py may use from the harness, in a few lines


class Agent(Protocol):
    name: str

    def propose(self, context: AgentContext) -> Proposal | ProposalError: ...
