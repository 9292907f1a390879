"""`autoresearch exp ...`: the loop one step at a time, for an agent that drives it itself."""
from __future__ import annotations

from pathlib import Path

from autoresearch import records as R
from autoresearch.agents.base import Proposal
from autoresearch.loop import Job, LoopError, ResearchLoop
from autoresearch.policy import measurements_of

MAX_CONFIRM_RUNS = 5  # one `exp run` settles its candidate; this bounds the re-runs


def run(args, loop: ResearchLoop) -> int:
    handler = {"run": exp_run, "log": exp_log, "show": exp_show, "reeval": exp_reeval}[args.exp_command]
    return handler(args, loop)


def exp_run(args, loop: ResearchLoop) -> int:
    """Commits the current edit, runs it (after any due baseline or confirmation), decides, records."""
    edited = loop.ws.read_editable()
    outside = loop.ws.out_of_scope(loop.repo.changed_paths())
    if outside:
        raise LoopError(f"only {', '.join(loop.ws.editable())} may change; revert {', '.join(outside)} and retry")
    (loop.ws.state_dir / "inflight.json").write_text('{"phase": "agent edit"}')  # our dirt, for prepare()
    loop.prepare()  # the branch is now at the best commit, the edit set aside in `edited`
    _run_due_jobs(loop)
    record = loop.execute(Job(R.CANDIDATE), proposal=Proposal(args.description, edited))
    for _ in range(MAX_CONFIRM_RUNS):
        if record.status != R.PENDING:
            break
        _print_record(loop, record)
        record = loop.execute(loop.next_job())
    final = next(r for r in loop.ledger.records() if r.id == (record.repeat_of or record.id))
    _print_record(loop, final if record.kind == R.CONFIRM else record)
    return 0 if record.status in (R.KEEP, R.DISCARD) else 1


def _run_due_jobs(loop: ResearchLoop) -> None:
    """The baseline (and its noise repeats) and pending confirmations come before a new candidate."""
    while True:
        job = loop.next_job()
        if job.kind == R.CANDIDATE:
            return
        record = loop.execute(job)
        _print_record(loop, record)
        if record.status == R.INTERRUPTED:
            raise LoopError("interrupted")


def _print_record(loop: ResearchLoop, record) -> None:
    best_values = measurements_of(loop.ledger.records(), loop.best_commit() or "")
    best = sum(best_values) / len(best_values) if best_values else None
    delta = "" if record.val_bpb is None or best is None else f" (best {best:.6f})"
    value = "none" if record.val_bpb is None else f"{record.val_bpb:.6f}"
    print(f"experiment {record.id} [{record.kind}] {record.status}: val_bpb {value}{delta}")
    print(f"  reason: {record.decision_reason}")
    if record.log_path:
        print(f"  log: {record.log_path}")
    if record.extra.get("log_tail") and record.status not in (R.KEEP, R.DISCARD, R.PENDING):
        print("  last lines of the log:\n" + "\n".join("    " + line for line in
                                                      record.extra["log_tail"].splitlines()[-15:]))


def exp_log(args, loop: ResearchLoop) -> int:
    rows = loop.ledger.records()
    if not rows:
        print("no experiments yet")
        return 0
    print(f"{'id':>4}  {'kind':9} {'status':15} {'val_bpb':>9}  {'seed':>5}  description / reason")
    for r in rows:
        value = "-" if r.val_bpb is None else f"{r.val_bpb:.6f}"
        print(f"{r.id:>4}  {r.kind:9} {r.status:15} {value:>9}  {r.seed if r.seed is not None else '-':>5}  "
              f"{r.description}  ({r.decision_reason})")
    return 0


def exp_show(args, loop: ResearchLoop) -> int:
    record = next((r for r in loop.ledger.records() if r.id == args.id), None)
    if record is None:
        raise LoopError(f"no experiment {args.id}: see `autoresearch exp log`")
    for key, value in record.to_dict().items():
        if key != "extra":
            print(f"{key}: {value}")
    if record.parent and record.commit and record.parent != record.commit:
        print("\ndiff against its parent:\n" + loop.repo.diff(record.parent, record.commit))
    if record.log_path and Path(record.log_path).exists():
        print(f"\nlog ({record.log_path}):\n" + Path(record.log_path).read_text()[-20000:])
    return 0


def exp_reeval(args, loop: ResearchLoop) -> int:
    record = loop.reevaluate(args.id)
    _print_record(loop, record)
    return 0
