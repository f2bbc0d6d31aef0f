"""The real-data two-tenant study of the results page: two tenants send the same texts, judge some differently, and
one of them relaxes its policy halfway through.

Built from the shared labelled sets (read in place, never copied): Davidson's tweets, OpenAI's moderation eval and
XSTest. ``kids-app`` calls Davidson's offensive-but-not-hateful tweets unsafe (profanity, S12), ``gaming-forum``
calls them safe; hateful tweets are unsafe and "neither" tweets safe for both; the OpenAI and XSTest rows carry the
same label for both tenants. Each text is sent once by each tenant, in one order shuffled with a fixed seed.

At the midpoint ``kids-app`` goes from a strict policy to a lenient one, and its moderators from then on label
offensive-only tweets as the lenient policy says: safe (the convention of ``gaming-forum``). Recovery is how many
of its labels the predictors need to come back within a point of their new steady F1.

The study measures F1, so both tenants state F1 as their objective (``f_beta: 1``): a learned threshold optimises what
its policy states. Strictness still sets the fixed thresholds (of ``fixed`` and of each expert's row) and the cost ratio
of the ``cost`` column. A second, smaller run replays ``adaptive`` and ``fixed`` with the default objective instead
(no ``f_beta``: the cost ratio strictness implies), so the page shows both readings: each wins on what it optimises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aegis_online.datasets import LabelledText, load_davidson, load_openai_moderation, load_xstest
from aegis_online.policy import TenantPolicy
from aegis_online.simulate.report import fmt, pct
from aegis_online.simulate.stream import Segment
from aegis_online.simulate.tenancy import PolicyChange
from aegis_online.simulate.traffic import DataSpec, ReplayTraffic

if TYPE_CHECKING:
    from aegis_online.simulate.replay_run import ReplayResult
    from aegis_online.simulate.tenants_replay import TenantCurves

KIDS, GAMING = "kids-app", "gaming-forum"
TENANT_COLUMN = "tenant"
#: Texts per source: Davidson by class (hate, offensive, neither), OpenAI moderation, XSTest (all 450).
DAVIDSON_ROWS = {0: 300, 1: 800, 2: 500}
OPENAI_ROWS = 900
FEEDBACK_DELAY = 25
WINDOW = 100
#: The tenants' policies: strictness for the fixed thresholds and the cost ratio, F1 (``f_beta: 1``) as the objective.
POLICIES = (
    TenantPolicy(tenant=KIDS, strictness="strict", f_beta=1.0),
    TenantPolicy(tenant=GAMING, strictness="lenient", f_beta=1.0),
)
LATER_KIDS_POLICY = TenantPolicy(tenant=KIDS, strictness="lenient", f_beta=1.0)
#: Predictors replayed again with the default objective (the thresholds' cost ratio); the rest do not learn one.
DEFAULT_OBJECTIVE_PREDICTORS = ("adaptive", "fixed")
FILES = {
    "davidson": "davidson_hate_offensive/labeled_data.csv",
    "openai_moderation": "openai_moderation/samples-1680.jsonl.gz",
    "xstest": "xstest/xstest_prompts.csv",
}


def _sample(rows: list[LabelledText], count: int, rng: np.random.Generator) -> list[LabelledText]:
    order = rng.permutation(len(rows))[:count]
    return [rows[k] for k in sorted(order)]


def source_texts(base: Path, seed: int) -> list[LabelledText]:
    """The study's texts with their shared labels (Davidson sampled per class, OpenAI rows with a verdict)."""
    rng = np.random.default_rng([seed, 13])
    davidson = list(load_davidson(base / FILES["davidson"]))
    by_class = {
        k: [r for r in davidson if r.meta["class"] == name]
        for k, name in enumerate(("hate_speech", "offensive_language", "neither"))
    }
    texts = [row for k, count in DAVIDSON_ROWS.items() for row in _sample(by_class[k], count, rng)]
    openai = [r for r in load_openai_moderation(base / FILES["openai_moderation"]) if r.unsafe is not None]
    texts += _sample(openai, OPENAI_ROWS, rng)
    texts += list(load_xstest(base / FILES["xstest"]))
    return texts


def tenant_copy(row: LabelledText, tenant: str, lenient_kids: bool) -> LabelledText:
    """``row`` as ``tenant`` labels it: an offensive-only tweet is unsafe for a strict kids-app, safe otherwise."""
    meta = {**row.meta, TENANT_COLUMN: tenant}
    if row.source == "davidson" and row.meta.get("class") == "offensive_language":
        unsafe = tenant == KIDS and not lenient_kids
        return LabelledText(row.text, {"S8": 0, "S12": int(unsafe)}, unsafe, row.source, meta)
    return LabelledText(row.text, dict(row.labels), row.unsafe, row.source, meta)


def study_traffic(base: Path, seed: int) -> tuple[ReplayTraffic, int]:
    """Both tenants' copies of every text, shuffled together; and the request where kids-app relaxes (midpoint)."""
    texts = source_texts(base, seed)
    pairs = [(k, tenant) for k in range(len(texts)) for tenant in (KIDS, GAMING)]
    order = np.random.default_rng([seed, 17]).permutation(len(pairs))
    change = len(pairs) // 2
    rows = []
    for t, p in enumerate(order):
        k, tenant = pairs[int(p)]
        rows.append(tenant_copy(texts[k], tenant, lenient_kids=t >= change))
    return ReplayTraffic(rows, (Segment("two tenants", 0, len(rows)),)), change


def default_objective(policy: TenantPolicy) -> TenantPolicy:
    """``policy`` without its explicit objective: thresholds learned toward the cost ratio its strictness implies."""
    return policy.model_copy(update={"f_beta": None})


def _replay(
    base: Path,
    cache_path: Path | None,
    traffic: ReplayTraffic,
    change: int,
    seed: int,
    adapt: Callable[[TenantPolicy], TenantPolicy] = lambda p: p,
    predictors: Sequence[str] | None = None,
) -> tuple[ReplayResult, TenantCurves]:
    from aegis_online.simulate.cache import ReplayCache, default_cache_path
    from aegis_online.simulate.replay_run import SHARED_DATA_STUDY_EXPERTS, build_catalog_experts
    from aegis_online.simulate.tenants_replay import ENGINE_PREDICTORS, TenantReplayConfig, run_tenant_replay

    config = TenantReplayConfig(
        data=[DataSpec(base / rel, name=name) for name, rel in FILES.items()],
        tenant_column=TENANT_COLUMN,
        policies=[adapt(p) for p in POLICIES],
        changes=[PolicyChange(change, adapt(LATER_KIDS_POLICY), "kids-app relaxes")],
        feedback_delay=FEEDBACK_DELAY,
        seed=seed,
        window=WINDOW,
        predictors=tuple(predictors or ENGINE_PREDICTORS),
    )
    cache = ReplayCache(cache_path or default_cache_path())
    return run_tenant_replay(config, build_catalog_experts(SHARED_DATA_STUDY_EXPERTS), cache, traffic=traffic)


def run_study(base: Path, cache_path: Path | None, figures: Path, seed: int) -> dict[str, Any] | str:
    """Replay the study through each predictor with the CPU experts not trained on the shared sets, then
    ``adaptive`` and ``fixed`` again with the default objective; a reason string when it cannot."""
    missing = [rel for rel in FILES.values() if not (base / rel).is_file()]
    if missing:
        return f"data files absent under {base}: {', '.join(missing)}"
    from aegis_online.simulate.plots import write_tenant_plots

    started = time.perf_counter()
    traffic, change = study_traffic(base, seed)
    result, curves = _replay(base, cache_path, traffic, change, seed)
    pngs = write_tenant_plots(curves, figures, prefix="results-")
    default, _ = _replay(base, cache_path, traffic, change, seed, default_objective, DEFAULT_OBJECTIVE_PREDICTORS)
    return {
        "report": result.report,
        "default_objective": {
            tenant: {p: {k: m[p][k] for k in ("f1", "cost")} for p in DEFAULT_OBJECTIVE_PREDICTORS}
            for tenant, m in default.report["tenants"].items()
        },
        "figures": {tenant: p.name for tenant, p in zip(curves.f1, pngs, strict=True)},
        "texts": len(traffic.rows) // 2,
        "change": change,
        "seconds": time.perf_counter() - started,
    }


def _cell(value: Any) -> str:
    return "never" if value is None else f"{value:,}"


def _label(name: str, m: Mapping[str, Any]) -> str:
    if name == "best_expert" and m.get("expert"):
        return f"best_expert ({m['expert']} >= {fmt(m['threshold'], 3)})"
    if name == "hindsight_combiner" and m.get("threshold") is not None:
        return f"hindsight_combiner (>= {fmt(m['threshold'], 3)})"
    return name


def _table(predictors: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [
        "| predictor | F1 | precision | recall | FPR | AUPRC | loss | cost | labels to within 1 point | "
        "after the change |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in predictors.items():
        engine = "labels_to_within_1pt" in m
        first = f"{_cell(m['labels_to_within_1pt'])} (final {fmt(m['final_f1'], 3)})" if engine else "-"
        after = ", ".join(f"{_cell(r['labels'])} (final {fmt(r['final_f1'], 3)})" for r in m.get("recovery", []))
        after = after or "-"
        lines.append(
            f"| {_label(name, m)} | {fmt(m.get('f1'), 3)} | {fmt(m.get('precision'), 3)} | "
            f"{fmt(m.get('recall'), 3)} | {pct(m.get('fpr'))} | {fmt(m.get('auprc'), 3)} | {fmt(m.get('loss'), 4)} | "
            f"{fmt(m.get('cost'), 4)} | {first} | {after} |"
        )
    return lines


def _ceiling(tenant: str, m: Mapping[str, Mapping[str, Any]]) -> str:
    """The hindsight combiner against best_expert and adaptive: how much F1 a fixed combination of the experts adds."""
    combiner, best, adaptive = m["hindsight_combiner"], m["best_expert"], m["adaptive"]
    if combiner.get("threshold") is None:
        return f"Ceiling for `{tenant}`: not computed (no positive label)."
    gap = 100 * (adaptive["f1"] - combiner["f1"])
    changed = bool(adaptive.get("recovery"))
    return (
        f"Ceiling for `{tenant}`: `hindsight_combiner` reaches F1 {fmt(combiner['f1'], 3)} (AUPRC "
        f"{fmt(combiner['auprc'], 3)}), best_expert F1 {fmt(best.get('f1'), 3)} (AUPRC {fmt(best.get('auprc'), 3)}); "
        f"adaptive, learning online from late labels, is {abs(gap):.1f} points {'above' if gap >= 0 else 'below'} "
        "it. "
        + (
            "Its labels change at its policy change, so one combination fitted to the whole stream is a reference "
            "here, not a bound: a learner that follows the change can pass it."
            if changed
            else "Its labels do not change, so this is about the most a fixed combination of these experts' logits "
            "reaches: "
            + ("the gap to adaptive is the price of learning online from late labels, and " if gap < 0 else "")
            + "more F1 than this needs better experts, not a better combiner."
        )
    )


def _default_objective(study: Mapping[str, Any]) -> list[str]:
    """The smaller table: adaptive and fixed with the default objective, F1 and cost, beside adaptive with F1."""
    default = study.get("default_objective")
    if not default:
        return []
    tenants = study["report"]["tenants"]
    ratios = ", ".join(
        f"{p.strictness} {fmt(default_objective(p).cost_ratio_for(None), 2)}" for p in (POLICIES[0], POLICIES[1])
    )
    lines = [
        "### The default objective: each policy's cost ratio",
        "",
        "The same study with no `f_beta` in the policies: each learned threshold then minimises the cost of its "
        "errors at the ratio of a missed harm to a false alarm that the fixed threshold t implies, (1 - t) / t "
        f"({ratios}; `{KIDS}` moves "
        "from the strict ratio to the lenient one at its change). `cost` is measured at that ratio in every row, "
        "including the F1-objective row copied from the tables above; `fixed` does not learn a threshold, so its "
        "row is the same under either objective.",
        "",
        "| tenant | predictor | objective | F1 | cost |",
        "|---|---|---|---:|---:|",
    ]
    verdicts = []
    for tenant, predictors in default.items():
        rows = [
            ("adaptive", "cost ratio", predictors["adaptive"]),
            ("fixed", "-", predictors["fixed"]),
            ("adaptive", "f_beta: 1", tenants[tenant]["adaptive"]),
        ]
        lines += [f"| {tenant} | {n} | {o} | {fmt(m['f1'], 3)} | {fmt(m['cost'], 4)} |" for n, o, m in rows]
        a, f = predictors["adaptive"], predictors["fixed"]
        verdicts.append(
            f"`{tenant}`: adaptive's cost is {fmt(a['cost'], 4)} against fixed's {fmt(f['cost'], 4)} "
            f"({'lower' if a['cost'] < f['cost'] else 'not lower'}), its F1 {fmt(a['f1'], 3)} against "
            f"{fmt(f['f1'], 3)} ({'higher' if a['f1'] > f['f1'] else 'not higher'})"
        )
    return [*lines, "", "Under the policy's own cost: " + "; ".join(verdicts) + ".", ""]


def _targets(tenant: str, m: Mapping[str, Mapping[str, Any]]) -> str:
    adaptive, fixed, best = m["adaptive"], m["fixed"], m["best_expert"]
    gap_best = 100 * (adaptive["f1"] - best["f1"])
    gap_fixed = 100 * (adaptive["f1"] - fixed["f1"])
    first = adaptive["labels_to_within_1pt"]
    recovery = [r["labels"] for r in adaptive["recovery"]]
    parts = [
        f"adaptive F1 {fmt(adaptive['f1'], 3)}: {gap_best:+.1f} points against best_expert (target >= 0: "
        f"{'met' if gap_best >= 0 else 'missed'}), {gap_fixed:+.1f} against fixed (target >= +3: "
        f"{'met' if gap_fixed >= 3 else 'missed'})",
        f"within 1 point of its final F1 after {_cell(first)} labels (target <= 300: "
        f"{'met' if first is not None and first <= 300 else 'missed'}; its final F1 there: "
        f"{fmt(adaptive['final_f1'], 3)})",
    ]
    if recovery:
        r = recovery[0]
        parts.append(
            f"back within 1 point {_cell(r)} labels after the policy change (target <= 200: "
            f"{'met' if r is not None and r <= 200 else 'missed'}; the level it comes back to: "
            f"{fmt(adaptive['recovery'][0]['final_f1'], 3)})"
        )
    return f"**{tenant}**: " + "; ".join(parts) + "."


def study_section(study: Mapping[str, Any] | str) -> list[str]:
    """The results page's section: setup, per-tenant tables, the targets and the ceiling against the figures, the
    plots, and the default-objective table."""
    lines = ["## Two tenants on real text", ""]
    if isinstance(study, str):
        return [*lines, f"Skipped: {study}.", ""]
    report = study["report"]
    experts = ", ".join(f"`{e}`" for e in report["experts"])
    lines += [
        f"{study['texts']:,} texts from the shared sets (Davidson: {DAVIDSON_ROWS[0]} hateful, {DAVIDSON_ROWS[1]} "
        f"offensive-only, {DAVIDSON_ROWS[2]} neither; {OPENAI_ROWS} OpenAI moderation rows with a verdict; all of "
        f"XSTest), each sent once by `{KIDS}` (policy strict) and once by `{GAMING}` (lenient), "
        f"{report['steps']:,} requests in one seeded shuffle, labels back {FEEDBACK_DELAY} requests later, through "
        f"`Engine.moderate` with the CPU experts not trained on these sets ({experts}; outputs cached). "
        f"`{KIDS}` labels offensive-only tweets unsafe, `{GAMING}` safe; everything else is labelled alike. At request "
        f"{study['change']:,} `{KIDS}` switches to a lenient policy and from then on labels offensive-only tweets "
        "safe.",
        "",
        "Both tenants state F1 as their objective (`f_beta: 1` in each policy, before and after the change): this "
        "study measures F1, and a learned threshold optimises what its policy states, not what a page measures. "
        "Strictness still sets the fixed thresholds (of `fixed` and of each expert's row) and the cost ratio of the "
        "`cost` column; the last table below shows the same study with the default objective.",
        "",
        "Predictors: `adaptive` is the default configuration (learner `default+adaptive`: calibration per expert, "
        "Fixed-Share-grid weights, thresholds learned per tenant); `fixed` the ensemble with the policy's fixed "
        "thresholds (learner `default`, `thresholds: fixed`); `global_only` is `adaptive` without personalisation; "
        "each expert at the policy's fixed threshold. Two oracles fitted in hindsight on the tenant's whole stream: "
        "`best_expert`, the single expert and threshold with the best F1; `hindsight_combiner`, a logistic "
        "regression over the experts' logits (fitted for likelihood) at the threshold with the best F1: what a fixed "
        "combination of these experts reaches. Measured on the whole-request decision (`Decision.flagged`) against the "
        "tenant's label; AUPRC and loss (mean squared) on the whole-request score. Cost: the mean over labelled "
        "requests of (c x missed + false alarm) / max(c, 1), with c the cost ratio of a missed harm to a false "
        "alarm of the policy in force, (1 - t) / t for its fixed threshold t: "
        + ", ".join(
            f"`{p.tenant}`{' after its change' if p is LATER_KIDS_POLICY else ''} ({p.strictness}) "
            f"{fmt(p.cost_ratio_for(None), 2)}"
            for p in (POLICIES[0], POLICIES[1], LATER_KIDS_POLICY)
        )
        + f" (lower is better). Labels to within 1 point: the first label count at which the F1 over the tenant's "
        f"last {WINDOW} labels reaches the final F1 (of the span's last quarter) minus 1 point: a first crossing on "
        f"a noisy window, so an optimistic reading; for `{KIDS}` it is measured before its change, and again from "
        "the change on.",
        "",
    ]
    for tenant, predictors in report["tenants"].items():
        lines += [f"### {tenant}", "", *_table(predictors), "", _targets(tenant, predictors), ""]
        lines += [_ceiling(tenant, predictors), "", f"![{tenant}]({study['figures'][tenant]})", ""]
    return [*lines, *_default_objective(study)]
