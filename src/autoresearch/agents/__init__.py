"""Agents propose changes to the workspace's editable files; `make_agent` picks one by name."""
from __future__ import annotations

AGENTS = ("sweep",)


def make_agent(name: str, **options):
    if name == "sweep":
        from autoresearch.agents.sweep import SweepAgent

        return SweepAgent(**options)
    raise ValueError(f"unknown agent {name!r}; available: {', '.join(AGENTS)}")
