"""The `autoresearch` command: prepare, init, train, run, exp, status, report."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from autoresearch import __version__


class CliError(Exception):
    """An error meant for the user: printed without a traceback, exit code 2."""


def _add_workspace(p: argparse.ArgumentParser, default=None) -> None:
    p.add_argument("--workspace", "-w", type=Path, default=default,
                   help="the research workspace (default: the current folder)")


def _add_sandbox(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--sandbox", dest="sandbox", action="store_true", default=None,
                       help="require the sandbox (the default wherever it works: Linux with bubblewrap or "
                            "user namespaces): runs and the evaluator without network, with an allow-listed "
                            "filesystem that holds neither the validation data nor the workspace")
    group.add_argument("--no-sandbox", dest="sandbox", action="store_false",
                       help="run without the sandbox (see THREATS.md for what is then not guaranteed)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoresearch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"autoresearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="download or read the data, train the tokenizer, tokenise once")
    p.add_argument("--data", default=None, help="builtin (offline default), climbmix, or a path to "
                   ".txt/.jsonl/.parquet files (default: the profile's)")
    p.add_argument("--profile", default="auto", help="auto | cpu | gpu: sets the vocabulary size")
    p.add_argument("--base-url", default=None, help="climbmix: where the parquet shards are served")
    p.add_argument("--shards", type=int, default=10, help="climbmix: training shards to download")

    p = sub.add_parser("init", help="create a research workspace (a git repo)")
    p.add_argument("directory", type=Path)
    p.add_argument("--profile", default="auto", help="auto (gpu if CUDA is present, else cpu) | cpu | gpu")
    p.add_argument("--data", default=None, help="builtin | climbmix | PATH (default: the profile's)")
    p.add_argument("--budget", type=float, default=None, help="seconds of training per experiment "
                   "(default: the profile's)")
    p.add_argument("--tag", default=None, help="name of the branch autoresearch/<tag> (default: today's date)")

    p = sub.add_parser("train", help="run train.py once under the budget and evaluate it (sealed)")
    _add_workspace(p)
    p.add_argument("--seed", type=int, default=42, help="seed passed to train.py")
    _add_sandbox(p)

    p = sub.add_parser("run", help="the research loop: propose, run, evaluate, keep or discard, repeat")
    _add_workspace(p)
    p.add_argument("--max-experiments", type=int, default=None, help="stop after N experiments (this session)")
    p.add_argument("--hours", type=float, default=None, help="stop after H hours")
    p.add_argument("--agent", default=None, help="sweep (offline, default) | openai | anthropic | command")
    p.add_argument("--model", default=None, help="LLM agents: the model name (or AUTORESEARCH_MODEL)")
    p.add_argument("--base-url", default=None, help="LLM agents: the API's base URL, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--api-key", default=None, help="LLM agents: the key (default: OPENAI_API_KEY / ANTHROPIC_API_KEY)")
    p.add_argument("--edit-format", default=None, help="LLM agents: search-replace (default) | whole-file")
    p.add_argument("--structured", action="store_true",
                   help="LLM agents: reply as JSON {constant, value, reason} (for small local models)")
    p.add_argument("--command", dest="agent_command", default=None,
                   help="command agent: a preset (claude, codex, aider, gemini) or a template with {prompt}")
    p.add_argument("--max-cost", type=float, default=None, help="stop when the LLM cost reaches this many USD")
    p.add_argument("--max-tokens", type=int, default=None, help="stop when the LLM tokens reach this many")
    _add_sandbox(p)
    p.add_argument("--cold-start", action="store_true",
                   help="start every run in a fresh interpreter (default: fork runs from a pre-warmed launcher "
                        "on Linux without a GPU; see warm_start in autoresearch.toml)")
    p.add_argument("--plain", action="store_true", help="plain log lines instead of the live panel")

    p = sub.add_parser("status", help="show a running or finished workspace")
    _add_workspace(p)

    p = sub.add_parser("report", help="write progress.png and report.md")
    _add_workspace(p)

    p = sub.add_parser("exp", help="one experiment at a time, for an agent that drives the loop")
    _add_workspace(p)
    exp = p.add_subparsers(dest="exp_command", required=True)
    q = exp.add_parser("run", help="commit the current edit, run it, evaluate, decide, record")
    q.add_argument("-d", "--description", required=True, help="one line: what this experiment tries")
    q = exp.add_parser("log", help="the history of experiments")
    q = exp.add_parser("show", help="one experiment's record and log")
    q.add_argument("id", type=int)
    q = exp.add_parser("reeval", help="evaluate a submitted model again without retraining")
    q.add_argument("id", type=int)
    for sub_parser in exp.choices.values():  # -w works before or after the exp command
        _add_workspace(sub_parser, default=argparse.SUPPRESS)
    return parser


def cmd_prepare(args) -> int:
    from autoresearch.harness.prepare import prepare
    from autoresearch.harness.profiles import get_profile

    profile = get_profile(args.profile)
    data = args.data or profile.default_data
    started = time.monotonic()
    prepared = prepare(data, profile.vocab_size, base_url=args.base_url, num_train_shards=args.shards)
    print(f"prepared {data} (vocab {profile.vocab_size}) in {time.monotonic() - started:.1f} s: {prepared.root}")
    return 0


def cmd_init(args) -> int:
    from autoresearch.workspace import init_workspace

    tag = args.tag or time.strftime("%b%d").lower()
    root = init_workspace(args.directory, profile=args.profile, data=args.data, budget=args.budget, tag=tag)
    print(f"workspace ready: {root}\nnext: cd {root} && autoresearch train   (one run)   "
          f"or   autoresearch run   (the research loop)")
    return 0


def cmd_train(args) -> int:
    from autoresearch.runner import OK, run_experiment
    from autoresearch.workspace import Workspace

    from autoresearch.loop import sandbox_choice

    ws = Workspace.open(args.workspace)
    sandbox, why_not = sandbox_choice(args.sandbox)
    if not sandbox and args.sandbox is None:
        print(f"note: training without the sandbox: {why_not}", file=sys.stderr)
    run_dir = ws.state_dir / "runs" / time.strftime("train-%Y%m%d-%H%M%S")
    outcome = run_experiment(ws.root, run_dir, ws.settings.profile(), seed=args.seed, settings=ws.settings,
                             target=ws.settings.experiment.target, on_line=print, sandbox=sandbox)
    print(outcome.summary)
    print(f"log: {outcome.log_path}")
    return 0 if outcome.status == OK else 1


def _open_loop(args, view=None, stop_event=None):
    from autoresearch.agents import make_agent
    from autoresearch.loop import ResearchLoop
    from autoresearch.workspace import Workspace

    ws = Workspace.open(args.workspace)
    options = {name: getattr(args, name, None) for name in ("model", "base_url", "api_key", "edit_format")}
    try:
        agent = make_agent(getattr(args, "agent", None) or ws.settings.agent.name,
                           seq_len=ws.settings.profile().max_seq_len, workspace_root=ws.root,
                           structured=getattr(args, "structured", False),
                           command=getattr(args, "agent_command", None),
                           **{k: v for k, v in options.items() if v is not None})
    except ValueError as error:  # a missing model, key or preset: the user's to fix
        raise CliError(str(error)) from None
    return ResearchLoop(ws, agent, view=view, max_experiments=getattr(args, "max_experiments", None),
                        hours=getattr(args, "hours", None), stop_event=stop_event,
                        max_cost=getattr(args, "max_cost", None), max_tokens=getattr(args, "max_tokens", None),
                        sandbox=getattr(args, "sandbox", None),
                        warm_start="off" if getattr(args, "cold_start", False) else None,
                        on_record=lambda records: _refresh_report(ws, records))


def _refresh_report(ws, records) -> None:
    from autoresearch.policy import NoiseEstimate
    from autoresearch.report import write_report

    write_report(records, ws.root, title=ws.branch, noise_sigma=NoiseEstimate.from_records(records).sigma())


def cmd_run(args) -> int:
    import signal
    import threading

    from autoresearch.live import make_view
    from autoresearch.report import BackgroundRefresh

    stop = threading.Event()
    view = make_view(plain=args.plain)

    def on_signal(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        view.message("stopping: the running experiment is stopped and recorded as interrupted "
                     "(press Ctrl-C again to quit at once)")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    loop = _open_loop(args, view=view, stop_event=stop)
    if not loop.sandbox:
        view.message(f"runs are not sandboxed: {loop.sandbox_why_not}. Without the sandbox a run can reach "
                     "the validation data and the workspace; see THREATS.md")
    # drawn in the background: the plot is made while the next run starts, not before it
    reports = BackgroundRefresh(lambda records: _refresh_report(loop.ws, records))
    loop.on_record = reports.request
    view.start()
    try:
        loop.run()
    finally:
        view.stop()
        reports.request(loop.ledger.records())  # the final state, drawn before close returns
        reports.close()
    print(f"results: {loop.ws.root / 'results.tsv'}\nreport:  {loop.ws.root / 'report.md'}, "
          f"{loop.ws.root / 'progress.png'}")
    return 0


def cmd_status(args) -> int:
    from rich.console import Console

    from autoresearch.ledger import Ledger
    from autoresearch.live import render_status
    from autoresearch.workspace import Workspace

    ws = Workspace.open(args.workspace)
    records = Ledger(ws.root).records()
    Console().print(render_status(records, _running_experiment(ws, records)))
    return 0


def _running_experiment(ws, records) -> dict | None:
    """The experiment in flight, with its latest telemetry, for the status panel."""
    import json

    from autoresearch.telemetry import read_telemetry

    inflight = ws.state_dir / "inflight.json"
    try:
        state = json.loads(inflight.read_text())
    except (OSError, ValueError):
        return None
    record = next((r for r in records if r.id == state.get("id")), None)
    running = {"id": state.get("id"), "budget_seconds": ws.settings.profile().time_budget,
               "description": record.description if record else state.get("phase", ""),
               "started_at": record.started_at if record else state.get("at")}
    rows = read_telemetry(ws.run_dir(state["id"]) / "telemetry.jsonl") if isinstance(state.get("id"), int) else []
    if rows:
        running.update(rows[-1])
    return running


def cmd_report(args) -> int:
    from autoresearch.ledger import Ledger
    from autoresearch.workspace import Workspace

    ws = Workspace.open(args.workspace)
    _refresh_report(ws, Ledger(ws.root).records())
    print(f"wrote {ws.root / 'report.md'} and {ws.root / 'progress.png'}")
    return 0


def cmd_exp(args) -> int:
    from autoresearch import exp_commands

    return exp_commands.run(args, _open_loop(args))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS.get(args.command)
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # user-facing errors from every layer end here
        if _is_user_error(error):
            print(f"autoresearch: error: {error}", file=sys.stderr)
            return 2
        raise


def _is_user_error(error: Exception) -> bool:
    names = {"CliError", "ConfigError", "WorkspaceError", "GitError", "DataError", "LedgerError", "LoopError",
             "SandboxUnavailable"}
    if isinstance(error, ValueError) and str(error).startswith("unknown profile"):
        return True
    return type(error).__name__ in names or isinstance(error, (FileNotFoundError, PermissionError))


COMMANDS = {"prepare": cmd_prepare, "init": cmd_init, "train": cmd_train, "run": cmd_run,
            "status": cmd_status, "report": cmd_report, "exp": cmd_exp}

if __name__ == "__main__":
    sys.exit(main())
