"""Frozen constants of each hardware profile.

A profile fixes everything that makes two experiments comparable: sequence length,
vocabulary, training budget and how much validation text the evaluator reads. It is
chosen once at `init`, written to autoresearch.toml and recorded in every result.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    name: str
    max_seq_len: int  # tokens per row seen by the model
    vocab_size: int  # BPE vocabulary including the reserved specials
    time_budget: float  # seconds of training (first warmup steps excluded)
    eval_tokens: int  # validation tokens the evaluator scores
    eval_batch_size: int  # rows per evaluator forward pass (the exported shape)
    warmup_steps: int  # first training steps not counted in the budget (compilation happens there)
    startup_allowance: float  # seconds allowed for imports, compile and warmup
    eval_allowance: float  # seconds allowed for export and the sealed evaluation
    default_data: str  # data source used when `init` is given none
    # initial values of train.py's constants for this profile
    template_constants: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_budget(self, seconds: float | None) -> "Profile":
        if seconds is None:
            return self
        if seconds <= 0:
            raise ValueError(f"the training budget must be positive, got {seconds}")
        return dataclasses.replace(self, time_budget=float(seconds))


# The original's constants, for an H100-class GPU.
GPU = Profile(
    name="gpu",
    max_seq_len=2048,
    vocab_size=8192,
    time_budget=300.0,
    eval_tokens=40 * 524_288,
    eval_batch_size=32,
    warmup_steps=10,
    startup_allowance=180.0,
    eval_allowance=180.0,
    default_data="climbmix",
    template_constants={},  # the template's own values are the gpu baseline
)

# Sized for a 2-core machine: about a minute of training, evaluation under 10% of it.
CPU = Profile(
    name="cpu",
    max_seq_len=256,
    vocab_size=4096,
    time_budget=60.0,
    eval_tokens=24 * 1024,
    eval_batch_size=16,
    warmup_steps=1,  # on a CPU only the first step compiles; the second already runs at full speed
    startup_allowance=90.0,
    eval_allowance=60.0,
    default_data="builtin",
    template_constants={
        "DEPTH": 4,
        "ASPECT_RATIO": 32,
        "HEAD_DIM": 64,
        "DEVICE_BATCH_SIZE": 16,
        "TOTAL_BATCH_SIZE": 2**12,
        "WINDOW_PATTERN": "SSSL",
    },
)

PROFILES = {p.name: p for p in (GPU, CPU)}


def detect_profile_name() -> str:
    """`auto`: the gpu profile when CUDA is present, else cpu."""
    import torch

    return "gpu" if torch.cuda.is_available() else "cpu"


def get_profile(name: str) -> Profile:
    if name == "auto":
        name = detect_profile_name()
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES) + ["auto"])
        raise ValueError(f"unknown profile {name!r}; choose one of: {known}") from None
