"""Agents propose changes to the workspace's editable files; `make_agent` picks one by name."""
from __future__ import annotations

AGENTS = ("sweep", "openai", "anthropic")


def make_agent(name: str, **options):
    if name == "sweep":
        from autoresearch.agents.sweep import SweepAgent

        return SweepAgent(seq_len=options.get("seq_len"))
    if name in ("openai", "anthropic"):  # the wire format; any compatible server will do
        from autoresearch.agents.llm import make_llm_agent

        return make_llm_agent(name, **options)
    raise ValueError(f"unknown agent {name!r}; available: {', '.join(AGENTS)}")
