"""The long-lived helpers of a loop: the warm launcher for training runs and the
evaluation service. Both only save start-up time; without them every run starts cold
and is evaluated by a one-shot evaluator, with the same results."""
from __future__ import annotations

import os
from pathlib import Path

from autoresearch.evalservice import EvaluatorService
from autoresearch.harness import session as S
from autoresearch.warmstart import WarmStarter, warm_start_wanted


class LoopServices:
    def __init__(self, workspace, *, sandbox: bool = False, warm_start: str | None = None):
        self.ws = workspace
        self.mode = warm_start or workspace.settings.experiment.warm_start
        self.enabled, self.why_not = warm_start_wanted(self.mode)
        self.sandbox = sandbox
        self.launcher: WarmStarter | None = None
        self.evaluator: EvaluatorService | None = None

    def start(self) -> "LoopServices":
        """Spawns both (they warm up in the background); call from the loop's own thread."""
        if not self.enabled:
            return self
        root: Path = self.ws.root.resolve()
        env = dict(os.environ)
        env.update({S.ENV_WORKSPACE: str(root), S.ENV_MANAGED: "1", "PYTHONUNBUFFERED": "1"})
        self.launcher = WarmStarter(root, env=env, log_path=self.ws.state_dir / "launcher.log", wrap=self._wrap())
        self.evaluator = EvaluatorService(root, env=env, log_path=self.ws.state_dir / "evaluator.log")
        for service in (self.launcher, self.evaluator):
            try:
                service.start()
            except OSError:
                pass  # usable() says why at the first run, which then starts cold
        return self

    def _wrap(self):
        if not self.sandbox:
            return None
        from autoresearch import sandbox

        settings = self.ws.settings
        hidden = sandbox.validation_paths(settings.experiment.data, settings.profile().vocab_size)
        return lambda cmd: sandbox.wrap_command(cmd, hidden_paths=hidden, writable=[self.ws.root.resolve()])

    def close(self) -> None:
        for service in (self.launcher, self.evaluator):
            if service is not None:
                service.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
