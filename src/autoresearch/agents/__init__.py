"""Agents propose changes to the workspace's editable files; `make_agent` picks one by name."""
from __future__ import annotations

AGENTS = ("sweep", "openai", "anthropic", "command")


def make_agent(name: str, **options):
    if name == "sweep":
        from autoresearch.agents.sweep import SweepAgent

        return SweepAgent(seq_len=options.get("seq_len"))
    if name in ("openai", "anthropic"):  # the wire format; any compatible server will do
        from autoresearch.agents.llm import make_llm_agent

        return make_llm_agent(name, **options)
    if name == "command":  # an external coding agent's CLI, run once per experiment
        from autoresearch.agents.command import make_command_agent

        if not options.get("command") or not options.get("workspace_root"):
            raise ValueError("--agent command needs --command PRESET_OR_TEMPLATE (presets: claude, codex, "
                             "aider, gemini; or a template with {prompt})")
        return make_command_agent(options["workspace_root"], options["command"])
    raise ValueError(f"unknown agent {name!r}; available: {', '.join(AGENTS)}")
