"""The `autoresearch` command as a user runs it: real subprocesses, real workspaces."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autoresearch.constants import set_constants
from autoresearch.summary import parse_summary


def _cli(*args, cwd=None, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "autoresearch.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_bad_input_gets_a_clear_error_and_exit_code_2(tmp_path):
    done = _cli("init", tmp_path / "ws", "--profile", "tpu")
    assert done.returncode == 2 and "unknown profile 'tpu'" in done.stderr and "Traceback" not in done.stderr
    done = _cli("train", "--workspace", tmp_path)
    assert done.returncode == 2 and "autoresearch init" in done.stderr
    done = _cli("prepare", "--data", "nonsense")
    assert done.returncode == 2 and "builtin" in done.stderr


def test_init_then_train_prints_a_sealed_val_bpb_below_xz(tmp_path, monkeypatch, data_cache):
    """The foundation end to end on the cpu profile with a short budget, both ways of running it."""
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(data_cache))
    ws = tmp_path / "ws"
    done = _cli("init", ws, "--profile", "cpu", "--budget", "8", "--tag", "e2e")
    assert done.returncode == 0, done.stderr
    # a smaller device batch keeps this test quick; the model is the template's
    (ws / "train.py").write_text(set_constants((ws / "train.py").read_text(), {"DEVICE_BATCH_SIZE": 8}))
    done = _cli("train", "--workspace", ws)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    values = parse_summary(done.stdout)
    assert values["trust"] == "sealed" and values["profile"] == "cpu"
    assert 0.5 < values["val_bpb"] < 2.6  # xz -9 reaches 2.12 on this validation text
    assert values["num_steps"] > 10 and values["training_seconds"] <= 8 * 1.05 + 2
    direct = subprocess.run([sys.executable, "train.py"], cwd=ws, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "AUTORESEARCH_CACHE": str(data_cache)})
    assert direct.returncode == 0, direct.stderr[-3000:]
    alone = parse_summary(direct.stdout)
    assert alone["trust"] == "sealed" and 0.5 < alone["val_bpb"] < 2.6


def test_agent_driven_mode_through_exp_commands(workspace):
    ws = workspace.root
    (ws / "train.py").write_text(set_constants((ws / "train.py").read_text(), {"MATRIX_LR": 0.05}))
    done = _cli("exp", "run", "-d", "raise the learning rate", "--workspace", ws)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    out = done.stdout
    assert "[baseline] keep" in out and "raise the learning rate" not in done.stderr
    assert "[candidate]" in out and "reason:" in out and "log:" in out
    log = _cli("exp", "log", "-w", ws)
    assert log.returncode == 0 and "raise the learning rate" in log.stdout and "baseline" in log.stdout
    show = _cli("exp", "-w", ws, "show", "3")
    assert show.returncode == 0 and "MATRIX_LR = 0.05" in show.stdout and "val_bpb" in show.stdout
    assert _cli("status", "-w", ws).returncode == 0
    report = _cli("report", "-w", ws)
    assert report.returncode == 0 and (ws / "report.md").exists() and (ws / "progress.png").exists()
    # whatever the verdict, the branch is at the best commit and the edit is recorded
    assert "MATRIX_LR" in Path(ws / ".autoresearch" / "experiments.jsonl").read_text()


def test_exp_run_refuses_an_edit_outside_the_editable_files(workspace):
    (workspace.root / "program.md").write_text("new rules\n")
    done = _cli("exp", "run", "-d", "change the rules", "--workspace", workspace.root)
    assert done.returncode == 2 and "program.md" in done.stderr
