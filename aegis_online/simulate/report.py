"""The evaluation report of a simulation or a replay: one JSON document and its Markdown summary.

``evaluate`` measures every learner run, every expert and the plain average of the experts on a ``Stream`` against
the oracles, and returns the document written to ``report.json``: ``learners`` (name -> metrics, at least
``cumulative_loss``), ``experts`` (name -> metrics), ``baselines``, ``oracles`` (``best_fixed_loss``,
``best_switching_loss``, the switching curve), ``bandit`` (call savings and loss ratio to full information) and
the context it was run in. ``markdown_summary`` renders the headline numbers. No plotting here (``plots``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aegis_online.simulate.oracles import OracleReport, compute_oracles, expert_losses
from aegis_online.simulate.predictor_metrics import PredictorMetrics, Windows, recovery_steps, segment_oracle_losses
from aegis_online.simulate.runner import LearnerRun
from aegis_online.simulate.stream import Stream

#: The full-information learner a bandit learner's loss is compared with.
FULL_INFORMATION_REFERENCE = "default"
REPORT_VERSION = 1


def uniform_average(stream: Stream) -> np.ndarray:
    """The plain average of the experts that answered, ``(R, T, C)`` (NaN where none did)."""
    awake = stream.awake
    total = np.where(awake, stream.outputs, 0.0).sum(axis=3)
    count = awake.sum(axis=3)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


def covering(stream: Stream) -> np.ndarray:
    """``(C, N)``: whether each expert scored each category anywhere in the stream (covers it)."""
    return np.isfinite(stream.outputs).any(axis=(0, 1))


def covered_weights(weights: np.ndarray, covers: np.ndarray) -> np.ndarray:
    """Weights ``(..., C, N)`` renormalised over the experts that cover each category, NaN for the others.

    A learner keeps a weight for every expert in every category, but one that never scores a category keeps its
    prior there (0.5 / 0.5 with two experts), which says nothing: the service's weights endpoint leaves such experts
    out, and so do the report and the plots.

    >>> covered_weights(np.array([[0.5, 0.5], [0.2, 0.8]]), np.array([[True, False], [True, True]])).tolist()
    [[1.0, nan], [0.2, 0.8]]
    """
    kept = np.where(covers, weights, 0.0)
    total = kept.sum(axis=-1, keepdims=True)
    shares = np.divide(kept, total, out=np.zeros_like(kept, dtype=np.float64), where=total > 0)
    return np.where(covers, shares, np.nan)


def bound_applies(stream: Stream) -> bool:
    """True when a learner sees every label, right away and unflipped, on one tenant: the bounds' setting."""
    every = np.all(stream.arrival == np.arange(stream.steps)[None, :] + 1)
    clean = np.array_equal(np.isfinite(stream.feedback), stream.evaluated) and np.allclose(
        np.nan_to_num(stream.feedback), np.nan_to_num(stream.truth)
    )
    return bool(every and clean and len(stream.tenants) == 1)


def _predictor_entry(metrics: PredictorMetrics, stream: Stream, with_windows: bool = True) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "cumulative_loss": metrics.cumulative_loss(),
        "observed_loss": metrics.observed_loss(),
        "rows": metrics.rows(),
    }
    entry["mean_loss"] = entry["cumulative_loss"] / entry["rows"] if entry["rows"] else math.nan
    summary = metrics.summary()
    entry.update({k: v for k, v in summary.items() if k not in ("cumulative_loss", "rows")})
    jailbreak = metrics.jailbreak_recall()
    if jailbreak is not None:
        entry["jailbreak_recall"] = jailbreak
    if len(stream.tenants) > 1:
        entry["per_tenant"] = {name: metrics.summary(tenant=j) for j, name in enumerate(stream.tenants)}
    if len(stream.segments) > 1:
        entry["per_segment"] = {seg.name: metrics.summary(slice(seg.start, seg.end)) for seg in stream.segments}
    if with_windows:
        entry["windowed"] = metrics.windowed()
    return entry


def _recovery_window(length: int) -> int:
    return int(min(max(length // 50, 25), 500))


def _drift_references(stream: Stream, e_loss: np.ndarray) -> list[tuple[int, int, np.ndarray]]:
    ends = [*stream.drifts[1:], stream.steps] if stream.drifts else []
    return [(d, end, segment_oracle_losses(stream, e_loss, d, end)) for d, end in zip(stream.drifts, ends, strict=True)]


def _stream_bound(run: LearnerRun, oracles: OracleReport, replicas: int) -> float | None:
    bound = None if run.learner is None else getattr(run.learner, "regret_bound", None)
    if bound is None:
        return None
    rounds = oracles.streams.rounds.reshape(replicas, -1)
    return float(np.mean([sum(bound(int(n)) for n in row if n > 0) for row in rounds]))


def evaluate(
    stream: Stream,
    runs: Mapping[str, LearnerRun],
    *,
    switches_per_stream: int,
    context: Mapping[str, Any] | None = None,
    window_count: int = 20,
    recovery_tolerance: float = 0.1,
    oracles: OracleReport | None = None,
) -> dict[str, Any]:
    """Measure ``runs``, the experts and the uniform average on ``stream``; the ``report.json`` document."""
    windows = Windows.over(stream.steps, window_count)
    oracles = oracles or compute_oracles(stream, switches_per_stream)
    e_loss = expert_losses(stream)
    references = _drift_references(stream, e_loss)
    applies = bound_applies(stream)
    R = stream.replicas
    covers = covering(stream)
    full_calls = float(np.isfinite(stream.outputs).any(axis=2).sum() / R)

    learners: dict[str, Any] = {}
    for name, run in runs.items():
        metrics = PredictorMetrics(stream, run.predictions, windows, flagged=run.flagged)
        entry = _predictor_entry(metrics, stream)
        expected = np.where(metrics.mask[..., None], run.weights * np.nan_to_num(e_loss), 0.0).sum() / R
        entry["expected_loss"] = float(expected)
        entry["regret_best_fixed"] = entry["cumulative_loss"] - oracles.best_fixed_loss
        entry["regret_best_switching"] = entry["cumulative_loss"] - oracles.best_switching_loss
        entry["ratio_to_best_switching"] = (
            entry["cumulative_loss"] / oracles.best_switching_loss if oracles.best_switching_loss > 0 else math.nan
        )
        entry["expected_regret_best_fixed"] = entry["expected_loss"] - oracles.best_fixed_loss
        bandit_k = int(run.queried.sum(axis=2).max(initial=0)) if run.bandit else None
        bound = _stream_bound(run, oracles, R) if not run.bandit or bandit_k == 1 else None
        entry["regret_bound_best_fixed"] = bound
        entry["bound_applies"] = applies and bound is not None
        within = entry["bound_applies"] and entry["expected_regret_best_fixed"] <= (bound or 0.0)
        entry["within_regret_bound"] = bool(within) if entry["bound_applies"] else None
        request_loss = metrics.request_losses()
        entry["recovery_steps"] = [
            recovery_steps(request_loss[:, d:end], ref, _recovery_window(end - d), recovery_tolerance)
            for d, end, ref in references
        ]
        entry["expert_calls"] = float(run.queried.sum() / R)
        entry["expert_calls_per_request"] = entry["expert_calls"] / stream.steps
        samples = covered_weights(run.weight_samples, covers)
        entry["weights"] = {
            "scope": "global",
            "replica": 0,
            "times": run.weight_times.tolist(),
            # an expert that does not cover a category is null there (by_category) or left out (final)
            "by_category": {c: samples[:, k, :].tolist() for k, c in enumerate(stream.categories)},
            "final": {
                scope: {
                    c: {e: float(v) for e, v, on in zip(stream.experts, w[k], covers[k], strict=True) if on}
                    for k, c in enumerate(stream.categories)
                }
                for scope, w in ((s, covered_weights(w, covers)) for s, w in run.final_weights.items())
            },
        }
        entry["seconds"] = run.seconds
        entry["per_replica"] = {
            "cumulative_loss": (metrics.loss.sum(axis=(1, 2))).tolist(),
        }
        learners[name] = entry

    experts = {}
    for i, name in enumerate(stream.experts):
        metrics = PredictorMetrics(stream, stream.outputs[..., i], windows)
        experts[name] = _predictor_entry(metrics, stream)
    baselines = {"uniform": _predictor_entry(PredictorMetrics(stream, uniform_average(stream), windows), stream)}

    bandit = {}
    for name, run in runs.items():
        if not run.bandit:
            continue
        reference = learners.get(FULL_INFORMATION_REFERENCE)
        hedge = learners.get("hedge")
        calls = learners[name]["expert_calls"]
        bandit[name] = {
            "k": int(run.queried.sum(axis=2).max(initial=0)),
            "expert_calls": calls,
            "full_information_calls": full_calls,
            "call_savings": 1.0 - calls / full_calls if full_calls else math.nan,
            "full_information_learner": FULL_INFORMATION_REFERENCE if reference else None,
            "loss_ratio_to_full_information": (
                learners[name]["cumulative_loss"] / reference["cumulative_loss"] if reference else None
            ),
            "loss_ratio_to_hedge": learners[name]["cumulative_loss"] / hedge["cumulative_loss"] if hedge else None,
        }

    cascade = {}
    for name, run in runs.items():
        if run.cascade is None or run.escalated is None:
            continue
        chosen = list(run.cascade.expensive)
        cheap = [i for i in range(len(stream.experts)) if i not in chosen]
        full = float(np.isfinite(stream.outputs[..., chosen]).any(axis=2).sum() / R)
        calls = float(run.queried[..., chosen].sum() / R)
        reference = learners.get(run.cascade.full_information or "")
        cascade[name] = {
            "expensive_experts": [stream.experts[i] for i in chosen],
            "target_escalation_rate": run.cascade.rule.target_rate,
            "escalation_rate": float(run.escalated.mean()),
            "expensive_calls": calls,
            "full_information_expensive_calls": full,
            "expensive_calls_saved": 1.0 - calls / full if full else math.nan,
            "calls_by_tier": {
                tier: {stream.experts[i]: float(run.queried[..., i].sum() / R) for i in members}
                for tier, members in (("cheap", cheap), ("expensive", chosen))
            },
            "full_information_learner": run.cascade.full_information if reference else None,
            "loss_ratio": learners[name]["cumulative_loss"] / reference["cumulative_loss"] if reference else None,
            "f1_macro": learners[name].get("f1_macro"),
            "full_information_f1_macro": reference.get("f1_macro") if reference else None,
            "per_tenant_f1_macro": {t: m.get("f1_macro") for t, m in learners[name].get("per_tenant", {}).items()},
        }

    return {
        "version": REPORT_VERSION,
        **dict(context or {}),
        "steps": stream.steps,
        "replicas": R,
        "seeds": list(stream.seeds),
        "experts_order": list(stream.experts),
        "categories": list(stream.categories),
        "tenants": list(stream.tenants),
        "drifts": list(stream.drifts),
        "segments": [{"name": s.name, "start": s.start, "end": s.end} for s in stream.segments],
        "windows": {"size": windows.size, "starts": windows.starts.tolist()},
        "learners": learners,
        "experts": experts,
        "baselines": baselines,
        "oracles": oracles.to_json(),
        "bandit": bandit,
        "cascade": cascade,
        "notes": {
            "loss": "squared loss of the probability against the true label, summed over (request, category); "
            "averaged over replicas",
            "expected_loss": "sum of weights x expert losses (the linearised loss the regret bounds are about)",
            "regret": "cumulative_loss minus the oracle's; expected_regret_best_fixed uses expected_loss",
            "streams": "oracles and bounds are per (replica, tenant, category), as the learner keys are",
            "recovery_steps": f"requests after each drift until the learner's mean loss over a window is within "
            f"{recovery_tolerance:.0%} of the best expert of the new segment; null: never",
        },
    }


def jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    return value


def write_report(report: Mapping[str, Any], out: Path) -> Path:
    """Write ``report.json`` (NaN and infinities as null) into folder ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(json.dumps(jsonable(dict(report)), indent=1, allow_nan=False) + "\n")
    return path


# -- Markdown ------------------------------------------------------------------------------------------------------
def fmt(value: Any, digits: int = 1) -> str:
    """A number for a table: thousands separators, ``-`` for missing."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100 * value:.1f}%"


def _recovery(values: list[float | None]) -> str:
    if not values:
        return "-"
    return ", ".join("never" if v is None else f"{v:,.0f}" for v in values)


def learners_table(report: Mapping[str, Any]) -> list[str]:
    oracles = report["oracles"]
    lines = [
        "| learner | loss | vs best fixed | vs best switching | loss / switching | FPR benign | F1 (macro) | "
        "AUPRC (macro) | recovery (requests) | expert calls |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report["learners"].items():
        lines.append(
            f"| {name} | {fmt(m['cumulative_loss'])} | {fmt(m['regret_best_fixed'])} | "
            f"{fmt(m['regret_best_switching'])} | {fmt(m['ratio_to_best_switching'], 3)} | "
            f"{pct(m['false_positive_rate'])} | {fmt(m['f1_macro'], 3)} | {fmt(m['auprc_macro'], 3)} | "
            f"{_recovery(m['recovery_steps'])} | {fmt(m['expert_calls'], 0)} |"
        )
    lines.append(
        f"| *best fixed expert* | {fmt(oracles['best_fixed_loss'])} | 0.0 | | | | | | | |\n"
        f"| *best sequence, {oracles['switches']} switches* | {fmt(oracles['best_switching_loss'])} | | 0.0 | 1.000 "
        "| | | | | |"
    )
    return lines


def predictors_table(entries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    lines = [
        "| predictor | loss | mean loss | FPR benign | recall unsafe | F1 (macro) | AUPRC (macro) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in entries.items():
        lines.append(
            f"| {name} | {fmt(m['cumulative_loss'])} | {fmt(m['mean_loss'], 4)} | {pct(m['false_positive_rate'])} | "
            f"{pct(m['recall'])} | {fmt(m['f1_macro'], 3)} | {fmt(m['auprc_macro'], 3)} |"
        )
    return lines


def segments_table(report: Mapping[str, Any]) -> list[str]:
    """False-positive rate on benign requests and recall on unsafe ones, per segment (phase or data set)."""
    segments = [s["name"] for s in report["segments"]]
    predictors = {
        **{f"{k} (learner)": v for k, v in report["learners"].items()},
        **report["experts"],
        "uniform average": report["baselines"]["uniform"],
    }
    lines = [
        "| predictor | " + " | ".join(f"{s}: FPR / recall / loss" for s in segments) + " |",
        "|---|" + "---:|" * len(segments),
    ]
    for name, m in predictors.items():
        cells = []
        for seg in segments:
            part = m.get("per_segment", {}).get(seg, {})
            mean = part.get("cumulative_loss", math.nan) / part["rows"] if part.get("rows") else math.nan
            cells.append(f"{pct(part.get('false_positive_rate'))} / {pct(part.get('recall'))} / {fmt(mean, 4)}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _labels_cell(entry: Mapping[str, Any]) -> str:
    first = entry.get("labels_to_within_1pt")
    recovery = [r.get("labels") for r in entry.get("recovery", [])]
    if "labels_to_within_1pt" not in entry:
        return "-"
    text = f"{'never' if first is None else f'{first:,}'} (final {fmt(entry.get('final_f1'), 3)})"
    if recovery:
        text += "; after change: " + ", ".join("never" if r is None else f"{r:,}" for r in recovery)
    return text


def tenants_tables(report: Mapping[str, Any]) -> list[str]:
    """Per tenant, every predictor's F1, precision, recall, FPR, AUPRC, loss and cost at the whole-request decision,
    and labels until its rolling F1 first comes within 1 point of its final value (and again after each policy
    change)."""
    window = report.get("convergence_window", "-")
    lines = [
        f"Labels to within 1 point: the first label count at which the F1 over the tenant's last {window} labels "
        "reaches the span's final F1 (its last quarter) minus 1 point; after a policy change, counted from it. "
        "Cost: the mean of (c x missed + false alarm) / max(c, 1) per labelled request, c the cost ratio of the "
        "policy in force (lower is better).",
        "",
    ]
    for tenant, predictors in report["tenants"].items():
        lines += [
            f"### {tenant}",
            "",
            "| predictor | F1 | precision | recall | FPR | AUPRC | loss | cost | labels to within 1 point |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, m in predictors.items():
            label = f"{name} ({m['expert']} >= {fmt(m['threshold'], 3)})" if m.get("expert") else name
            lines.append(
                f"| {label} | {fmt(m.get('f1'), 3)} | {fmt(m.get('precision'), 3)} | {fmt(m.get('recall'), 3)} | "
                f"{pct(m.get('fpr'))} | {fmt(m.get('auprc'), 3)} | {fmt(m.get('loss'), 4)} | "
                f"{fmt(m.get('cost'), 4)} | {_labels_cell(m)} |"
            )
        lines.append("")
    return lines


def markdown_summary(report: Mapping[str, Any], plots: list[str] | None = None) -> str:
    """The headline tables of a report, for a human."""
    title = report.get("scenario", {}).get("name") or report.get("kind", "run")
    lines = [f"# {report.get('kind', 'run')}: {title}", ""]
    description = report.get("scenario", {}).get("description") or report.get("description")
    if description:
        lines += [description, ""]
    lines += [
        f"{report['steps']:,} requests, {len(report['categories'])} categories, {len(report['experts_order'])} "
        f"experts, {len(report['tenants'])} tenant(s), {report['replicas']} replica(s); drifts at "
        f"{', '.join(f'{d:,}' for d in report['drifts']) or 'none'}.",
        "",
        "## Learners",
        "",
        *learners_table(report),
        "",
        "## Experts and the plain average",
        "",
        *predictors_table({**report["experts"], "uniform average": report["baselines"]["uniform"]}),
        "",
    ]
    if len(report.get("segments", [])) > 1:
        lines += ["## Per segment", "", *segments_table(report), ""]
    if isinstance(report.get("tenants"), Mapping):
        lines += ["## Per tenant: the whole-request decision", "", *tenants_tables(report), ""]
    if report.get("bandit"):
        lines += ["## Bandit mode", "", "| learner | k | calls | full-information calls | savings | loss ratio |"]
        lines += ["|---|---:|---:|---:|---:|---:|"]
        for name, b in report["bandit"].items():
            lines.append(
                f"| {name} | {b['k']} | {fmt(b['expert_calls'], 0)} | {fmt(b['full_information_calls'], 0)} | "
                f"{pct(b['call_savings'])} | {fmt(b['loss_ratio_to_full_information'], 3)} x "
                f"{b['full_information_learner'] or '-'} |"
            )
        lines.append("")
    for plot in plots or []:
        lines += [f"![{plot}]({plot})", ""]
    notes = report.get("notes", {})
    if notes:
        lines += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in notes.items()] + [""]
    return "\n".join(lines)
