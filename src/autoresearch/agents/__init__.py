"""Agents propose changes to the workspace's editable files; `make_agent` picks one by name."""
from __future__ import annotations

AGENTS = ("sweep",)


def make_agent(name: str, **options):
    if name == "sweep":
        from autoresearch.agents.sweep import SweepAgent

        return SweepAgent(seq_len=options.get("seq_len"))
    raise ValueError(f"unknown agent {name!r}; available: {', '.join(AGENTS)}")
