"""Regenerate the results page, ``docs/results.md``: ``python -m aegis_online.simulate.results`` (``make results``).

Two parts. Simulated drift: every scenario in ``simulators/`` x every learner, over fixed seeds (loss against the
oracles, regret, recovery time after a drift, bandit savings), one figure per scenario. Real traffic: the shared
labelled sets chained into one stream (OpenAI moderation, then Davidson tweets, XSTest, SimpleSafetyTests,
HarmBench) replayed through the engine with the CPU experts not trained on them, comparing each expert, their plain
average and the adaptive ensemble (AUPRC and F1 per category, false positives on XSTest's safe prompts); then the
two-tenant study of ``tenants_study`` (two tenants with opposite conventions on the same real texts, one relaxing its
policy midway). The replays are skipped, with the reason on the page, when the data or the experts' packages are
absent. Every number on the page is computed here: rerunning the module with the same options rewrites the same page.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from aegis_online.learn.escalation import EscalationRule
from aegis_online.simulate.cascade_replay_page import cascade_replay_section, load_summary
from aegis_online.simulate.report import fmt, pct
from aegis_online.simulate.tenants_study import study_section

DOCS = Path(__file__).resolve().parents[2] / "docs"
SCENARIO_ORDER = (
    "stationary",
    "abrupt",
    "gradual",
    "recurring",
    "jailbreak",
    "new-category",
    "label-noise",
    "delayed-feedback",
    "tenants",
)
SEED = 2025
#: (segment name, path under the shared data folder, rows taken after shuffling; None = all).
REPLAY_CHAIN: tuple[tuple[str, str, int | None], ...] = (
    ("openai_moderation", "openai_moderation/samples-1680.jsonl.gz", None),
    ("davidson", "davidson_hate_offensive/labeled_data.csv", 2000),
    ("xstest", "xstest/xstest_prompts.csv", None),
    ("simplesafetytests", "simplesafetytests/sst_test_cases.csv", None),
    ("harmbench", "harmbench/harmbench_behaviors_text_all.csv", None),
)
REPLAY_LEARNERS = ("default", "hedge")
#: The engine's default configuration (per-expert calibration over the default weights), run on every scenario as an
#: extra row after ``DEFAULT_LEARNERS``: the synthetic part then shows what calibration adds to the same weights.
ADAPTIVE_LEARNER = "default+adaptive"
#: The cascade part: the two guards are the expensive tier, this target (one replica; it counts guard calls, one per
#: escalation): 1 - 0.78 / 2 = 61% of the guards' calls saved.
CASCADE_EXPENSIVE = ("guard-large", "guard-small")
CASCADE_TARGET = 0.78
CASCADE_LEARNERS = ("default", ADAPTIVE_LEARNER)
REPLAY_FEEDBACK_DELAY = 25


# -- simulated drift -----------------------------------------------------------------------------------------------
def simulate_scenario(name: str, steps: int | None, replicas: int, seed: int, figures: Path) -> dict[str, Any]:
    """Run one scenario with every default learner; the numbers the page needs and its figure (in a worker)."""
    from aegis_online.simulate.plots import plot_overview
    from aegis_online.simulate.scenario import load_scenario
    from aegis_online.simulate.simulation import DEFAULT_LEARNERS, run_simulation

    started = time.perf_counter()
    scenario = load_scenario(name)
    learners = (*DEFAULT_LEARNERS, ADAPTIVE_LEARNER)
    result = run_simulation(scenario, steps=steps, seed=seed, replicas=replicas, learners=learners)
    report = result.report
    figure = plot_overview(result.stream, result.runs, figures / f"results-{name}.png", title=name)
    learners = {
        k: {
            "loss": m["cumulative_loss"],
            "regret_fixed": m["regret_best_fixed"],
            "regret_switching": m["regret_best_switching"],
            "ratio": m["ratio_to_best_switching"],
            "recovery": m["recovery_steps"],
            "fpr": m["false_positive_rate"],
            "f1": m["f1_macro"],
            "jailbreak_recall": m.get("jailbreak_recall"),
            "per_tenant": {t: v["cumulative_loss"] for t, v in m.get("per_tenant", {}).items()},
            "weights": m["weights"]["final"],
        }
        for k, m in report["learners"].items()
    }
    experts = {
        k: {"loss": m["cumulative_loss"], "jailbreak_recall": m.get("jailbreak_recall")}
        for k, m in report["experts"].items()
    }
    experts["uniform average"] = {
        "loss": report["baselines"]["uniform"]["cumulative_loss"],
        "jailbreak_recall": report["baselines"]["uniform"].get("jailbreak_recall"),
    }
    new_category = None
    if name == "new-category":
        new = [c for c in report["categories"] if c.startswith("custom:")]
        if new:
            new_category = {
                k: m.get("per_segment", {}).get("phase 2", {}).get("categories", {}).get(new[0], {}).get("mean_loss")
                for k, m in report["learners"].items()
            }
            new_category["category"] = new[0]
    cascade = {}
    if set(CASCADE_EXPENSIVE) <= set(scenario.expert_names):
        cascaded = run_simulation(
            scenario,
            steps=steps,
            seed=seed,
            learners=CASCADE_LEARNERS,
            cascade=list(CASCADE_EXPENSIVE),
            cascade_target=CASCADE_TARGET,
        )
        cascade = {name: cascaded.report["cascade"][f"{name}+cascade"] for name in CASCADE_LEARNERS}
    return {
        "name": name,
        "description": scenario.description,
        "cascade": cascade,
        "steps": report["steps"],
        "replicas": report["replicas"],
        "drifts": report["drifts"],
        "oracles": report["oracles"],
        "learners": learners,
        "experts": experts,
        "bandit": report["bandit"].get("exp3-ix"),
        "new_category": new_category,
        "figure": figure.name,
        "seconds": time.perf_counter() - started,
    }


def simulate_all(
    names: Sequence[str], steps: int | None, replicas: int, seed: int, figures: Path, jobs: int
) -> list[dict[str, Any]]:
    if jobs <= 1:
        return [simulate_scenario(n, steps, replicas, seed, figures) for n in names]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(simulate_scenario, n, steps, replicas, seed, figures) for n in names]
        return [f.result() for f in futures]


def _ratio_cell(value: float | None, best: float) -> str:
    text = fmt(value, 3)
    return f"**{text}**" if value is not None and math.isfinite(value) and value == best else text


def _mixes(learners: Sequence[str]) -> list[str]:
    """The learners whose probability is a mix of the experts' (the ones the oracles over the experts bound)."""
    return [k for k in learners if k != ADAPTIVE_LEARNER]


def _replicas(count: int, seed: int) -> str:
    if count == 1:
        return f"one replica (seed {seed})"
    return f"{count} independent replicas (seed {seed}; the numbers are means over replicas)"


def simulation_section(results: Sequence[Mapping[str, Any]], seed: int) -> list[str]:
    learners = list(results[0]["learners"])
    names = [r["name"] for r in results]
    header = "| learner | " + " | ".join(names) + " |"
    rule = "|---|" + "---:|" * len(names)
    first = results[0]
    lines = [
        "## Simulated drift",
        "",
        f"Each scenario of `simulators/` runs for {first['steps']:,} requests with five synthetic experts, "
        f"{_replicas(first['replicas'], seed)}, every learner on the same traffic. "
        "Loss is the squared loss of the ensemble's probability against the true label, summed over (request, "
        "category); the learners keep one key per (scope, category) as the engine does, and the oracles are "
        "computed per key: the best fixed expert in hindsight, and the best sequence of experts with one switch per "
        "key per drift (dynamic programming over the whole run; the budget is spread where it helps most). "
        "`exp3-ix` runs in bandit mode: it queries 2 of the 5 experts per request (the cheap embedding head every "
        "time, one more sampled from its weights).",
        "",
        "### Loss relative to the best switching sequence (1.000 = the oracle; lower is better)",
        "",
        header,
        rule,
    ]
    for learner in learners:
        values = [r["learners"][learner]["ratio"] for r in results]
        best = [min(x["learners"][k]["ratio"] for k in _mixes(learners)) for x in results]
        lines.append(
            f"| {learner} | " + " | ".join(_ratio_cell(v, b) for v, b in zip(values, best, strict=True)) + " |"
        )
    lines.append(
        "| *best switching loss (switches)* | "
        + " | ".join(f"{fmt(r['oracles']['best_switching_loss'], 0)} ({r['oracles']['switches']})" for r in results)
        + " |"
    )
    lines.append(
        "| *best fixed expert loss* | " + " | ".join(fmt(r["oracles"]["best_fixed_loss"], 0) for r in results) + " |"
    )
    if ADAPTIVE_LEARNER in learners:
        lines += ["", *_adaptive_note()]
    lines += ["", "### Cumulative loss (squared loss summed over requests and categories)", "", header, rule]
    for learner in learners:
        lines.append(f"| {learner} | " + " | ".join(fmt(r["learners"][learner]["loss"], 0) for r in results) + " |")
    lines.append(
        "| *uniform average* | " + " | ".join(fmt(r["experts"]["uniform average"]["loss"], 0) for r in results) + " |"
    )
    lines += ["", "### Regret against the best fixed expert (negative: the ensemble beat every single expert)", ""]
    lines += [header, rule]
    for learner in learners:
        lines.append(
            f"| {learner} | " + " | ".join(fmt(r["learners"][learner]["regret_fixed"], 0) for r in results) + " |"
        )
    drifting = [r for r in results if r["drifts"]]
    lines += [
        "",
        "### Recovery after each drift (requests until the windowed loss is within 10% of the new best expert)",
        "",
        "| learner | " + " | ".join(r["name"] for r in drifting) + " |",
        "|---|" + "---:|" * len(drifting),
    ]
    for learner in learners:
        cells = []
        for r in drifting:
            steps = r["learners"][learner]["recovery"]
            cells.append(", ".join("never" if s is None else f"{s:,.0f}" for s in steps))
        lines.append(f"| {learner} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Drift points: "
        + "; ".join(f"{r['name']} at {', '.join(f'{d:,}' for d in r['drifts'])}" for r in drifting)
        + ".",
        "",
        "### Bandit mode: 2 of 5 experts per request",
        "",
        "| scenario | expert calls | full information | saved | loss / default (full information) | loss / hedge |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        b = r["bandit"]
        if b:
            lines.append(
                f"| {r['name']} | {fmt(b['expert_calls'], 0)} | {fmt(b['full_information_calls'], 0)} | "
                f"{pct(b['call_savings'])} | {fmt(b['loss_ratio_to_full_information'], 3)} | "
                f"{fmt(b['loss_ratio_to_hedge'], 3)} |"
            )
    lines += [*cascade_section(results), "", *scenario_notes(results), "### Figures", ""]
    for r in results:
        lines += [f"**{r['name']}**: {r['description']}", "", f"![{r['name']}]({r['figure']})", ""]
    return lines


def cascade_section(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """The cascade (``simulate --cascade``) on the scenarios with both guards: what it saves and what it loses."""
    rows = [(r["name"], learner, c) for r in results for learner, c in r.get("cascade", {}).items()]
    if not rows:
        return []
    lines = [
        "",
        f"### Cascade: the guards ({', '.join(CASCADE_EXPENSIVE)}) only when the cheap tier's predicted loss is high",
        "",
        f"Each learner as a cascade with target escalation rate {pct(CASCADE_TARGET)}, counted in guard calls (an "
        "escalation calls the guard the learner's ranking weights trust most (`default`: its fastest copy's), "
        "the other with probability 5% or when it "
        f"hedges (`hedge_share` {EscalationRule.hedge_share:g}: the weights have not told apart guards that disagree), "
        "so a few percent fewer requests escalate), against the same learner "
        "calling every expert (one replica; `aegis-online simulate --scenario NAME --learners L --cascade "
        f"guard-large,guard-small --cascade-target {CASCADE_TARGET}`; the method and more figures: "
        "[cascade.md](cascade.md)). Issue 16's target: >= 60% fewer expensive calls for <= 1% more loss.",
        "",
        "| scenario | learner | escalated | expensive calls saved | loss / full information | F1, cascade / full |",
        "|---|---|---:|---:|---:|---|",
    ]
    for name, learner, c in rows:
        lines.append(
            f"| {name} | {learner} | {pct(c['escalation_rate'])} | {pct(c['expensive_calls_saved'])} | "
            f"{fmt(c['loss_ratio'], 3)} | {fmt(c['f1_macro'], 3)} / {fmt(c['full_information_f1_macro'], 3)} |"
        )
    return lines


def _adaptive_note() -> list[str]:
    return [
        f"`{ADAPTIVE_LEARNER}` is `default` with each expert's score calibrated online before the mix (the engine's "
        "default configuration); it is not in bold: its calibrated probabilities are not a mix of the experts' own, "
        "so the oracles over the experts do not bound its loss and it can go below 1.000. Its learned thresholds "
        "are not used on this part: the synthetic runner evaluates the probabilities, and the flags (the jailbreak "
        "recall below) use the tenant's fixed threshold.",
    ]


def scenario_notes(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Numbers specific to one scenario: jailbreak recall, per-tenant loss and weights, the new category."""
    lines = ["### Scenario specifics", ""]
    by_name = {r["name"]: r for r in results}
    jailbreak = by_name.get("jailbreak")
    if jailbreak:
        recall = {**{k: v["jailbreak_recall"] for k, v in jailbreak["learners"].items()}}
        recall.update({k: v["jailbreak_recall"] for k, v in jailbreak["experts"].items()})
        lines += [
            "**jailbreak**: share of jailbreak requests flagged (at the tenant's threshold): "
            + ", ".join(f"{k} {pct(v)}" for k, v in recall.items())
            + ".",
            "",
        ]
    tenants = by_name.get("tenants")
    if tenants:
        parts = []
        for learner in ("default", "hedge"):
            per = tenants["learners"][learner]["per_tenant"]
            parts.append(f"{learner}: " + ", ".join(f"{t} {fmt(v, 0)}" for t, v in per.items()))
        weights = tenants["learners"]["default"]["weights"]
        leaders = []
        for scope, cats in weights.items():
            first = next(iter(cats.values()))
            top = max(first, key=first.get)
            leaders.append(f"{scope} -> {top} ({first[top]:.2f})")
        lines += [
            "**tenants**: loss per tenant, " + "; ".join(parts) + ". Final weights of the default learner "
            f"(first category) per scope: {', '.join(leaders)}: each tenant's own weights follow the guard that "
            "judges borderline text as its moderators do.",
            "",
        ]
    new = by_name.get("new-category")
    if new and new.get("new_category"):
        info = dict(new["new_category"])
        category = info.pop("category")
        lines += [
            f"**new-category**: mean loss per request on `{category}` after it appears: "
            + ", ".join(f"{k} {fmt(v, 4)}" for k, v in info.items())
            + ".",
            "",
        ]
    return lines


# -- real traffic --------------------------------------------------------------------------------------------------
def _cpu_experts_missing() -> str | None:
    """Why the catalog's CPU experts cannot run here, or None when they can."""
    try:
        import profanity_check  # noqa: F401
        import sentence_transformers  # noqa: F401

        from aegis_online.experts.cpu import minilm_model_dir

        minilm_model_dir()
    except (ImportError, RuntimeError) as error:
        return f"the CPU experts cannot run here ({error}); install the 'experts' extra"
    return None


def tenants_real(data_dir: Path | None, figures: Path, cache_path: Path | None, seed: int) -> dict[str, Any] | str:
    """The two-tenant study on the shared sets; a reason string when it cannot run."""
    from aegis_online.datasets import shared_data_dir
    from aegis_online.simulate.tenants_study import run_study

    base = data_dir or shared_data_dir()
    if base is None:
        return "the shared labelled data folder was not found (set AEGIS_DATA_DIR or pass --data-dir)"
    return _cpu_experts_missing() or run_study(base, cache_path, figures, seed)


def replay_real(data_dir: Path | None, figures: Path, cache_path: Path | None, seed: int) -> dict[str, Any] | str:
    """Replay the shared sets through the engine with the CPU experts; a reason string when it cannot run."""
    from aegis_online.datasets import shared_data_dir

    base = data_dir or shared_data_dir()
    if base is None:
        return "the shared labelled data folder was not found (set AEGIS_DATA_DIR or pass --data-dir)"
    missing = [rel for _, rel, _ in REPLAY_CHAIN if not (base / rel).is_file()]
    if missing:
        return f"data files absent under {base}: {', '.join(missing)}"
    reason = _cpu_experts_missing()
    if reason:
        return reason
    from aegis_online.simulate.cache import ReplayCache, default_cache_path
    from aegis_online.simulate.plots import plot_overview
    from aegis_online.simulate.replay_run import (
        SHARED_DATA_STUDY_EXPERTS,
        ReplayConfig,
        build_catalog_experts,
        run_replay,
    )
    from aegis_online.simulate.traffic import DataSpec

    specs = [DataSpec(base / rel, limit=limit, name=name) for name, rel, limit in REPLAY_CHAIN]
    config = ReplayConfig(
        data=specs, learners=REPLAY_LEARNERS, feedback_delay=REPLAY_FEEDBACK_DELAY, seed=seed, shuffle=True
    )
    experts = build_catalog_experts(SHARED_DATA_STUDY_EXPERTS)
    cache = ReplayCache(cache_path or default_cache_path())

    def progress(stage: str, done: int, total: int) -> None:
        if done == total or done % 500 == 0:
            print(f"  {stage}: {done}/{total}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    result = run_replay(config, experts, cache, progress=progress)
    figure = plot_overview(
        result.stream,
        result.runs,
        figures / "results-replay.png",
        title="real traffic: " + " -> ".join(s.name for s in result.traffic.segments),
        category="S8",
    )
    return {"report": result.report, "figure": figure.name, "seconds": time.perf_counter() - started}


def _predictors(report: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    out: dict[str, Mapping[str, Any]] = {name: m for name, m in report["experts"].items()}
    out["uniform average"] = report["baselines"]["uniform"]
    for name, m in report["learners"].items():
        out[f"adaptive ensemble ({name})" if name == "default" else f"ensemble ({name})"] = m
    return out


def _finite(entry: Mapping[str, Any], category: str, metric: str) -> bool:
    value = entry.get("categories", {}).get(category, {}).get(metric)
    return isinstance(value, float) and math.isfinite(value)


def _shown_arguments(argv: Sequence[str]) -> list[str]:
    """The command-line arguments worth printing on the page (not where it was written)."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--out":
            skip = True
        elif not arg.startswith("--out="):
            shown.append(arg)
    return shown


def replay_headline(report: Mapping[str, Any]) -> list[str]:
    """Computed sentences: where several experts score a category, how the ensemble compares with each of them."""
    shared = [
        c for c in report["categories"] if sum(c in m.get("categories", {}) for m in report["experts"].values()) > 1
    ]
    if not shared or "default" not in report["learners"]:
        return []
    default = report["learners"]["default"]["categories"]
    uniform = report["baselines"]["uniform"]["categories"]
    parts = []
    for c in shared:
        experts = {k: m["categories"][c] for k, m in report["experts"].items() if c in m.get("categories", {})}
        best = max(experts, key=lambda k: experts[k]["auprc"])
        parts.append(
            f"{c}: adaptive {fmt(default[c]['auprc'], 3)} / {fmt(default[c]['f1'], 3)}, uniform average "
            f"{fmt(uniform[c]['auprc'], 3)} / {fmt(uniform[c]['f1'], 3)}, best single expert ({best}) "
            f"{fmt(experts[best]['auprc'], 3)} / {fmt(experts[best]['f1'], 3)}"
        )
    oracles = report["oracles"]
    loss = report["learners"]["default"]["cumulative_loss"]
    uniform_loss = report["baselines"]["uniform"]["cumulative_loss"]
    return [
        "Where several experts score a category (AUPRC / F1): " + "; ".join(parts) + ". Over the whole stream the "
        f"adaptive ensemble's loss is {fmt(loss, 1)} against {fmt(uniform_loss, 1)} for the uniform average and "
        f"{fmt(oracles['best_fixed_loss'], 1)} for the best fixed expert per category chosen in hindsight.",
    ]


def replay_section(replay: Mapping[str, Any] | str) -> list[str]:
    lines = ["## Real traffic replay", ""]
    if isinstance(replay, str):
        return [*lines, f"Skipped: {replay}.", ""]
    report = replay["report"]
    predictors = _predictors(report)
    segments = report["segments"]
    categories = [c for c in report["categories"] if any(_finite(p, c, "auprc") for p in predictors.values())]
    experts = ", ".join(f"`{e}`" for e in report["experts"])
    coverage = "; ".join(
        f"`{name}` scores {', '.join(m.get('categories', {}))}" for name, m in report["experts"].items()
    )
    lines += [
        "The shared labelled sets, each shuffled (seeded), chained into one stream so that the traffic shifts under "
        "the learners: "
        + " -> ".join(f"{s['name']} ({s['end'] - s['start']:,} rows)" for s in segments)
        + ". Each row is a `ModerationRequest` through `Engine.moderate` with the CPU experts not trained on these "
        f"sets ({experts}; outputs cached by text), and its labels come back as a `FeedbackEvent` "
        f"{REPLAY_FEEDBACK_DELAY} requests later. Categories evaluated: those the data labels and some expert "
        f"covers ({', '.join(report['categories'])}): {coverage}. Where only one expert scores a category the "
        "ensemble is that expert, so the learners differ only where several do. Decisions use the default policy "
        "(threshold 0.5).",
        "",
        *replay_headline(report),
        "",
        "### AUPRC per category (whole stream)",
        "",
        "| predictor | " + " | ".join(categories) + " |",
        "|---|" + "---:|" * len(categories),
    ]
    for name, m in predictors.items():
        cells = [fmt(m.get("categories", {}).get(c, {}).get("auprc"), 3) for c in categories]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### F1 per category at the decision threshold",
        "",
        "| predictor | " + " | ".join(categories) + " |",
        "|---|" + "---:|" * len(categories),
    ]
    for name, m in predictors.items():
        cells = [fmt(m.get("categories", {}).get(c, {}).get("f1"), 3) for c in categories]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "### Per data set: false-positive rate on benign rows, recall on unsafe rows, mean loss",
        "",
        "XSTest's benign rows are its safe prompts that only look unsafe; SimpleSafetyTests and HarmBench have no "
        "benign rows.",
        "",
        "| predictor | mean loss (pairs) | " + " | ".join(f"{s['name']} FPR / recall" for s in segments) + " |",
        "|---|---:|" + "---:|" * len(segments),
    ]
    for name, m in predictors.items():
        cells = []
        for s in segments:
            part = m.get("per_segment", {}).get(s["name"], {})
            cells.append(f"{pct(part.get('false_positive_rate'))} / {pct(part.get('recall'))}")
        lines.append(f"| {name} | {fmt(m['mean_loss'], 4)} ({m['rows']:,.0f}) | " + " | ".join(cells) + " |")
    oracles = report["oracles"]
    lines += [
        "",
        f"Oracles on this stream: best fixed expert per category {fmt(oracles['best_fixed_loss'], 1)}, best sequence "
        f"with {oracles['switches']} switches {fmt(oracles['best_switching_loss'], 1)}; "
        + ", ".join(f"{k} {fmt(m['cumulative_loss'], 1)}" for k, m in report["learners"].items())
        + ".",
        "",
        f"![real traffic replay]({replay['figure']})",
        "",
    ]
    return lines


def render(
    results: Sequence[Mapping[str, Any]],
    replay: Mapping[str, Any] | str,
    argv: Sequence[str],
    seed: int = SEED,
    study: Mapping[str, Any] | str = "not run",
    cascade_replay: Mapping[str, Any] | str = "not run",
) -> str:
    command = "python -m aegis_online.simulate.results" + ("" if not argv else " " + " ".join(argv))
    lines = [
        "# Results: the ensemble adapts",
        "",
        f"Generated by `make results` (`{command}`); do not edit by hand. Every number comes from fixed seeds: "
        "rerunning gives the same page. Per-run detail (JSON, Markdown, plots) comes from "
        "`aegis-online simulate --scenario NAME --out DIR` and `aegis-online replay --data PATH --out DIR`.",
        "",
        *(simulation_section(results, seed) if results else ["## Simulated drift", "", "Skipped.", ""]),
        *replay_section(replay),
        *cascade_replay_section(cascade_replay),
        *study_section(study),
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS, help="Folder for results.md and its figures.")
    parser.add_argument("--steps", type=int, default=None, help="Requests per scenario (default: each scenario's).")
    parser.add_argument("--replicas", type=int, default=3, help="Replicas per scenario, averaged.")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--scenarios", default=",".join(SCENARIO_ORDER), help="Comma-separated scenario names.")
    parser.add_argument("--jobs", type=int, default=min(os.cpu_count() or 1, 4), help="Scenarios run in parallel.")
    parser.add_argument("--data-dir", type=Path, default=None, help="Shared labelled data (default: ../shared/data).")
    parser.add_argument("--cache", type=Path, default=None, help="Expert-output cache of the replay.")
    parser.add_argument("--skip-replay", action="store_true", help="Only the simulated part (no real-data replays).")
    parser.add_argument("--skip-tenants", action="store_true", help="Leave out the two-tenant study.")
    args = parser.parse_args(argv)
    given = list(argv if argv is not None else sys.argv[1:])
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = simulate_all(names, args.steps, args.replicas, args.seed, args.out, args.jobs) if names else []
    for r in results:
        print(f"{r['name']}: {r['seconds']:.1f} s", file=sys.stderr)
    replay: Mapping[str, Any] | str = (
        "not run (--skip-replay)" if args.skip_replay else replay_real(args.data_dir, args.out, args.cache, args.seed)
    )
    if isinstance(replay, str):
        print(f"real-data replay skipped: {replay}", file=sys.stderr)
    study: Mapping[str, Any] | str = (
        "not run (--skip-replay)"
        if args.skip_replay
        else "not run (--skip-tenants)"
        if args.skip_tenants
        else tenants_real(args.data_dir, args.out, args.cache, args.seed)
    )
    if isinstance(study, str):
        print(f"two-tenant study skipped: {study}", file=sys.stderr)
    else:
        print(f"two-tenant study: {study['seconds']:.1f} s", file=sys.stderr)
    page = args.out / "results.md"
    cascade_replay = load_summary(args.out)
    page.write_text(render(results, replay, _shown_arguments(given), args.seed, study, cascade_replay))
    print(f"wrote {page} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
