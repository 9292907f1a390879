"""The long-lived helpers of a loop: the warm launcher for training runs and the
evaluation service. Both only save start-up time; without them every run starts cold
and is evaluated by a one-shot evaluator, with the same results."""
from __future__ import annotations

import os

from autoresearch.evalservice import EvaluatorService
from autoresearch.harness import session as S
from autoresearch.warmstart import WarmStarter, warm_start_wanted


class LoopServices:
    def __init__(self, workspace, *, sandbox: bool = False, warm_start: str | None = None, settings=None):
        self.ws = workspace
        self.settings = settings or workspace.settings  # the loop's own copy
        self.mode = warm_start or workspace.settings.experiment.warm_start
        self.enabled, self.why_not = warm_start_wanted(self.mode)
        self.sandbox = sandbox
        self.launcher: WarmStarter | None = None
        self.scratch_parent = None  # the loop's own folder for its runs' scratch folders
        self.evaluator: EvaluatorService | None = None

    def start(self) -> "LoopServices":
        """Spawns both (they warm up in the background); call from the loop's own thread."""
        if not self.enabled:
            return self
        from autoresearch.harness.evaluate import validation_spec
        from autoresearch.harness.zygote import SHARED_SANDBOX_ENV
        from autoresearch.runner import SECRET_MARKERS, evaluator_sandbox, run_sandbox
        from autoresearch.scratch import loop_folder

        env = {k: v for k, v in os.environ.items()
               if not k.startswith("AUTORESEARCH_") and not any(m in k.upper() for m in SECRET_MARKERS)}
        env.update({S.ENV_MANAGED: "1", "PYTHONUNBUFFERED": "1"})
        folder = self.scratch_parent = loop_folder()
        wrap_run = run_sandbox(self.settings, folder, shared=True) if self.sandbox else None
        # the launcher's own warm-up compiles: its caches go to the loop's folder (the
        # shared sandbox's /tmp is read-only), which is emptied after every run
        env.update(TMPDIR=str(folder), TORCHINDUCTOR_CACHE_DIR=str(folder / ".launcher-cache"))
        if self.sandbox:
            env[SHARED_SANDBOX_ENV] = "1"  # the launcher empties its sandbox's shared state between runs
        self.launcher = WarmStarter(folder, env=env, log_path=self.ws.state_dir / "launcher.log", wrap=wrap_run)
        spec = validation_spec(self.settings.profile(), self.settings.experiment.data)
        runs = self.ws.state_dir / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        wrap_eval = evaluator_sandbox(spec["data"], spec["vocab_size"], [runs]) if self.sandbox else None
        self.evaluator = EvaluatorService(spec, folder=runs, env=env, log_path=self.ws.state_dir / "evaluator.log",
                                          wrap=wrap_eval)
        for service in (self.launcher, self.evaluator):
            try:
                service.start()
            except OSError:
                pass  # usable() says why at the first run, which then starts cold
        return self

    def close(self) -> None:
        import shutil

        for service in (self.launcher, self.evaluator):
            if service is not None:
                service.close()
        if self.scratch_parent is not None:
            shutil.rmtree(self.scratch_parent, ignore_errors=True)
            self.scratch_parent = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()
