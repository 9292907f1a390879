"""The research loop: it only wires Agent, Workspace, Runner, Policy and Ledger together.

One experiment = a Job (what to run: the baseline again, a confirmation of a candidate,
or a new proposal). `next_job` decides what comes next from the ledger alone, so a loop
killed at any moment continues where it stopped. The serial loop is the one-worker case
of `execute(job)`; several workers would each run `execute` in their own worktree.
"""
from __future__ import annotations

import ast
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from autoresearch import records as R
from autoresearch.agents.base import AgentContext, Proposal, ProposalError
from autoresearch.gitrepo import GitError
from autoresearch.harness.session import TELEMETRY_FILE
from autoresearch.telemetry import summarize_telemetry
from autoresearch.ledger import Ledger
from autoresearch.policy import NoiseEstimate, is_seed_only_change, make_policy, measurements_of
from autoresearch.records import ExperimentRecord
from autoresearch.runner import OK, RunOutcome, run_experiment, stop_orphan
from autoresearch.services import LoopServices
from autoresearch.workspace import EXPERIMENT_REF, Workspace

BASE_SEED = 42
HARNESS_API = """\
from autoresearch.harness.api import MAX_SEQ_LEN, TIME_BUDGET, WARMUP_STEPS, VOCAB_SIZE, SEED, get_tokenizer, make_dataloader, log, submit
- MAX_SEQ_LEN, TIME_BUDGET (seconds of training after the first WARMUP_STEPS steps), VOCAB_SIZE, SEED: frozen
- get_tokenizer(): .get_vocab_size(), .get_bos_token_id(), .encode(text), .decode(ids)
- make_dataloader(tokenizer, B, T, "train", device=...): yields (x, y, epoch); only the train split
- log(step, loss=..., progress=..., ...): call once per step: the runner's clock on the run (the budget
  starts after WARMUP_STEPS logged steps; no step may begin once it is spent) and telemetry; a NaN
  or diverging loss stops the run early
- submit(model, **stats): last line; model(idx) must return logits [B, T, VOCAB_SIZE]; the sealed
  evaluator computes val_bpb from the exported model; train.py never computes it"""
INFLIGHT_FILE = "inflight.json"  # marks the loop's own uncommitted edits, for resume


class LoopError(RuntimeError):
    pass


@dataclass
class Job:
    kind: str  # records.BASELINE | CANDIDATE | CONFIRM
    commit: str = ""  # what to run (BASELINE, CONFIRM); a CANDIDATE gets its commit from the proposal
    repeat_of: int | None = None
    description: str = ""


class ResearchLoop:
    def __init__(self, workspace: Workspace, agent, *, view=None, max_experiments: int | None = None,
                 hours: float | None = None, stop_event: threading.Event | None = None, on_record=None,
                 max_cost: float | None = None, max_tokens: int | None = None, sandbox: bool | None = None,
                 warm_start: str | None = None):
        self.ws = workspace
        self.agent = agent
        self.view = view
        self.max_experiments = max_experiments
        self.deadline = None if hours is None else time.time() + hours * 3600
        self.stop_event = stop_event or threading.Event()
        self.on_record = on_record  # called after each record is written (report refresh)
        self.ledger = Ledger(workspace.root)
        self.policy = make_policy(workspace.settings.policy)
        self.repo = workspace.repo
        self.ran = 0
        self.max_cost, self.max_tokens = max_cost, max_tokens
        self.sandbox, self.sandbox_why_not = sandbox_choice(sandbox)
        self.services = LoopServices(workspace, sandbox=self.sandbox, warm_start=warm_start)
        self.stop_reason = ""

    # --- set-up and resume ------------------------------------------------------------
    def prepare(self) -> None:
        """Checks the workspace, repairs what a kill left behind, puts the branch at the best commit."""
        self.repo.check_identity()
        inflight = self.ws.state_dir / INFLIGHT_FILE
        records = self.ledger.records()
        for record in records:
            if record.status == R.RUNNING:
                self.ledger.mark_interrupted(record.id, "the loop stopped while this experiment ran")
        self._reconcile()
        if inflight.exists():
            self._stop_orphan(inflight)
        else:
            dirty = self.repo.changed_paths()
            if dirty:
                raise LoopError(
                    f"the workspace has uncommitted changes ({', '.join(dirty[:5])}): commit them "
                    "(git commit -am ...) or discard them (git checkout -- . / git stash), then retry")
        branch = self.ws.branch
        if not self.repo.branch_exists(branch):
            self.repo.checkout_branch(branch)
        elif self.repo.current_branch() != branch:
            self.repo.git("checkout", "-q", "-f", branch)
        best = self.best_commit()
        if best and self.repo.head() != best:
            self.repo.reset_hard(best)  # a candidate committed before the kill is undone
        elif inflight.exists():
            self.repo.reset_hard("HEAD")
        inflight.unlink(missing_ok=True)

    def _stop_orphan(self, inflight: Path) -> None:
        try:
            experiment_id = json.loads(inflight.read_text()).get("id")
        except (OSError, ValueError):
            return
        if isinstance(experiment_id, int):
            stop_orphan(self.ws.run_dir(experiment_id))

    def best_commit(self) -> str | None:
        kept = [r for r in self.ledger.records() if r.status == R.KEEP]
        return kept[-1].commit if kept else None

    # --- scheduling ---------------------------------------------------------------------
    def next_job(self) -> Job:
        records = self.ledger.records()
        best = self.best_commit()
        if best is None:
            return Job(R.BASELINE, commit=self.repo.head(), description="baseline")
        repeats = self.ws.settings.policy.baseline_repeats if self.ws.settings.policy.name == "confirm" else 1
        baselines = [r for r in records if r.kind == R.BASELINE and r.val_bpb is not None]
        first_baseline = next((r for r in records if r.kind == R.BASELINE and r.status == R.KEEP), None)
        if first_baseline and len(baselines) < repeats and best == first_baseline.commit:
            return Job(R.BASELINE, commit=best, repeat_of=first_baseline.id,
                       description=f"baseline repeat {len(baselines) + 1}/{repeats}")
        pending = [r for r in records if r.status == R.PENDING]
        if pending:
            original = next(r for r in records if r.commit == pending[-1].commit and r.kind == R.CANDIDATE)
            n = len(measurements_of(records, original.commit))
            return Job(R.CONFIRM, commit=original.commit, repeat_of=original.id,
                       description=f"confirm #{original.id} (run {n + 1}): {original.description}")
        return Job(R.CANDIDATE)

    def seed_for(self, commit: str) -> int:
        """The first run of a commit uses the base seed; each repeat a new one."""
        runs = [r for r in self.ledger.records() if r.commit == commit and r.seed is not None]
        return BASE_SEED + len(runs)

    # --- one experiment -----------------------------------------------------------------
    def execute(self, job: Job, proposal: Proposal | None = None) -> ExperimentRecord:
        experiment_id = self.ledger.next_id()
        best = self.best_commit()
        record = ExperimentRecord(id=experiment_id, kind=job.kind, parent=best or "", agent="",
                                  description=job.description, repeat_of=job.repeat_of,
                                  profile=self.ws.settings.experiment.profile, started_at=time.time())
        self._mark_inflight(experiment_id, "proposing")
        if job.kind == R.CANDIDATE:
            proposal = proposal or self._propose()
            record.agent = getattr(self.agent, "name", type(self.agent).__name__)
            refused = self._apply(proposal)
            if refused:
                return self._finish_unrun(record, proposal, refused)
            record.description = proposal.description
            record.extra["files"] = sorted(proposal.files)
            record.extra.update(getattr(proposal, "extra", None) or {})
            record.commit = self.repo.commit_paths(self.ws.editable(), f"exp {experiment_id}: {proposal.description}")
            record.diff_lines = self.repo.diff_numstat(best, record.commit)
            record.extra["seed_only"] = self._seed_only(best, record.commit)
        else:
            record.commit = job.commit
            if self.repo.head() != job.commit:
                self.repo.reset_hard(job.commit)
        self.repo.update_ref(EXPERIMENT_REF.format(id=experiment_id), record.commit)
        record.extra["constants"] = self._constants_at(record.commit)
        record.seed = self.seed_for(record.commit)
        record.status = R.RUNNING
        self._mark_inflight(experiment_id, "running")
        self.ledger.append(record)
        if self.view:
            self.view.experiment_started(experiment_id, record.description, self.ws.settings.profile().time_budget)
        outcome = self._run(record)
        self._decide(record, outcome)
        return record

    def _propose(self) -> Proposal | ProposalError:
        try:
            return self.agent.propose(self.build_context())
        except Exception as error:  # an agent bug must not stop the loop
            return ProposalError(f"agent raised {type(error).__name__}: {error}")

    def build_context(self) -> AgentContext:
        """What an agent is told: program, files, history, kept diffs, the last run, the noise."""
        records = self.ledger.records()
        program = self.ws.root / "program.md"
        kept = [r for r in records if r.kind == R.CANDIDATE and r.status == R.KEEP and r.parent and r.commit]
        return AgentContext(
            program=program.read_text() if program.exists() else "",
            files=self.ws.read_editable(), history=records,
            noise_sigma=NoiseEstimate.from_records(records).sigma(), best_val_bpb=self._best_mean(records),
            last_log_tail=next((r.extra.get("log_tail", "") for r in reversed(records)
                                if r.status in (R.CRASH, R.TIMEOUT, R.ABORTED, R.INVALID)), ""),
            kept_diffs={r.id: self._diff(r.parent, r.commit) for r in kept[-10:]},
            telemetry_summary=self._telemetry_summary(records),
            harness_api=HARNESS_API,
        )

    def _diff(self, old: str, new: str) -> str:
        try:
            return self.repo.diff(old, new)
        except GitError:
            return ""

    def _telemetry_summary(self, records) -> str:
        ran = [r for r in records if r.log_path and r.status not in R.UNDECIDED]
        if not ran:
            return ""
        last = ran[-1]
        return summarize_telemetry(Path(last.log_path).with_name(TELEMETRY_FILE), last)

    def _apply(self, proposal) -> str:
        """Writes the proposal into the workspace; returns why it was refused, or ''."""
        if isinstance(proposal, ProposalError):
            return proposal.reason
        outside = self.ws.out_of_scope(proposal.files)
        if outside:
            return f"edit outside the editable files refused: {', '.join(outside)}"
        for name, text in proposal.files.items():
            if name.endswith(".py"):
                try:
                    ast.parse(text)
                except SyntaxError as error:
                    return f"{name} does not parse: line {error.lineno}: {error.msg}"
        for name, text in proposal.files.items():
            (self.ws.root / name).write_text(text)
        changed = self.repo.changed_paths()
        outside = self.ws.out_of_scope(changed)
        if outside:
            return f"edit outside the editable files refused: {', '.join(outside)}"
        if not changed:
            return "the proposal changes nothing"
        return ""

    def _finish_unrun(self, record: ExperimentRecord, proposal, reason: str) -> ExperimentRecord:
        record.extra.update(getattr(proposal, "extra", None) or {})
        if isinstance(proposal, ProposalError) and proposal.fatal:
            record.extra["fatal"] = True
            self.stop_reason = f"the agent cannot go on: {reason}"
        self.repo.reset_hard("HEAD")
        for path in self.repo.changed_paths():  # untracked files the proposal created
            (self.ws.root / path).unlink(missing_ok=True)
        record.status = R.FAILED_PROPOSAL
        record.decision_reason = reason
        if isinstance(proposal, Proposal):
            record.description = proposal.description
        record.finished_at = time.time()
        self.ledger.append(record)
        self._clear_inflight()
        self._notify(record)
        return record

    def _constants_at(self, commit: str) -> dict:
        """The target's top-level constants as run: what a sweep learns from."""
        from autoresearch.constants import read_constants

        try:
            return read_constants(self.repo.show_file(commit, self.ws.settings.experiment.target))
        except (GitError, SyntaxError, ValueError):
            return {}

    def _seed_only(self, old: str, new: str) -> bool:
        for name in self.ws.editable():
            try:
                before, after = self.repo.show_file(old, name), self.repo.show_file(new, name)
            except GitError:
                return False
            if before != after and not is_seed_only_change(before, after):
                return False
        return True

    def _run(self, record: ExperimentRecord) -> RunOutcome:
        run_dir = self.ws.run_dir(record.id)
        follower, done = None, threading.Event()
        if self.view:
            from autoresearch.live import follow_telemetry

            follower = follow_telemetry(run_dir / TELEMETRY_FILE, self.view, done)
        problems = self._data_problems()
        if problems:
            raise LoopError("the prepared data is not as it was prepared (" + "; ".join(problems[:3]) +
                            "): run `autoresearch prepare` again, then restart the loop")
        guard = self._guard()
        try:
            outcome = run_experiment(self.ws.root, run_dir, self.ws.settings.profile(), seed=record.seed,
                                     target=self.ws.settings.experiment.target, settings=self.ws.settings,
                                     files=self._files_at(record.commit), stop_event=self.stop_event,
                                     sandbox=self.sandbox, launcher=self.services.launcher,
                                     evaluator=self.services.evaluator, refs=self.references(),
                                     scratch_parent=self.services.scratch_parent)
        finally:
            done.set()
            if follower is not None:
                follower.join(timeout=2)
        record.extra.update(start=outcome.start, sandbox=outcome.sandbox, timing=outcome.timing)
        data = self._data_problems()
        changed = guard.check_and_restore() + data
        if changed:  # the run reached outside its folder: whatever it measured is not a result
            outcome.status = R.INVALID
            outcome.reason = "the run changed what it must not: " + "; ".join(changed[:5])
        if guard.code_changed or data:  # nothing later could be trusted: stop, say what to repair
            self.stop_reason = f"stopped: {outcome.reason}"
        return outcome

    def _data_problems(self) -> list[str]:
        """The prepared data checked against its manifest (cheap unless a file changed)."""
        from autoresearch.harness.prepare import load_prepared, verify_prepared

        settings = self.ws.settings
        try:
            problems = verify_prepared(load_prepared(settings.experiment.data, settings.profile().vocab_size))
        except Exception as error:  # missing or unreadable: the run itself reports it
            return [f"the prepared data cannot be checked: {error}"]
        return [f"prepared data: {p}" for p in problems]

    def _guard(self):
        from autoresearch.guard import WorkspaceGuard

        guard = WorkspaceGuard(self.ws)
        guard.snapshot()
        return guard

    def _files_at(self, commit: str) -> dict:
        """The editable files exactly as committed: what the run gets, whatever the worktree holds."""
        names = dict.fromkeys([*self.ws.editable(), self.ws.settings.experiment.target])
        files = {}
        for name in names:
            content = self.repo.show_bytes(commit, name)
            if content is not None:
                files[name] = content
        return files

    def references(self) -> dict:
        """Start-up and export CPU measured on the baseline's runs, per start kind."""
        from autoresearch.timing import References, references_from

        baselines = [r for r in self.ledger.records() if r.kind == R.BASELINE and r.status == R.KEEP]
        refs = {}
        for kind in ("warm", "cold"):
            summaries = [r.extra["timing"] for r in baselines if isinstance(r.extra.get("timing"), dict)
                         and str(r.extra.get("start", "")).split(":")[0] == kind]
            if summaries:
                refs[kind] = references_from(summaries)
        launcher = self.services.launcher
        if "warm" in refs and "cold" not in refs and launcher is not None and launcher.warm_up_cpu:
            warm = refs["warm"]  # a cold start pays the imports the launcher paid once
            refs["cold"] = References(
                startup_cpu=None if warm.startup_cpu is None else warm.startup_cpu + launcher.warm_up_cpu,
                export_cpu=warm.export_cpu)
        return refs

    def _best_mean(self, records) -> float | None:
        best = self.best_commit()
        values = measurements_of(records, best) if best else []
        return sum(values) / len(values) if values else None

    def _decide(self, record: ExperimentRecord, outcome: RunOutcome) -> None:
        for name in ("val_bpb", "trust", "training_seconds", "wall_seconds", "eval_seconds", "peak_memory_mb",
                     "mfu_percent", "total_tokens", "num_steps", "num_params", "log_path"):
            setattr(record, name, getattr(outcome, name))
        record.finished_at = time.time()
        if outcome.log_tail:
            record.extra["log_tail"] = outcome.log_tail[-4000:]
        records = self.ledger.records()
        sigma = NoiseEstimate.from_records([r for r in records if r.id != record.id] + [
            self._as_measured(record, outcome)]).sigma()
        record.noise_sigma = sigma
        best = self.best_commit()
        if outcome.status != OK:
            record.status, record.decision_reason = outcome.status, outcome.reason or outcome.status
        elif record.kind == R.BASELINE:
            record.status = R.KEEP
            record.decision_reason = "baseline" if record.repeat_of is None else "baseline repeat: noise estimate"
        else:
            record.val_bpb = outcome.val_bpb
            candidate_values = measurements_of(records, record.commit) + [outcome.val_bpb]
            decision = self.policy.decide(candidate_values, measurements_of(records, best), sigma,
                                          trust=outcome.trust, status=R.PENDING,
                                          seed_only=bool(self._original(record, records).extra.get("seed_only")))
            record.decision_reason = decision.reason
            record.status = {"keep": R.KEEP, "discard": R.DISCARD, "rerun": R.PENDING}[decision.action]
        self._settle(record, records)
        self.ledger.append(record)
        if record.kind == R.CONFIRM and record.status not in (R.PENDING, R.INTERRUPTED):
            self._finalize_pending(record)
        self._clear_inflight()
        if self.view and outcome.status == OK and record.status == R.KEEP:
            self.view.set_best(self._best_mean(self.ledger.records()), record.id)
        if self.view and sigma is not None:
            self.view.set_noise(sigma)
        self._notify(record)

    def _as_measured(self, record, outcome) -> ExperimentRecord:
        measured = ExperimentRecord.from_dict(record.to_dict())
        measured.val_bpb = outcome.val_bpb if outcome.status == OK else None
        measured.status = R.KEEP if outcome.status == OK and record.kind == R.BASELINE else R.PENDING
        if outcome.status != OK:
            measured.status = outcome.status
        return measured

    def _finalize_pending(self, verdict: ExperimentRecord) -> None:
        """A confirmation's verdict replaces the pending status of every earlier run of that commit."""
        status = verdict.status if verdict.status in (R.KEEP, R.DISCARD) else R.DISCARD
        reason = verdict.decision_reason if status == verdict.status else \
            f"confirmation run #{verdict.id} failed: {verdict.decision_reason}"
        for r in self.ledger.records():
            if r.status == R.PENDING and r.commit == verdict.commit and r.id != verdict.id:
                r.status, r.decision_reason = status, reason
                self.ledger.append(r)

    def _reconcile(self) -> None:
        """After a kill between a confirmation's record and its candidate's update."""
        for r in self.ledger.records():
            if r.kind == R.CONFIRM and r.status not in R.UNDECIDED + (R.INTERRUPTED,):
                self._finalize_pending(r)

    def _original(self, record, records) -> ExperimentRecord:
        if record.kind == R.CONFIRM and record.repeat_of is not None:
            for r in records:
                if r.id == record.repeat_of:
                    return ExperimentRecord.from_dict(r.to_dict())
        return record

    def _settle(self, record: ExperimentRecord, records) -> None:
        """Moves the branch: stays on a kept commit, back to the best otherwise."""
        if record.status == R.KEEP:
            if self.repo.head() != record.commit:
                self.repo.reset_hard(record.commit)
            return
        best = self.best_commit()
        if best:
            self.repo.reset_hard(best)

    def _mark_inflight(self, experiment_id: int, phase: str) -> None:
        path = self.ws.state_dir / INFLIGHT_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"id": experiment_id, "phase": phase, "at": time.time()}))
        os.replace(tmp, path)

    def _clear_inflight(self) -> None:
        (self.ws.state_dir / INFLIGHT_FILE).unlink(missing_ok=True)

    def _notify(self, record: ExperimentRecord) -> None:
        if self.view:
            self.view.experiment_finished(record)
        if self.on_record:
            self.on_record(self.ledger.records())

    def reevaluate(self, experiment_id: int) -> ExperimentRecord:
        """Evaluates a run's submitted model again (after an evaluator crash) and decides anew."""
        from autoresearch.runner import evaluate_run, judge_run

        self.prepare()
        record = next((r for r in self.ledger.records() if r.id == experiment_id), None)
        if record is None:
            raise LoopError(f"no experiment {experiment_id}: see `autoresearch exp log`")
        run_dir = self.ws.run_dir(experiment_id)
        if not (run_dir / "submission.json").exists():
            raise LoopError(f"experiment {experiment_id} has no submitted model in {run_dir}: it must be re-run")
        outcome = evaluate_run(self.ws.root, run_dir, timeout=self.ws.settings.profile().eval_allowance,
                               settings=self.ws.settings, sandbox=self.sandbox)
        outcome.wall_seconds = record.wall_seconds
        outcome = judge_run(outcome, record.extra.get("timing") or {})  # the time as judged when it ran
        if record.status == R.KEEP or self.best_commit() != (record.parent or self.best_commit()):
            record.extra["reeval"] = {"val_bpb": outcome.val_bpb, "status": outcome.status, "trust": outcome.trust}
            self.ledger.append(record)  # the best moved on: record the figure, decide nothing
            return record
        if record.kind != R.BASELINE and self.repo.head() != record.commit:
            self.repo.reset_hard(record.commit)
        self._decide(record, outcome)
        return record

    # --- the loop -----------------------------------------------------------------------
    def spent(self) -> tuple[float, int]:
        """LLM cost (USD) and tokens recorded so far, over every session of this workspace."""
        cost, tokens = 0.0, 0
        for r in self.ledger.records():
            cost += float(r.extra.get("cost_usd") or 0.0)
            tokens += int(r.extra.get("input_tokens") or 0) + int(r.extra.get("output_tokens") or 0)
        return cost, tokens

    def should_stop(self) -> bool:
        if self.stop_event.is_set() or self.stop_reason:
            return True
        if self.max_cost is not None or self.max_tokens is not None:
            cost, tokens = self.spent()
            if self.max_cost is not None and cost >= self.max_cost:
                self.stop_reason = f"cost cap reached: ${cost:.4f} of ${self.max_cost:.4f}"
                return True
            if self.max_tokens is not None and tokens >= self.max_tokens:
                self.stop_reason = f"token cap reached: {tokens:,} of {self.max_tokens:,}"
                return True
        if self.max_experiments is not None and self.ran >= self.max_experiments:
            return True
        return self.deadline is not None and time.time() >= self.deadline

    def run(self) -> list[ExperimentRecord]:
        self.prepare()
        with self.services:
            return self._run_jobs()

    def _run_jobs(self) -> list[ExperimentRecord]:
        done = []
        while not self.stop_event.is_set():
            job = self.next_job()
            # a candidate waiting for its confirmation is settled before the loop stops on a
            # count, time or cost limit (those runs cost no agent tokens); Ctrl-C stops at once
            if self.should_stop() and job.kind != R.CONFIRM:
                break
            record = self.execute(job)
            done.append(record)
            if record.status != R.FAILED_PROPOSAL:
                self.ran += 1
            elif self._exhausted(record):
                if self.view:
                    self.view.message(f"the agent has nothing more to propose: {record.decision_reason}")
                break
        if self.stop_reason and self.view:
            self.view.message(self.stop_reason)
        return done

    def _exhausted(self, record) -> bool:
        recent = [r for r in self.ledger.records()[-5:]]
        return len(recent) == 5 and all(r.status == R.FAILED_PROPOSAL for r in recent)


def sandbox_choice(wanted: bool | None) -> tuple[bool, str]:
    """(use the sandbox, why not): on wherever it works unless turned off; asked for and
    missing is an error that says what to install."""
    from autoresearch.sandbox import SandboxUnavailable, sandbox_available

    if wanted is False:
        return False, "turned off (--no-sandbox)"
    available, why = sandbox_available()
    if wanted and not available:
        raise SandboxUnavailable(f"--sandbox cannot be used here: {why}")
    return available, "" if available else why
