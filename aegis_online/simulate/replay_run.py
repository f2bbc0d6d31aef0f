"""A replay, end to end: read and chain the data, score it with the experts (once, cached), replay it through each
learner's engine or through a running service, measure, and write ``report.json``, ``summary.md`` and the plots.

The CLI's ``replay`` command and the results page both go through ``run_replay`` / ``write_replay_outputs``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aegis_online.client import AegisClient
from aegis_online.engine import BanditConfig, CascadeConfig
from aegis_online.experts import Expert
from aegis_online.learn import LEARNERS, known_learner
from aegis_online.learn.escalation import EscalationRule
from aegis_online.policy import TenantPolicy
from aegis_online.schemas import Message, ModerationRequest
from aegis_online.simulate import plots
from aegis_online.simulate.cache import ReplayCache
from aegis_online.simulate.expert_outputs import CachedExpert, output_matrix, score_texts
from aegis_online.simulate.oracles import OracleReport, compute_oracles
from aegis_online.simulate.replay import (
    ReplayLog,
    drive,
    learner_run,
    replay_in_process,
    replay_stream,
    summary_of_feedback,
)
from aegis_online.simulate.report import evaluate, markdown_summary, write_report
from aegis_online.simulate.runner import LearnerRun
from aegis_online.simulate.service_client import ServiceBackend
from aegis_online.simulate.stream import Stream
from aegis_online.simulate.traffic import DataSpec, ReplayTraffic, chain, fitted_on
from aegis_online.taxonomy import CANONICAL_IDS

if TYPE_CHECKING:  # tenants_replay builds on this module
    from aegis_online.simulate.tenants_replay import TenantCurves

#: Learners a replay compares by default (each replays the whole chain through its own engine).
DEFAULT_REPLAY_LEARNERS: tuple[str, ...] = ("default", "hedge")
#: Name of the learner entry of a replay against a running service (its learner is whatever it runs).
SERVICE_LEARNER = "service"

Progress = Callable[[str, int, int], None]


@dataclass
class ReplayConfig:
    """Everything a replay needs besides the experts (in process) or the URL (over HTTP)."""

    data: Sequence[DataSpec]
    learners: Sequence[str] = DEFAULT_REPLAY_LEARNERS
    categories: Sequence[str] | None = None
    tenant: str = "default"
    feedback_delay: int = 0
    feedback_share: float = 1.0
    bandit_k: int | None = None
    bandit_always: Sequence[str] = ()
    shuffle: bool = True
    seed: int = 0
    switches: int | None = None
    #: cascade mode: the expensive experts (each learner also runs as ``<learner>+cascade``), and the target rate
    cascade: Sequence[str] | None = None
    cascade_target: float = 0.3
    #: the escalation rule's ``hedge_share`` (0: no hedging)
    cascade_hedge_share: float = EscalationRule.hedge_share


@dataclass
class ReplayResult:
    traffic: ReplayTraffic
    stream: Stream
    runs: dict[str, LearnerRun]
    logs: dict[str, ReplayLog]
    report: dict[str, Any]
    oracles: OracleReport
    files: list[Path] = field(default_factory=list)
    #: a multi-tenant replay's rolling F1 per tenant and predictor (one plot per tenant)
    tenant_curves: TenantCurves | None = None


#: The catalog experts the studies on ``../shared/data`` (``make results``) replay: those with no head fitted to those
#: sets. ``minilm-heads`` and ``lexical-heads`` were trained on them, so replaying the sets through them would be
#: in-sample; their held-out figures are leave-one-dataset-out (``bench/lodo.py``). profanity-check's per-category
#: calibration was fitted on the sets too: a monotone map per category, so each category's ranking is its own.
SHARED_DATA_STUDY_EXPERTS: tuple[str, ...] = ("minilm-embedding", "profanity-check")


def build_catalog_experts(
    names: Sequence[str] | None = None,
    heads: Path | None = None,
    on_unavailable: Callable[[str, Exception], None] | None = None,
) -> list[Expert]:
    """Experts from the repository's catalog by name (default: its CPU experts); ``heads`` for the MiniLM one.

    With ``on_unavailable``, a default expert that cannot be built here (its model file or package missing) is
    reported to it and left out instead of failing the run; an expert named in ``names`` always fails loudly.
    """
    from aegis_online.catalog import cpu_expert_specs, default_catalog_dir, load_catalog
    from aegis_online.experts.build import build_expert

    specs = load_catalog(default_catalog_dir())
    by_name = {s.name: s for s in specs}
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"unknown expert(s) {unknown}; the catalog has {', '.join(sorted(by_name))}")
        chosen = [by_name[n] for n in names]
    else:
        chosen = cpu_expert_specs(specs)
    experts = []
    for spec in chosen:
        if heads is not None and spec.backend == "minilm":
            spec = spec.model_copy(update={"backend_options": {**spec.backend_options, "heads": str(heads)}})
        try:
            experts.append(build_expert(spec))
        except (OSError, RuntimeError, ValueError) as error:
            if names or on_unavailable is None:
                raise
            on_unavailable(spec.name, error)
    return experts


def choose_categories(traffic: ReplayTraffic, covered: set[str] | None, wanted: Sequence[str] | None) -> list[str]:
    """``wanted``, else the categories the data labels that some expert covers, else all the experts cover."""
    if wanted:
        unknown = [c for c in wanted if c not in CANONICAL_IDS]
        if unknown:
            raise ValueError(f"unknown categories {unknown}; use canonical ids S1..S24")
        return list(dict.fromkeys(wanted))
    labelled = [c for c in traffic.labelled_categories() if covered is None or c in covered]
    if labelled:
        return sorted(labelled, key=CANONICAL_IDS.index)
    return [c for c in CANONICAL_IDS if covered is None or c in covered]


def _check_learners(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if not known_learner(n)]
    if unknown:
        raise ValueError(
            f"unknown learner(s) {unknown}; choose from {', '.join(sorted(LEARNERS))} (optionally +adaptive)"
        )
    return list(dict.fromkeys(names))


def _bandit(config: ReplayConfig, learner: str, experts: Sequence[str]) -> BanditConfig | None:
    if learner not in LEARNERS or not LEARNERS[learner].bandit:
        return None
    unknown = sorted(set(config.bandit_always) - set(experts))
    if unknown:
        raise ValueError(f"--bandit-always: unknown experts {unknown}; the replay has {', '.join(experts)}")
    k = config.bandit_k or max(len(config.bandit_always), 1)
    if not len(config.bandit_always) <= k <= len(experts):
        raise ValueError(f"--bandit-k must lie in [{len(config.bandit_always)}, {len(experts)}], got {k}")
    return BanditConfig(k=k, always=tuple(config.bandit_always))


def _cascade(config: ReplayConfig, experts: Sequence[str]) -> CascadeConfig | None:
    if not config.cascade:
        return None
    unknown = sorted(set(config.cascade) - set(experts))
    if unknown:
        raise ValueError(f"--cascade: unknown experts {unknown}; the replay has {', '.join(experts)}")
    if set(config.cascade) >= set(experts):
        raise ValueError("--cascade: leave at least one cheap expert (the tier that scores every request)")
    rule = EscalationRule(target_rate=config.cascade_target, hedge_share=config.cascade_hedge_share)
    return CascadeConfig(frozenset(config.cascade), rule)


def _context(
    config: ReplayConfig, traffic: ReplayTraffic, mode: str, url: str | None, experts: Sequence[Expert] = ()
) -> dict[str, Any]:
    """The report's ``context``; each data set lists ``in_sample`` the experts fitted on its rows (in process only:
    a service's experts are not known here)."""
    return {
        "kind": "replay",
        "mode": mode,
        "url": url,
        "description": "Real labelled traffic replayed "
        + ("through the in-process engine." if mode == "in-process" else f"against the service at {url}."),
        "data": [
            {
                "name": seg.name,
                "path": str(spec.path),
                "rows": seg.end - seg.start,
                "start": seg.start,
                "in_sample": fitted_on(experts, spec),
            }
            for spec, seg in zip(traffic.sources or config.data, traffic.segments, strict=False)
        ],
        "feedback": {"delay": config.feedback_delay, "share": config.feedback_share},
        "shuffle": config.shuffle,
        "seed": config.seed,
        "tenant": config.tenant,
    }


def _finish(
    config: ReplayConfig,
    traffic: ReplayTraffic,
    stream: Stream,
    runs: dict[str, LearnerRun],
    logs: dict[str, ReplayLog],
    context: dict[str, Any],
) -> ReplayResult:
    per_stream = config.switches if config.switches is not None else max(len(traffic.segments) - 1, 1)
    oracles = compute_oracles(stream, per_stream)
    report = evaluate(stream, runs, switches_per_stream=per_stream, context=context, oracles=oracles)
    for name, log in logs.items():
        report["learners"][name]["feedback"] = summary_of_feedback(log)
    return ReplayResult(traffic, stream, runs, logs, report, oracles)


def run_replay(
    config: ReplayConfig,
    experts: Sequence[Expert],
    cache: ReplayCache,
    *,
    progress: Progress | None = None,
    traffic: ReplayTraffic | None = None,
) -> ReplayResult:
    """Score the chained data with ``experts`` (cache misses only) and replay it through each learner's engine."""
    learners = _check_learners(config.learners)
    traffic = traffic or chain(config.data, shuffle=config.shuffle, seed=config.seed)
    if not traffic.rows:
        raise ValueError("the data files hold no rows")
    covered = {c for e in experts for c in e.categories}
    categories = choose_categories(traffic, covered, config.categories)
    texts = [r.text for r in traffic.rows]
    score_texts(experts, texts, cache, progress=None if progress is None else (lambda n, d, t: progress(n, d, t)))
    outputs = output_matrix(experts, texts, categories, cache)
    cached = [CachedExpert.from_cache(e, texts, cache) for e in experts]
    names = [e.name for e in experts]
    runs, logs = {}, {}
    arrival = sent = None
    policy = TenantPolicy(tenant=config.tenant)
    for learner in learners:
        tick = None
        if progress is not None:
            done = 0

            def tick(n: int, learner: str = learner) -> None:
                nonlocal done
                done += n
                progress(f"replaying ({learner})", done, len(texts))

        run, log, arrival, sent, policy = replay_in_process(
            traffic.rows,
            cached,
            categories,
            learner,
            tenant=config.tenant,
            feedback_delay=config.feedback_delay,
            feedback_share=config.feedback_share,
            bandit=_bandit(config, learner, names),
            seed=config.seed,
            progress=tick,
        )
        runs[learner], logs[learner] = run, log
        cascade = _cascade(config, names)
        if cascade is not None and _bandit(config, learner, names) is None:
            name = f"{learner}+cascade"
            run, log, *_ = replay_in_process(
                traffic.rows,
                cached,
                categories,
                learner,
                tenant=config.tenant,
                feedback_delay=config.feedback_delay,
                feedback_share=config.feedback_share,
                cascade=cascade,
                name=name,
                seed=config.seed,
                progress=tick,
            )
            runs[name], logs[name] = run, log
    assert arrival is not None and sent is not None
    thresholds = np.array([policy.threshold_for(c) for c in categories])
    stream = replay_stream(
        traffic.rows, traffic.segments, names, categories, outputs, arrival, sent, thresholds, config.tenant
    )
    return _finish(config, traffic, stream, runs, logs, _context(config, traffic, "in-process", None, experts))


def run_replay_http(
    config: ReplayConfig,
    url: str,
    *,
    progress: Progress | None = None,
    client: AegisClient | None = None,
    api_key: str | None = None,
) -> ReplayResult:
    """Replay the chained data against the service at ``url`` (its experts, learner and policy decide), through
    ``client`` when given (it stays open), else a client of ``url`` with ``api_key``."""
    traffic = chain(config.data, shuffle=config.shuffle, seed=config.seed)
    if not traffic.rows:
        raise ValueError("the data files hold no rows")
    categories = choose_categories(traffic, None, config.categories)
    own_client = client is None
    backend = ServiceBackend(client or AegisClient(url, api_key=api_key))
    try:
        first = backend.moderate(_probe(traffic, categories, config))
        experts = [e.expert for e in first.experts] + [m.expert for m in first.missing_experts]
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress("replaying over HTTP", done, len(traffic.rows))

        started = time.perf_counter()
        log, arrival, sent, snapshots = drive(
            backend,
            traffic.rows,
            experts=experts,
            categories=categories,
            tenant=config.tenant,
            feedback_delay=config.feedback_delay,
            feedback_share=config.feedback_share,
            seed=config.seed,
            run_id=f"replay-{uuid.uuid4().hex[:12]}",  # unique: a service dedupes feedback by event id
            progress=tick,
        )
    finally:
        if own_client:
            backend.close()
    run = learner_run(SERVICE_LEARNER, log, snapshots, time.perf_counter() - started, bandit=False)
    thresholds = np.where(np.isfinite(log.thresholds), log.thresholds, 0.5)
    stream = replay_stream(
        traffic.rows, traffic.segments, experts, categories, log.outputs, arrival, sent, thresholds, config.tenant
    )
    context = {**_context(config, traffic, "http", url), "service_learner": backend.learner_name}
    return _finish(config, traffic, stream, {SERVICE_LEARNER: run}, {SERVICE_LEARNER: log}, context)


def _probe(traffic: ReplayTraffic, categories: Sequence[str], config: ReplayConfig) -> ModerationRequest:
    """A first request (never given feedback) that tells which experts the service runs."""
    return ModerationRequest(
        messages=[Message(role="user", content="hello")],
        tenant=config.tenant,
        categories=list(categories),
        request_id=f"replay-probe-{uuid.uuid4().hex[:12]}",
    )


def write_replay_outputs(result: ReplayResult, out: Path, with_plots: bool = True, title: str = "replay") -> list[Path]:
    """Write ``report.json``, ``summary.md`` and (unless disabled) the plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = (
        plots.write_run_plots(
            result.stream, result.runs, result.report, result.oracles.per_stream_best_expert, out, title=title
        )
        if with_plots
        else []
    )
    if with_plots and result.tenant_curves is not None:
        pngs += plots.write_tenant_plots(result.tenant_curves, out)
    result.report["plots"] = [p.name for p in pngs]
    summary = out / "summary.md"
    summary.write_text(markdown_summary(result.report, [p.name for p in pngs]))
    result.files = [write_report(result.report, out), summary, *pngs]
    return result.files
