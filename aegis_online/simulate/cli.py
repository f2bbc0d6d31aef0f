"""The ``simulate`` and ``replay`` commands, as plain functions with typer options (the main app registers them).

Thin: parse and check the options, call ``simulation`` or ``replay``, print the headline table, say where the files
went. A bad option or input ends with exit code 1 and a message that names it, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from aegis_online.learn import LEARNERS

if TYPE_CHECKING:  # the simulation modules pull in scipy: import them when a command runs, not with the CLI
    from aegis_online.simulate.traffic import DataSpec

#: Tables are wider than 80 columns: keep them whole in logs and pipes (a terminal sets its own width).
console = Console(width=None if sys.stdout.isatty() else 120)
#: Runs shorter than this many learner-steps finish before a progress bar would help.
PROGRESS_MIN_WORK = 20_000


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]{escape(message)}[/red]", soft_wrap=True)
    return typer.Exit(code=1)


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


@contextmanager
def progress_bar(total: int, description: str) -> Iterator[Callable[[str, int], None]]:
    """A progress bar for ``total`` units of work, shown only for long runs; yields ``advance(label, units)``."""
    if total < PROGRESS_MIN_WORK:
        yield lambda label, n: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(description, total=total)

        def advance(label: str, n: int) -> None:
            progress.update(task, advance=n, description=f"{description}: {label}")

        yield advance


def print_learners(report: dict[str, Any], title: str) -> None:
    """The learners against the oracles, then the experts, as compact rich tables (full numbers: summary.md)."""
    from aegis_online.simulate.report import fmt, pct

    caption = "regret: loss - best fixed expert; regret m, ratio m: against the best sequence with m switches"
    table = Table(title=title, caption=caption)
    for name in ("learner", "loss", "regret", "regret m", "ratio m", "FPR", "recovery", "calls"):
        table.add_column(name, justify="left" if name == "learner" else "right")
    for name, m in report["learners"].items():
        recovery = ", ".join("never" if r is None else f"{r:,.0f}" for r in m["recovery_steps"]) or "-"
        table.add_row(
            name,
            fmt(m["cumulative_loss"], 0),
            fmt(m["regret_best_fixed"], 0),
            fmt(m["regret_best_switching"], 0),
            fmt(m["ratio_to_best_switching"], 3),
            pct(m["false_positive_rate"]),
            recovery,
            fmt(m["expert_calls"], 0),
        )
    oracles = report["oracles"]
    table.add_row("fixed expert", fmt(oracles["best_fixed_loss"], 0), "0")
    table.add_row(f"m={oracles['switches']} switches", fmt(oracles["best_switching_loss"], 0), "", "0", "1.000")
    console.print(table)
    experts = Table(title="experts and the plain average")
    for name in ("expert", "loss", "FPR", "recall", "F1", "AUPRC"):
        experts.add_column(name, justify="left" if name == "expert" else "right")
    for name, m in {**report["experts"], "uniform average": report["baselines"]["uniform"]}.items():
        experts.add_row(
            name,
            fmt(m["cumulative_loss"], 0),
            pct(m["false_positive_rate"]),
            pct(m["recall"]),
            fmt(m["f1_macro"], 3),
            fmt(m["auprc_macro"], 3),
        )
    console.print(experts)
    for name, b in report.get("bandit", {}).items():
        ratio = b["loss_ratio_to_full_information"]
        console.print(
            f"bandit {name}: {b['k']} experts per request, {fmt(b['expert_calls'], 0)} calls instead of "
            f"{fmt(b['full_information_calls'], 0)} ({pct(b['call_savings'])} saved); loss "
            f"{fmt(ratio, 3)} x the full-information {b['full_information_learner'] or '-'} learner",
            soft_wrap=True,
        )


def simulate_command(
    scenario: str = typer.Option(..., "--scenario", help="Scenario name (a file in simulators/) or a YAML file."),
    steps: int | None = typer.Option(None, "--steps", min=10, help="Requests to simulate (default: the scenario's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same run."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="Independent replicas of the run, averaged."),
    learners: str = typer.Option(",".join(LEARNERS), "--learners", help="Comma-separated learners."),
    out: Path = typer.Option(Path("simulate-out"), "--out", file_okay=False, help="Folder for report and plots."),
    bandit_k: int | None = typer.Option(None, "--bandit-k", min=1, help="Experts per request in bandit mode."),
    bandit_always: str | None = typer.Option(
        None, "--bandit-always", help="Comma-separated experts queried on every request in bandit mode."
    ),
    switches: int | None = typer.Option(
        None, "--switches", min=0, help="Switches per (tenant, category) for the oracle (default: one per drift)."
    ),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the PNG plots."),
) -> None:
    """Run a drift scenario through the learners; write report.json, summary.md and plots into --out."""
    from aegis_online.simulate.scenario import ScenarioError, load_scenario
    from aegis_online.simulate.simulation import parse_learners, run_simulation, write_outputs

    try:
        story = load_scenario(scenario)
        names = parse_learners(learners)
    except (ScenarioError, ValueError) as error:
        raise _fail(str(error)) from None
    horizon = steps or story.steps
    try:
        with progress_bar(horizon * len(names) * replicas, f"simulating {story.name}") as advance:
            result = run_simulation(
                story,
                steps=horizon,
                seed=seed,
                replicas=replicas,
                learners=names,
                bandit_k=bandit_k,
                bandit_always=_names(bandit_always),
                switches=switches,
                progress=lambda name, n: advance(name, n * replicas),
            )
    except ValueError as error:
        raise _fail(str(error)) from None
    files = write_outputs(result, out, with_plots=plots)
    print_learners(result.report, f"{story.name}: {horizon:,} requests, seed {seed}")
    console.print(f"wrote {', '.join(escape(str(p)) for p in files)}", soft_wrap=True)


def _data_specs(
    data: list[Path],
    data_format: str | None,
    limit: int | None,
    text_column: str | None,
    label: list[str] | None,
    overall_column: str | None,
) -> list[DataSpec]:
    from aegis_online.datasets import detect_format
    from aegis_online.simulate.traffic import DataSpec

    options: dict[str, Any] = {}
    if text_column or label or overall_column:
        pairs = [item.split("=", 1) for item in label or []]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"--label takes COLUMN=CATEGORY, got {label}")
        options = {"text_column": text_column or "text", "label_columns": dict(pairs)}
        if overall_column:
            options["overall_column"] = overall_column
    specs = []
    for path in data:
        if not path.exists():
            raise ValueError(f"{path}: no such file")
        generic = (data_format or detect_format(path, generic=bool(options)) or "") in ("jsonl", "csv")
        specs.append(DataSpec(path=path, format=data_format, options=options if generic else {}, limit=limit))
    return specs


def replay_command(
    data: list[Path] = typer.Option(..., "--data", help="Labelled data file; repeat to chain several (a shift)."),
    data_format: str | None = typer.Option(
        None, "--format", help="Format of every --data file (default: detected from each file's name or header)."
    ),
    experts: str | None = typer.Option(
        None, "--experts", help="Comma-separated catalog experts (default: the catalog's CPU experts)."
    ),
    feedback_delay: int = typer.Option(0, "--feedback-delay", min=0, help="Requests between a decision and its label."),
    url: str | None = typer.Option(
        None,
        "--url",
        help="Replay against a running service (POST /v1/moderate, /v1/feedback) instead of in process; its learner "
        "is reported as 'service'.",
    ),
    out: Path = typer.Option(Path("replay-out"), "--out", file_okay=False, help="Folder for report and plots."),
    learners: str = typer.Option("default,hedge", "--learners", help="Comma-separated learners (in process)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Rows taken from each file (after shuffling)."),
    shuffle: bool = typer.Option(True, "--shuffle/--no-shuffle", help="Shuffle the rows within each file."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffle, feedback sampling and bandit selection."),
    categories: str | None = typer.Option(
        None, "--categories", help="Comma-separated category ids (default: those the data labels)."
    ),
    feedback_share: float = typer.Option(
        1.0, "--feedback-share", min=0.0, max=1.0, help="Share of requests whose label is fed back."
    ),
    tenant: str = typer.Option("default", "--tenant", help="Tenant of every request."),
    api_key_env: str = typer.Option(
        "AEGIS_API_KEY", "--api-key-env", help="Environment variable holding the service's API key (with --url)."
    ),
    bandit_k: int | None = typer.Option(None, "--bandit-k", min=1, help="Experts per request for exp3-ix."),
    bandit_always: str | None = typer.Option(None, "--bandit-always", help="Experts exp3-ix queries every time."),
    heads: Path | None = typer.Option(None, "--heads", exists=True, dir_okay=False, help="MiniLM heads (.npz)."),
    cache: Path | None = typer.Option(
        None, "--cache", dir_okay=False, help="Expert-output cache (default: ~/.cache/aegis-online/...)."
    ),
    no_cache: bool = typer.Option(False, "--no-cache", help="Keep expert outputs in memory only."),
    text_column: str | None = typer.Option(None, help="Text column of generic jsonl/csv files."),
    label: list[str] | None = typer.Option(None, "--label", help="COLUMN=CATEGORY for generic jsonl/csv files."),
    overall_column: str | None = typer.Option(None, help="Overall safe/unsafe column of generic jsonl/csv files."),
    switches: int | None = typer.Option(
        None, "--switches", min=0, help="Switches per category for the oracle (default: one per data-set boundary)."
    ),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the PNG plots."),
) -> None:
    """Replay labelled traffic through the engine (or a service) with delayed feedback; write the report."""
    from aegis_online.client import ClientError
    from aegis_online.simulate.cache import ReplayCache, default_cache_path
    from aegis_online.simulate.replay_run import (
        ReplayConfig,
        build_catalog_experts,
        run_replay,
        run_replay_http,
        write_replay_outputs,
    )

    try:
        config = ReplayConfig(
            data=_data_specs(data, data_format, limit, text_column, label, overall_column),
            learners=_names(learners) or [],
            categories=_names(categories),
            tenant=tenant,
            feedback_delay=feedback_delay,
            feedback_share=feedback_share,
            bandit_k=bandit_k,
            bandit_always=_names(bandit_always) or [],
            shuffle=shuffle,
            seed=seed,
            switches=switches,
        )
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            tasks: dict[str, Any] = {}

            def report(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=total)
                progress.update(tasks[stage], completed=done, total=total)

            if url is not None:
                if experts or heads or learners != "default,hedge":
                    console.print(
                        "[yellow]--url: the service runs its own experts and learner; "
                        "--experts, --heads and --learners are ignored[/yellow]"
                    )
                result = run_replay_http(config, url, progress=report, api_key=os.environ.get(api_key_env) or None)
            else:
                chosen = build_catalog_experts(_names(experts), heads)
                store = ReplayCache(None if no_cache else (cache or default_cache_path()))
                result = run_replay(config, chosen, store, progress=report)
    except (OSError, ValueError, KeyError, RuntimeError, ClientError) as error:
        raise _fail(str(error.args[0]) if isinstance(error, KeyError) else str(error)) from None
    files = write_replay_outputs(result, out, with_plots=plots)
    rows = len(result.traffic.rows)
    print_learners(result.report, f"replay: {rows:,} requests from {len(result.traffic.segments)} data set(s)")
    print_segments(result.report)
    for name, m in result.report["learners"].items():
        fb = m.get("feedback", {})
        console.print(
            f"{name}: feedback sent {fb.get('sent', 0):,}, applied {fb.get('applied', 0):,}"
            + (f", queued {fb['queued']:,} (the service applies it later)" if fb.get("queued") else "")
            + (f", duplicate {fb['duplicate']:,}" if fb.get("duplicate") else "")
            + (f", rejected {fb['rejected']}" if fb.get("rejected") else "")
        )
    console.print(f"wrote {', '.join(escape(str(p)) for p in files)}", soft_wrap=True)


def print_segments(report: dict[str, Any]) -> None:
    """False-positive rate and recall per data set, for every predictor."""
    from aegis_online.simulate.report import pct

    if len(report.get("segments", [])) < 2:
        return
    table = Table(title="per data set: FPR on benign / recall on unsafe")
    table.add_column("predictor")
    segments = [s["name"] for s in report["segments"]]
    for seg in segments:
        table.add_column(seg, justify="right")
    predictors = {**report["learners"], **report["experts"], "uniform": report["baselines"]["uniform"]}
    for name, m in predictors.items():
        cells = []
        for seg in segments:
            part = m.get("per_segment", {}).get(seg, {})
            cells.append(f"{pct(part.get('false_positive_rate'))} / {pct(part.get('recall'))}")
        table.add_row(name, *cells)
    console.print(table)
