"""The ``simulate``, ``replay`` and ``eval`` commands, as plain functions with typer options (the main app registers
them); ``replay`` and ``eval`` share their data options (defined once below, parsed by ``data_options``).

Thin: parse and check the options, call ``simulation``, ``replay`` or ``evaluation``, print the headline table, say
where the files went. A bad option or input ends with exit code 1 and a message that names it, never a traceback.
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

from aegis_online.learn import DEFAULT_LEARNER, LEARNERS
from aegis_online.learn.escalation import EscalationRule

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


def _calls_by_tier(tiers: dict[str, dict[str, float]]) -> str:
    """``cheap a 3000, b 2990; expensive g 1200``: one line, so the summary says which guard took the calls."""
    from aegis_online.simulate.report import fmt

    return "; ".join(
        f"{tier} " + ", ".join(f"{name} {fmt(calls, 0)}" for name, calls in experts.items())
        for tier, experts in tiers.items()
    )


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
    for name, c in report.get("cascade", {}).items():
        console.print(
            f"cascade {name}: escalated {pct(c['escalation_rate'])} of requests (budget: "
            f"{pct(c['target_escalation_rate'])} of requests' worth of escalations); "
            f"{fmt(c['expensive_calls'], 0)} expensive calls instead of "
            f"{fmt(c['full_information_expensive_calls'], 0)} ({pct(c['expensive_calls_saved'])} saved); loss "
            f"{fmt(c['loss_ratio'], 3)} x {c['full_information_learner'] or '-'} with every expert; calls per "
            f"expert: {_calls_by_tier(c['calls_by_tier'])}",
            soft_wrap=True,
        )
    for name, b in report.get("bandit", {}).items():
        ratio = b["loss_ratio_to_full_information"]
        console.print(
            f"bandit {name}: {b['k']} experts per request, {fmt(b['expert_calls'], 0)} calls instead of "
            f"{fmt(b['full_information_calls'], 0)} ({pct(b['call_savings'])} saved); loss "
            f"{fmt(ratio, 3)} x the full-information {b['full_information_learner'] or '-'} learner",
            soft_wrap=True,
        )


# -- options simulate and replay share ----------------------------------------------------------------------------
CASCADE_OPTION = typer.Option(
    None,
    "--cascade",
    help="Comma-separated expensive experts: each learner also runs as <learner>+cascade, calling them only when the "
    "others' predicted loss is high (replay: the engine in cascade mode); the report's 'cascade' compares it with "
    "the learner calling all.",
)
CASCADE_TARGET_OPTION = typer.Option(
    0.3,
    "--cascade-target",
    min=0.0,
    max=1.0,
    help="The escalation rate the cascade's cut is learned toward, counted in expensive calls: an escalation "
    "that also calls an explored or hedged expert counts for more.",
)
CASCADE_HEDGE_OPTION = typer.Option(
    EscalationRule.hedge_share,
    "--cascade-hedge-share",
    min=0.0,
    max=1.0,
    help="An escalation also calls each other expensive expert whose share of the weight it and the chosen one hold, "
    "times how far apart their scores have lain, reaches this (0: never; the service's cascade.hedge_share).",
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
    cascade: str | None = CASCADE_OPTION,
    cascade_target: float = CASCADE_TARGET_OPTION,
    cascade_hedge_share: float = CASCADE_HEDGE_OPTION,
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
    runs = len(names) * (2 if cascade else 1)
    try:
        with progress_bar(horizon * runs * replicas, f"simulating {story.name}") as advance:
            result = run_simulation(
                story,
                steps=horizon,
                seed=seed,
                replicas=replicas,
                learners=names,
                bandit_k=bandit_k,
                bandit_always=_names(bandit_always),
                switches=switches,
                cascade=_names(cascade),
                cascade_target=cascade_target,
                cascade_hedge_share=cascade_hedge_share,
                progress=lambda name, n: advance(name, n * replicas),
            )
    except ValueError as error:
        raise _fail(str(error)) from None
    files = write_outputs(result, out, with_plots=plots)
    print_learners(result.report, f"{story.name}: {horizon:,} requests, seed {seed}")
    console.print(f"wrote {', '.join(escape(str(p)) for p in files)}", soft_wrap=True)


# -- options replay and eval share (one definition each; ``data_options`` parses them) ----------------------------
DATA_OPTION = typer.Option(
    [],
    "--data",
    help="Labelled data file; repeat for several (replay chains them: a shift). A file can carry its own column map "
    "after '::': PATH::text=COL,label=COL:CATEGORY,overall=COL,format=F (label repeatable; it replaces the global "
    "--text-column/--label/--overall-column for that file).",
)
FORMAT_OPTION = typer.Option(
    None, "--format", help="Format of every --data file (default: detected from each file's name or header)."
)
LIMIT_OPTION = typer.Option(None, "--limit", min=1, help="Rows taken from each file (after a seeded shuffle).")
TEXT_COLUMN_OPTION = typer.Option(None, "--text-column", help="Text column of generic jsonl/csv files.")
LABEL_OPTION = typer.Option(None, "--label", help="COLUMN=CATEGORY for generic jsonl/csv files; repeatable.")
OVERALL_COLUMN_OPTION = typer.Option(
    None, "--overall-column", help="Overall safe/unsafe column of generic jsonl/csv files."
)
MISSING_AS_SAFE_OPTION = typer.Option(
    False,
    "--missing-as-safe",
    help="A missing label counts as safe (OpenAI moderation: a row with no code set is benign, the set's own "
    "convention; generic files: a row with no 1 among its label columns is safe).",
)
HELD_OUT_ROWS_OPTION = typer.Option(
    False,
    "--held-out-rows",
    help="Read only the rows of each file that the shipped heads were not trained on (one in ten, by a hash of the "
    "text: datasets.held_out), so that lexical-heads' and minilm-heads' figures on the shared sets are not "
    "in-sample. A head you trained yourself with --data on the same file saw them.",
)
EXPERTS_OPTION = typer.Option(
    None, "--experts", help="Comma-separated catalog experts (default: the catalog's CPU experts)."
)
HEADS_OPTION = typer.Option(None, "--heads", exists=True, dir_okay=False, help="MiniLM heads (.npz).")
CACHE_OPTION = typer.Option(
    None, "--cache", dir_okay=False, help="Expert-output cache (default: ~/.cache/aegis-online/...)."
)
NO_CACHE_OPTION = typer.Option(False, "--no-cache", help="Keep expert outputs in memory only.")


def _data_specs(
    data: list[str],
    data_format: str | None,
    limit: int | None,
    text_column: str | None,
    label: list[str] | None,
    overall_column: str | None,
    missing_as_safe: bool = False,
    held_out_rows: bool = False,
) -> list[DataSpec]:
    from aegis_online.simulate.data_options import data_specs

    return data_specs(
        data,
        data_format=data_format,
        limit=limit,
        text_column=text_column,
        label=label,
        overall_column=overall_column,
        missing_as_safe=missing_as_safe,
        held_out_rows=held_out_rows,
    )


@contextmanager
def stage_progress() -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar with one task per stage; yields ``report(stage, done, total)``."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        yield report


def replay_command(
    data: list[str] = DATA_OPTION,
    data_format: str | None = FORMAT_OPTION,
    experts: str | None = EXPERTS_OPTION,
    feedback_delay: int = typer.Option(0, "--feedback-delay", min=0, help="Requests between a decision and its label."),
    url: str | None = typer.Option(
        None,
        "--url",
        help="Replay against a running service (POST /v1/moderate, /v1/feedback) instead of in process; its learner "
        "is reported as 'service'.",
    ),
    out: Path = typer.Option(Path("replay-out"), "--out", file_okay=False, help="Folder for report and plots."),
    learners: str = typer.Option("default,hedge", "--learners", help="Comma-separated learners (in process)."),
    limit: int | None = LIMIT_OPTION,
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
    cascade: str | None = CASCADE_OPTION,
    cascade_target: float = CASCADE_TARGET_OPTION,
    cascade_hedge_share: float = CASCADE_HEDGE_OPTION,
    heads: Path | None = HEADS_OPTION,
    cache: Path | None = CACHE_OPTION,
    no_cache: bool = NO_CACHE_OPTION,
    text_column: str | None = TEXT_COLUMN_OPTION,
    label: list[str] | None = LABEL_OPTION,
    overall_column: str | None = OVERALL_COLUMN_OPTION,
    missing_as_safe: bool = MISSING_AS_SAFE_OPTION,
    held_out_rows: bool = HELD_OUT_ROWS_OPTION,
    switches: int | None = typer.Option(
        None, "--switches", min=0, help="Switches per category for the oracle (default: one per data-set boundary)."
    ),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the PNG plots."),
    tenant_column: str | None = typer.Option(
        None,
        "--tenant-column",
        help="Multi-tenant replay: send each row as the tenant named in this column of its data file; the row's "
        "labels are that tenant's (a text two tenants judge differently appears once per tenant). Replays the "
        "predictors adaptive, fixed and global_only (--learners is ignored) and reports report.json's "
        "tenants.<tenant>.<predictor>.",
    ),
    policy: list[Path] = typer.Option(
        [],
        "--policy",
        help="A tenant's policy (YAML or JSON of a TenantPolicy naming its tenant); repeat, one per tenant. A "
        "tenant without one gets the default policy; a policy naming a tenant absent from the data is an error.",
    ),
    policy_change: list[str] = typer.Option(
        [],
        "--policy-change",
        help="ROW:FILE: from request ROW on (0-based, in replay order: after shuffling and chaining) the policy in "
        "FILE replaces that of the tenant it names; repeatable.",
    ),
    scenario: str | None = typer.Option(
        None,
        "--scenario",
        help="A multi-tenant replay scenario (a name in simulators/replay/ or a YAML file): data, tenant column, "
        "policies and changes; the options above add to it.",
    ),
    window: int | None = typer.Option(
        None, "--window", min=1, help="Multi-tenant: labels in the rolling-F1 window (default 100)."
    ),
) -> None:
    """Replay labelled traffic through the engine (or a service) with delayed feedback; write the report."""
    if tenant_column is not None or scenario is not None or policy or policy_change:
        _replay_tenants(
            data=data,
            data_format=data_format,
            limit=limit,
            text_column=text_column,
            label=label,
            overall_column=overall_column,
            missing_as_safe=missing_as_safe,
            held_out_rows=held_out_rows,
            tenant_column=tenant_column,
            policy=policy,
            policy_change=policy_change,
            scenario=scenario,
            window=window,
            experts=experts,
            heads=heads,
            cache=cache,
            no_cache=no_cache,
            options={
                "url": url,
                "feedback_delay": feedback_delay,
                "feedback_share": feedback_share,
                "shuffle": shuffle,
                "seed": seed,
                "categories": categories,
                "switches": switches,
                "plots": plots,
                "out": out,
            },
        )
        return
    if not data:
        raise _fail("--data: give at least one labelled data file (or --scenario)")
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
            data=_data_specs(
                data, data_format, limit, text_column, label, overall_column, missing_as_safe, held_out_rows
            ),
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
            cascade=_names(cascade),
            cascade_target=cascade_target,
            cascade_hedge_share=cascade_hedge_share,
        )
        with stage_progress() as report:
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
    print_in_sample(result.report)
    for name, m in result.report["learners"].items():
        fb = m.get("feedback", {})
        console.print(
            f"{name}: feedback sent {fb.get('sent', 0):,}, applied {fb.get('applied', 0):,}"
            + (f", queued {fb['queued']:,} (the service applies it later)" if fb.get("queued") else "")
            + (f", duplicate {fb['duplicate']:,}" if fb.get("duplicate") else "")
            + (f", rejected {fb['rejected']}" if fb.get("rejected") else "")
        )
    console.print(f"wrote {', '.join(escape(str(p)) for p in files)}", soft_wrap=True)


def print_in_sample(report: dict[str, Any]) -> None:
    """Say which experts were fitted on the rows they were just replayed on (``context.data[].in_sample``)."""
    for entry in report.get("data", []):
        if entry.get("in_sample"):
            console.print(
                f"[yellow]in-sample: {', '.join(entry['in_sample'])} were fitted on {escape(entry['name'])}'s rows; "
                "there their figures (and the learners following them) say how well they remember "
                "(--held-out-rows reads only the rows the shipped heads left out)[/yellow]",
                soft_wrap=True,
            )


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


def _replay_tenants(
    *,
    data: list[str],
    data_format: str | None,
    limit: int | None,
    text_column: str | None,
    label: list[str] | None,
    overall_column: str | None,
    missing_as_safe: bool,
    held_out_rows: bool,
    tenant_column: str | None,
    policy: list[Path],
    policy_change: list[str],
    scenario: str | None,
    window: int | None,
    experts: str | None,
    heads: Path | None,
    cache: Path | None,
    no_cache: bool,
    options: dict[str, Any],
) -> None:
    """The multi-tenant replay: check every tenant input first, then replay each predictor and print per tenant."""
    from aegis_online.simulate.cache import ReplayCache, default_cache_path
    from aegis_online.simulate.replay_run import build_catalog_experts, write_replay_outputs
    from aegis_online.simulate.replay_scenario import load_replay_scenario, scenario_inputs
    from aegis_online.simulate.tenancy import PolicyChange, load_policy_file, parse_policy_change
    from aegis_online.simulate.tenant_metrics import DEFAULT_WINDOW
    from aegis_online.simulate.tenants_replay import TenantReplayConfig, run_tenant_replay

    if options["url"] is not None:
        raise _fail("--url: a multi-tenant replay runs in process only (each predictor needs its own engine)")
    try:
        specs, policies, changes = [], [], []
        delay, seed, shuffle, column, size = options["feedback_delay"], options["seed"], options["shuffle"], None, None
        if scenario is not None:
            story, base = load_replay_scenario(scenario)
            specs, policies, changes = scenario_inputs(story, base)
            delay, seed, shuffle = delay or story.feedback_delay, seed or story.seed, shuffle and story.shuffle
            column, size = story.tenant_column, story.window
        specs += _data_specs(
            data, data_format, limit, text_column, label, overall_column, missing_as_safe, held_out_rows
        )
        if not specs:
            raise ValueError("--data: give at least one labelled data file (or --scenario)")
        policies += [load_policy_file(p) for p in policy]
        for text in policy_change:
            row, path = parse_policy_change(text)
            changes.append(PolicyChange(row, load_policy_file(path), f"--policy-change {text}"))
        config = TenantReplayConfig(
            data=specs,
            tenant_column=tenant_column or column or "tenant",
            policies=policies,
            changes=changes,
            categories=_names(options["categories"]),
            feedback_delay=delay,
            feedback_share=options["feedback_share"],
            shuffle=shuffle,
            seed=seed,
            window=window or size or DEFAULT_WINDOW,
            switches=options["switches"],
        )
        chosen = build_catalog_experts(_names(experts), heads)
        store = ReplayCache(None if no_cache else (cache or default_cache_path()))
        result, _ = run_tenant_replay(config, chosen, store)
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise _fail(str(error.args[0]) if isinstance(error, KeyError) else str(error)) from None
    files = write_replay_outputs(result, options["out"], with_plots=options["plots"])
    print_tenants(result.report)
    console.print(f"wrote {', '.join(escape(str(p)) for p in files)}", soft_wrap=True)


def print_tenants(report: dict[str, Any]) -> None:
    """Per tenant: every predictor's whole-request F1, precision, recall, FPR, AUPRC, loss, cost and convergence."""
    from aegis_online.simulate.report import fmt, pct

    for tenant, predictors in report["tenants"].items():
        table = Table(title=f"{tenant}: the whole-request decision ({report['tenant_requests'][tenant]:,} requests)")
        for name in ("predictor", "F1", "precision", "recall", "FPR", "AUPRC", "loss", "cost", "labels to 1 pt"):
            table.add_column(name, justify="left" if name == "predictor" else "right")
        for name, m in predictors.items():
            converged = m.get("labels_to_within_1pt")
            recovery = [r["labels"] for r in m.get("recovery", [])]
            cell = "-" if "labels_to_within_1pt" not in m else ("never" if converged is None else f"{converged:,}")
            if recovery:
                cell += " / " + ", ".join("never" if r is None else f"{r:,}" for r in recovery)
            table.add_row(
                f"{name} ({m['expert']})" if m.get("expert") else name,
                fmt(m["f1"], 3),
                fmt(m["precision"], 3),
                fmt(m["recall"], 3),
                pct(m["fpr"]),
                fmt(m["auprc"], 3),
                fmt(m["loss"], 4),
                fmt(m.get("cost", float("nan")), 4),
                cell,
            )
        console.print(table)


def _skipped(name: str, error: Exception) -> None:
    console.print(f"[yellow]{escape(name)}: left out, it cannot be built here: {escape(str(error))}[/yellow]")


def eval_command(
    data: list[str] = DATA_OPTION,
    data_format: str | None = FORMAT_OPTION,
    experts: str | None = EXPERTS_OPTION,
    weights: Path | None = typer.Option(
        None,
        "--weights",
        dir_okay=False,
        help="A weights snapshot: the JSON of GET /v1/tenants/<tenant>/weights (or /v1/weights/global); adds the "
        "predictor 'ensemble_weights', the experts combined under those weights.",
    ),
    policy: Path | None = typer.Option(
        None,
        "--policy",
        dir_okay=False,
        help="Tenant policy (YAML or JSON) whose thresholds decide (default: the default policy).",
    ),
    learner: str = typer.Option(
        DEFAULT_LEARNER, "--learner", help="Learner whose initial state combines the 'ensemble' predictor."
    ),
    out: Path = typer.Option(Path("eval-out"), "--out", file_okay=False, help="Folder for eval.json and eval.md."),
    limit: int | None = LIMIT_OPTION,
    text_column: str | None = TEXT_COLUMN_OPTION,
    label: list[str] | None = LABEL_OPTION,
    overall_column: str | None = OVERALL_COLUMN_OPTION,
    missing_as_safe: bool = MISSING_AS_SAFE_OPTION,
    held_out_rows: bool = HELD_OUT_ROWS_OPTION,
    heads: Path | None = HEADS_OPTION,
    cache: Path | None = CACHE_OPTION,
    no_cache: bool = NO_CACHE_OPTION,
) -> None:
    """Score labelled data sets with each expert and the ensemble; print and write AUROC, AUPRC and F1 / precision /
    recall / FPR at the policy's thresholds, per data set, predictor and category (eval.json, eval.md)."""
    if not data:
        raise _fail("--data: give at least one labelled data file")
    from aegis_online.simulate.cache import ReplayCache, default_cache_path
    from aegis_online.simulate.evaluation import EvalConfig, WeightsSnapshot, run_eval
    from aegis_online.simulate.evaluation_report import console_tables, write_eval
    from aegis_online.simulate.replay_run import build_catalog_experts
    from aegis_online.simulate.tenancy import TenantInputError, load_policy_file

    try:
        config = EvalConfig(
            data=_data_specs(
                data, data_format, limit, text_column, label, overall_column, missing_as_safe, held_out_rows
            ),
            learner=learner,
        )
        if policy is not None:
            try:
                config.policy = load_policy_file(policy)
            except TenantInputError as error:
                raise ValueError(f"--policy: {error}") from None
        if weights is not None:
            if not weights.is_file():
                raise ValueError(f"--weights: {weights}: no such file")
            config.weights = WeightsSnapshot.load(weights)
        chosen = build_catalog_experts(_names(experts), heads, on_unavailable=_skipped)
        store = ReplayCache(None if no_cache else (cache or default_cache_path()))
        with stage_progress() as report:
            result = run_eval(config, chosen, store, progress=lambda name, done, total: report(name, done, total))
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise _fail(str(error.args[0]) if isinstance(error, KeyError) else str(error)) from None
    for table in console_tables(result):
        console.print(table)
    failures = {name: n for name, n in result["expert_failures"].items() if n}
    if failures:
        console.print(f"[yellow]texts an expert failed on (left out of its metrics): {failures}[/yellow]")
    files = write_eval(result, out)
    console.print(f"wrote {', '.join(escape(str(p)) for p in files)}", soft_wrap=True)
