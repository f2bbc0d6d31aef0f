"""A multi-tenant replay: every row sent as its tenant, each tenant under its policy, and each predictor replayed
through its own engine, so the report can say per tenant what adaptation buys.

Predictors that need the engine (one replay each, same rows, same feedback, same policy changes):

- ``adaptive``: the default configuration (learner ``DEFAULT_LEARNER``, the policies as given: learned thresholds);
- ``fixed``: the ensemble without calibration or learned thresholds (learner ``default``, ``thresholds: fixed``);
- ``global_only``: ``adaptive`` without personalisation (``personalise_after`` beyond the run: global weights,
  calibration and thresholds only).

Predictors read from the cached expert outputs (no engine): each expert (its whole-request score, the highest over
the categories evaluated, at the policy's fixed whole-request threshold in force at the row), ``best_expert``
(per tenant, the expert and fixed threshold with the best F1 in hindsight) and ``hindsight_combiner`` (per tenant, a
logistic regression over all the experts' logits fitted on the tenant's whole stream, at the threshold with the best
F1: the ceiling of a fixed combination of these experts, as ``best_expert`` is of one of them).

Each is measured on the tenant's labelled requests (``tenant_metrics``): the decision is ``Decision.flagged`` (the
final one: the learned whole-request decision once learned, the categories' before) and the score is the
whole-request score ``Decision.overall.score``; ``loss`` is its mean squared loss against the tenant's label;
``cost`` is the mean cost-weighted decision loss, ``(c * [missed] + [false alarm]) / max(c, 1)`` per labelled
request, at the cost ratio ``c = policy.cost_ratio_for(None)`` of the policy in force at the request (explicit, or
implied by its fixed threshold: what a policy without a ``cost_ratio`` still costs errors at, whatever objective its
thresholds are learned toward).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aegis_online.engine import Engine
from aegis_online.experts import Expert
from aegis_online.learn import DEFAULT_LEARNER
from aegis_online.policy import TenantPolicy
from aegis_online.simulate.cache import ReplayCache
from aegis_online.simulate.expert_outputs import CachedExpert, output_matrix, score_texts
from aegis_online.simulate.oracles import compute_oracles
from aegis_online.simulate.replay import EngineBackend, ReplayLog, drive, learner_run, summary_of_feedback
from aegis_online.simulate.replay_run import ReplayResult, choose_categories
from aegis_online.simulate.report import evaluate
from aegis_online.simulate.stream import Stream
from aegis_online.simulate.tenancy import PolicyChange, TenantSetup, row_tenants, tenant_setup
from aegis_online.simulate.tenant_metrics import (
    DEFAULT_WINDOW,
    best_threshold,
    convergence,
    decision_metrics,
    hindsight_combiner,
    rolling_f1,
)
from aegis_online.simulate.traffic import DataSpec, ReplayTraffic, chain
from aegis_online.weights.updates import overall_outputs

#: ``personalise_after`` of the ``global_only`` predictor: never reached.
NEVER = 10**9
ADAPTIVE, FIXED, GLOBAL_ONLY, BEST_EXPERT = "adaptive", "fixed", "global_only", "best_expert"
HINDSIGHT_COMBINER = "hindsight_combiner"
ENGINE_PREDICTORS: tuple[str, ...] = (ADAPTIVE, FIXED, GLOBAL_ONLY)

Progress = Callable[[str, int, int], None]


def predictor_setup(name: str) -> tuple[str, Callable[[TenantPolicy], TenantPolicy]]:
    """The learner of an engine predictor and how it turns a tenant's policy into the one its engine runs."""
    if name == ADAPTIVE:
        return DEFAULT_LEARNER, lambda p: p
    if name == FIXED:
        return "default", lambda p: p.model_copy(update={"thresholds": "fixed"})
    if name == GLOBAL_ONLY:
        return DEFAULT_LEARNER, lambda p: p.model_copy(update={"personalise_after": NEVER})
    raise ValueError(f"unknown engine predictor {name!r}; choose from {', '.join(ENGINE_PREDICTORS)}")


@dataclass
class TenantReplayConfig:
    """A multi-tenant replay: the data, the column naming each row's tenant, policies and mid-stream changes."""

    data: Sequence[DataSpec]
    tenant_column: str = "tenant"
    policies: Sequence[TenantPolicy] = ()
    changes: Sequence[PolicyChange] = ()
    categories: Sequence[str] | None = None
    feedback_delay: int = 0
    feedback_share: float = 1.0
    shuffle: bool = True
    seed: int = 0
    window: int = DEFAULT_WINDOW
    switches: int | None = None
    predictors: Sequence[str] = ENGINE_PREDICTORS


@dataclass
class TenantCurves:
    """Per tenant, the rolling F1 of each predictor over its labels, and where its policy changed (label counts)."""

    window: int
    f1: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    changes: dict[str, list[int]] = field(default_factory=dict)


def _policy_rows(setup: TenantSetup, steps: int) -> list[TenantPolicy]:
    """The policy in force at each request (its tenant's, after the changes up to it)."""
    current = dict(setup.policies)
    out = []
    for t in range(steps):
        for change in setup.changes_at(t):
            current[change.policy.tenant] = change.policy
        out.append(current[setup.tenants[t]])
    return out


def replay_predictor(
    name: str,
    traffic: ReplayTraffic,
    setup: TenantSetup,
    cached: Sequence[CachedExpert],
    categories: Sequence[str],
    config: TenantReplayConfig,
    progress: Callable[[int], None] | None = None,
) -> tuple[ReplayLog, np.ndarray, np.ndarray, list[tuple[int, np.ndarray]], float, Engine]:
    """One engine predictor's replay: its own engine, the tenants' policies as it runs them, changes applied."""
    learner, adapt = predictor_setup(name)
    engine = Engine(list(cached), learner=learner, seed=config.seed)
    for policy in setup.policies.values():
        engine.policies.put(adapt(policy))

    def before_row(t: int) -> None:
        for change in setup.changes_at(t):
            engine.policies.put(adapt(change.policy))

    backend = EngineBackend(engine)
    started = time.perf_counter()
    try:
        log, arrival, sent, snapshots = drive(
            backend,
            traffic.rows,
            experts=engine.expert_names,
            categories=categories,
            tenant=setup.names[0],
            feedback_delay=config.feedback_delay,
            feedback_share=config.feedback_share,
            seed=config.seed,
            run_id=f"{name}-{config.seed}",
            progress=progress,
            tenants=setup.tenants,
            before_row=before_row,
        )
    finally:
        backend.close()
    return log, arrival, sent, snapshots, time.perf_counter() - started, engine


def tenant_stream(
    traffic: ReplayTraffic,
    setup: TenantSetup,
    experts: Sequence[str],
    categories: Sequence[str],
    outputs: np.ndarray,
    arrival: np.ndarray,
    sent: np.ndarray,
) -> Stream:
    """The rows' truth and the experts' outputs as a one-replica ``Stream`` over the replay's tenants."""
    rows = traffic.rows
    truth = np.array([[np.nan if (v := r.label(c)) is None else float(v) for c in categories] for r in rows])
    truth = truth.reshape(len(rows), len(categories))
    unsafe = np.array([np.nan if r.unsafe is None else float(r.unsafe) for r in rows])
    names = setup.names
    index = {n: j for j, n in enumerate(names)}
    policies = [setup.policies[n] for n in names]
    return Stream(
        experts=tuple(experts),
        categories=tuple(categories),
        tenants=names,
        outputs=outputs[None],
        truth=truth[None],
        unsafe=unsafe[None],
        feedback=sent[None],
        arrival=arrival[None],
        tenant=np.array([[index[t] for t in setup.tenants]], dtype=np.int64),
        thresholds=np.array([[p.threshold_for(c) for c in categories] for p in policies]).reshape(len(names), -1),
        personalise_after=np.array([p.personalise_after for p in policies]),
        drifts=tuple(sorted({c.row for c in setup.changes})),
        segments=traffic.segments,
    )


def expert_overall(outputs: np.ndarray) -> np.ndarray:
    """Each expert's whole-request score per request, ``(T, N)``: its highest over the categories (as the engine)."""
    return np.stack([overall_outputs(o) for o in outputs]) if len(outputs) else np.zeros((0, outputs.shape[2]))


def _at(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Flags of ``scores >= thresholds``; a missing score (NaN) never flags."""
    return np.isfinite(scores) & (np.nan_to_num(scores, nan=-1.0) >= thresholds)


def _spans(positions: np.ndarray, rows: Sequence[int]) -> list[tuple[int, int]]:
    """Label-index spans ``[a, b)`` of a tenant's labels cut at the request ``rows`` of its policy changes."""
    cuts = [int(np.searchsorted(positions, r)) for r in rows]
    edges = [0, *cuts, len(positions)]
    return list(itertools.pairwise(edges))


def _combiner_entry(labels: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> dict[str, Any]:
    """``hindsight_combiner``: the experts' logistic combination fitted on the tenant's labels, at its best-F1
    threshold; only a threshold of None when the tenant has no positive label."""
    combined = hindsight_combiner(labels, scores)
    threshold, _ = best_threshold(labels, combined)
    if not np.isfinite(threshold):
        return {"threshold": None}
    flags = _at(combined, np.full(len(combined), threshold))
    return {**decision_metrics(labels, flags, combined, costs), "threshold": threshold}


def tenants_section(
    traffic: ReplayTraffic,
    setup: TenantSetup,
    expert_names: Sequence[str],
    outputs: np.ndarray,
    logs: Mapping[str, ReplayLog],
    window: int,
) -> tuple[dict[str, Any], TenantCurves]:
    """``report["tenants"]``: per tenant, per predictor, the decision metrics; convergence and recovery for the
    engine predictors; and the rolling-F1 curves for the plots."""
    unsafe = np.array([np.nan if r.unsafe is None else float(r.unsafe) for r in traffic.rows])
    tenants = np.array(setup.tenants)
    per_row = _policy_rows(setup, len(traffic.rows))
    fixed_threshold = np.array([p.overall_threshold() for p in per_row])
    cost_ratio = np.array([p.cost_ratio_for(None) for p in per_row])
    overall = expert_overall(outputs)
    curves = TenantCurves(window=window)
    section: dict[str, Any] = {}
    for name in setup.names:
        where = np.flatnonzero((tenants == name) & np.isfinite(unsafe))
        y = unsafe[where] > 0.5
        change_rows = [c.row for c in setup.changes if c.policy.tenant == name]
        spans = _spans(where, change_rows)
        costs = cost_ratio[where]
        entry: dict[str, Any] = {}
        curves.f1[name] = {}
        curves.changes[name] = [a for a, _ in spans[1:]]
        for predictor, log in logs.items():
            flagged, scores = log.request_flagged[where], log.overall_scores[where]
            metrics = decision_metrics(y, flagged, scores, costs)
            first = convergence(y[spans[0][0] : spans[0][1]], flagged[spans[0][0] : spans[0][1]], window)
            metrics["labels_to_within_1pt"] = first["labels"]
            metrics["final_f1"] = first["final_f1"]
            metrics["recovery"] = [
                {"row": row, **convergence(y[a:b], flagged[a:b], window)}
                for row, (a, b) in zip(change_rows, spans[1:], strict=True)
            ]
            metrics["learned_threshold_share"] = float(log.overall_learned[where].mean()) if len(where) else None
            entry[predictor] = metrics
            curves.f1[name][predictor] = rolling_f1(y, flagged, window)
        best: tuple[float, int, float] | None = None  # (F1, expert, threshold)
        for i, expert in enumerate(expert_names):
            scores = overall[where, i]
            flags = _at(scores, fixed_threshold[where])
            entry[expert] = {**decision_metrics(y, flags, scores, costs), "threshold": "policy"}
            threshold, f1 = best_threshold(y, scores)
            if np.isfinite(f1) and (best is None or f1 > best[0]):
                best = (f1, i, threshold)
        entry[BEST_EXPERT] = {"expert": None, "threshold": None}
        if best is not None:
            _, i, threshold = best
            scores = overall[where, i]
            chosen = _at(scores, np.full(len(scores), threshold))
            entry[BEST_EXPERT] = {
                **decision_metrics(y, chosen, scores, costs),
                "expert": expert_names[i],
                "threshold": threshold,
            }
            curves.f1[name][f"{BEST_EXPERT} ({expert_names[i]})"] = rolling_f1(y, chosen, window)
        entry[HINDSIGHT_COMBINER] = _combiner_entry(y, overall[where], costs)
        section[name] = entry
    return section, curves


def _context(config: TenantReplayConfig, traffic: ReplayTraffic, setup: TenantSetup) -> dict[str, Any]:
    return {
        "kind": "replay",
        "mode": "in-process",
        "url": None,
        "description": "Real labelled traffic replayed through the in-process engine, each row as its tenant.",
        "data": [
            {"name": seg.name, "path": str(spec.path), "rows": seg.end - seg.start, "start": seg.start}
            for spec, seg in zip(traffic.sources or config.data, traffic.segments, strict=False)
        ],
        "feedback": {"delay": config.feedback_delay, "share": config.feedback_share},
        "shuffle": config.shuffle,
        "seed": config.seed,
        "tenant_column": config.tenant_column,
        "tenant_requests": {n: setup.tenants.count(n) for n in setup.names},
        "policies": {n: p.model_dump(mode="json", exclude_defaults=True) for n, p in setup.policies.items()},
        "policy_changes": [
            {"row": c.row, "tenant": c.policy.tenant, "policy": c.policy.model_dump(mode="json", exclude_defaults=True)}
            for c in setup.changes
        ],
        "convergence_window": config.window,
    }


def run_tenant_replay(
    config: TenantReplayConfig,
    experts: Sequence[Expert],
    cache: ReplayCache,
    *,
    progress: Progress | None = None,
    traffic: ReplayTraffic | None = None,
) -> tuple[ReplayResult, TenantCurves]:
    """Score the rows once (cached), replay them through each engine predictor, measure per tenant."""
    traffic = traffic or chain(config.data, shuffle=config.shuffle, seed=config.seed)
    if not traffic.rows:
        raise ValueError("the data files hold no rows")
    setup = tenant_setup(row_tenants(traffic.rows, config.tenant_column), config.policies, config.changes)
    covered = {c for e in experts for c in e.categories}
    categories = choose_categories(traffic, covered, config.categories)
    texts = [r.text for r in traffic.rows]
    score_texts(experts, texts, cache, progress=progress)
    outputs = output_matrix(experts, texts, categories, cache)
    cached = [CachedExpert.from_cache(e, texts, cache) for e in experts]
    names = [e.name for e in experts]
    runs, logs = {}, {}
    arrival = sent = None
    for predictor in config.predictors:
        tick = None
        if progress is not None:
            done = 0

            def tick(n: int, predictor: str = predictor) -> None:
                nonlocal done
                done += n
                progress(f"replaying ({predictor})", done, len(texts))

        log, arrival, sent, snapshots, seconds, engine = replay_predictor(
            predictor, traffic, setup, cached, categories, config, tick
        )
        runs[predictor] = learner_run(predictor, log, snapshots, seconds, False, engine.learner)
        logs[predictor] = log
    assert arrival is not None and sent is not None
    stream = tenant_stream(traffic, setup, names, categories, outputs, arrival, sent)
    per_stream = config.switches if config.switches is not None else max(len(setup.changes), 1)
    oracles = compute_oracles(stream, per_stream)
    report = evaluate(
        stream, runs, switches_per_stream=per_stream, context=_context(config, traffic, setup), oracles=oracles
    )
    for name, log in logs.items():
        report["learners"][name]["feedback"] = summary_of_feedback(log)
    report["tenants"], curves = tenants_section(traffic, setup, names, outputs, logs, config.window)
    return ReplayResult(traffic, stream, runs, logs, report, oracles, tenant_curves=curves), curves
