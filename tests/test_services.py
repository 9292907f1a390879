"""The loop's helpers: started only where warm starts are wanted, closed with the loop,
and visible in every record as the way its run was started."""
from __future__ import annotations

import sys

import pytest

from autoresearch.agents.base import Proposal
from autoresearch.config import ConfigError, load_settings, save_settings
from autoresearch.loop import ResearchLoop
from autoresearch.services import LoopServices


class NoAgent:
    name = "none"

    def propose(self, context):
        return Proposal("nothing", {})


def test_off_starts_nothing(workspace):
    with LoopServices(workspace, warm_start="off") as services:
        assert services.launcher is None and services.evaluator is None
        assert services.why_not == "warm_start = off"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm starts are Linux-only")
def test_on_starts_both_and_close_stops_both(workspace):
    with LoopServices(workspace, warm_start="on") as services:
        launcher, evaluator = services.launcher, services.evaluator
        assert launcher.usable() and evaluator.usable()
        assert (workspace.state_dir / "launcher.log").exists()
        processes = [launcher.proc, evaluator.proc]
    assert launcher.proc is None and evaluator.proc is None
    assert all(proc.poll() is not None for proc in processes)  # both processes ended, not just forgotten


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm starts are Linux-only")
@pytest.mark.parametrize("mode, start", [("on", "warm"), ("off", "cold")])
def test_each_record_says_how_its_run_started(workspace, mode, start):
    loop = ResearchLoop(workspace, NoAgent(), max_experiments=1, warm_start=mode)
    [record] = loop.run()
    assert record.extra["start"] == start
    assert record.val_bpb is not None


def test_a_misspelt_mode_in_the_settings_is_refused(workspace):
    settings = load_settings(workspace.root)
    settings.experiment.warm_start = "sometimes"
    save_settings(workspace.root, settings)
    with pytest.raises(ConfigError, match="warm_start = 'sometimes'.*auto, on, off"):
        load_settings(workspace.root)
