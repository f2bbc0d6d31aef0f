"""Replay labelled traffic through the real decision path and measure it: in process, or against a running service.

Each row becomes a ``ModerationRequest``; the decision comes from ``Engine.moderate`` (in process, with experts that
answer from the ``ReplayCache``) or from ``POST /v1/moderate`` (``aegis_online.client``). The row's labels go back as a
``FeedbackEvent`` after ``feedback_delay`` further requests, the way moderators' verdicts arrive. What each decision
said (scores, flags, weights, which experts answered) is recorded into a ``LearnerRun``, and the rows' labels and
the experts' outputs into a ``Stream``, so the report is computed exactly as for a simulation.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from aegis_online.api_models import FeedbackOutcome
from aegis_online.datasets import LabelledText
from aegis_online.engine import BanditConfig, CascadeConfig, Engine
from aegis_online.errors import AegisError
from aegis_online.learn import Learner
from aegis_online.policy import TenantPolicy
from aegis_online.schemas import Decision, FeedbackEvent, FeedbackResult, Message, ModerationRequest
from aegis_online.simulate.expert_outputs import CachedExpert, request_text
from aegis_online.simulate.runner import CascadeSetup, LearnerRun
from aegis_online.simulate.stream import NO_FEEDBACK, Segment, Stream

#: Weight snapshots kept per run (for the weights-over-time plot).
WEIGHT_SAMPLES = 200


class ModerationBackend(Protocol):
    """Where decisions come from: the in-process engine or a service over HTTP."""

    def moderate(self, request: ModerationRequest) -> Decision: ...

    def feedback(self, event: FeedbackEvent) -> FeedbackResult | FeedbackOutcome:
        """The engine's result (applied now, or a duplicate), or a service's receipt (queued, or a duplicate)."""
        ...

    def weights(self, tenant: str, categories: Sequence[str]) -> dict[str, dict[str, float]] | None: ...


class EngineBackend:
    """The in-process engine behind the backend interface; one event loop for the whole replay."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._loop = asyncio.new_event_loop()

    def moderate(self, request: ModerationRequest) -> Decision:
        return self._loop.run_until_complete(self.engine.moderate(request))

    def feedback(self, event: FeedbackEvent) -> FeedbackResult:
        return self.engine.feedback(event)

    def weights(self, tenant: str, categories: Sequence[str]) -> dict[str, dict[str, float]]:
        return self.engine.weights(tenant, categories)

    def close(self) -> None:
        self._loop.close()


class FeedbackRejectedError(Exception):
    """A service refused a feedback event (unknown or expired request, wrong tenant, invalid labels)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def feedback_event(row: LabelledText, categories: Sequence[str], request_id: str, tenant: str) -> FeedbackEvent | None:
    """The moderator's verdict on a row: per-category labels where the data has them, else safe/unsafe, else none."""
    labels = {c: float(v) for c in categories if (v := row.label(c)) is not None}
    # The dataset's labels are the operator's own: they train the global weights too (over HTTP the service
    # decides that from the key the replay uses).
    if labels:
        return FeedbackEvent(
            request_id=request_id, tenant=tenant, labels=labels, event_id=f"{request_id}:fb", trusted=True
        )
    if row.unsafe is not None:
        verdict = "unsafe" if row.unsafe else "safe"
        return FeedbackEvent(
            request_id=request_id, tenant=tenant, label=verdict, event_id=f"{request_id}:fb", trusted=True
        )
    return None


@dataclass
class ReplayLog:
    """What the backend decided for each request, as arrays over (request, category, expert)."""

    experts: tuple[str, ...]
    categories: tuple[str, ...]
    steps: int
    scores: np.ndarray = field(init=False)
    flagged: np.ndarray = field(init=False)
    weights: np.ndarray = field(init=False)
    outputs: np.ndarray = field(init=False)
    queried: np.ndarray = field(init=False)
    thresholds: np.ndarray = field(init=False)
    #: the whole-request decision: its score (NaN: none), and whether the request was flagged in the end
    overall_scores: np.ndarray = field(init=False)
    request_flagged: np.ndarray = field(init=False)
    #: whether the whole-request threshold applied was learned (vs the policy's fixed one or a floor)
    overall_learned: np.ndarray = field(init=False)
    #: cascade mode: whether the expensive tier was called for the request
    escalated: np.ndarray = field(init=False)
    feedback_sent: int = 0
    #: applied by the learner before the answer (in process)
    feedback_applied: int = 0
    #: accepted by a service's feedback bus, to be applied later: not known to be applied
    feedback_queued: int = 0
    feedback_duplicate: int = 0
    feedback_rejected: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t, c, n = self.steps, len(self.categories), len(self.experts)
        self.scores = np.full((t, c), np.nan)
        self.flagged = np.zeros((t, c), dtype=bool)
        self.weights = np.zeros((t, c, n))
        self.outputs = np.full((t, c, n), np.nan)
        self.queried = np.zeros((t, n), dtype=bool)
        self.thresholds = np.full(c, np.nan)
        self.overall_scores = np.full(t, np.nan)
        self.request_flagged = np.zeros(t, dtype=bool)
        self.overall_learned = np.zeros(t, dtype=bool)
        self.escalated = np.zeros(t, dtype=bool)

    def count_feedback(self, result: FeedbackResult | FeedbackOutcome) -> None:
        """Count what the backend said about an event, as it said it: applied, queued or duplicate."""
        applied = "applied" if isinstance(result, FeedbackResult) and result.applied else "duplicate"
        status = applied if isinstance(result, FeedbackResult) else result.status
        if status == "applied":
            self.feedback_applied += 1
        elif status == "queued":
            self.feedback_queued += 1
        elif status == "duplicate":
            self.feedback_duplicate += 1
        else:
            error = result.error if isinstance(result, FeedbackOutcome) else None
            reason = (error.code or error.type) if error is not None else "rejected"
            self.feedback_rejected[reason] = self.feedback_rejected.get(reason, 0) + 1

    def record(self, t: int, decision: Decision) -> None:
        cat = {c: k for k, c in enumerate(self.categories)}
        exp = {e: i for i, e in enumerate(self.experts)}
        self.request_flagged[t] = decision.flagged
        self.escalated[t] = decision.cascade is not None and decision.cascade.tier == "expensive"
        if decision.overall is not None:
            self.overall_scores[t] = np.nan if decision.overall.score is None else decision.overall.score
            self.overall_learned[t] = decision.overall.threshold_source == "learned"
        for d in decision.categories:
            k = cat.get(d.category)
            if k is None:
                continue
            self.scores[t, k] = np.nan if d.score is None else d.score
            self.flagged[t, k] = d.flagged
            self.thresholds[k] = d.threshold
        for contribution in decision.experts:
            i = exp.get(contribution.expert)
            if i is None:
                continue
            self.queried[t, i] = True
            for c, w in contribution.weights.items():
                if c in cat:
                    self.weights[t, cat[c], i] = w
            for c, s in contribution.scores.items():
                if c in cat:
                    self.outputs[t, cat[c], i] = s
        for missing in decision.missing_experts:
            i = exp.get(missing.expert)
            if i is not None and missing.kind in ("timeout", "error"):
                self.queried[t, i] = True  # it was called and failed: the call was spent


def drive(
    backend: ModerationBackend,
    rows: Sequence[LabelledText],
    *,
    experts: Sequence[str],
    categories: Sequence[str],
    tenant: str = "default",
    feedback_delay: int = 0,
    feedback_share: float = 1.0,
    seed: int = 0,
    run_id: str = "replay",
    progress: Callable[[int], None] | None = None,
    tenants: Sequence[str] | None = None,
    before_row: Callable[[int], None] | None = None,
) -> tuple[ReplayLog, np.ndarray, np.ndarray, list[tuple[int, np.ndarray]]]:
    """Send every row to ``backend`` in order, with its feedback ``feedback_delay`` requests later.

    ``tenants`` (one per row) sends each row as its own tenant, with its feedback from that tenant; otherwise every
    row is ``tenant``'s (whose weights are the ones sampled for the plots either way). ``before_row(t)`` runs before
    request ``t`` is sent (after the feedback due by then): where a replay changes a tenant's policy mid-stream.

    Returns the log, each request's feedback arrival (``NO_FEEDBACK`` when none was sent), the labels sent per
    category (NaN: none) and weight snapshots ``(request, (C, N))``.
    """
    if tenants is not None and len(tenants) != len(rows):
        raise ValueError(f"tenants: one per row, got {len(tenants)} for {len(rows)} rows")
    if feedback_delay < 0:
        raise ValueError(f"feedback_delay must be >= 0, got {feedback_delay}")
    log = ReplayLog(tuple(experts), tuple(categories), len(rows))
    arrival = np.full(len(rows), NO_FEEDBACK, dtype=np.int64)
    sent = np.full((len(rows), len(categories)), np.nan)
    rng = np.random.default_rng([seed, 4])
    pending: list[tuple[int, int, FeedbackEvent]] = []
    sample_at = set(np.linspace(0, max(len(rows) - 1, 0), min(WEIGHT_SAMPLES, len(rows))).round().astype(int).tolist())
    snapshots: list[tuple[int, np.ndarray]] = []

    def deliver(event: FeedbackEvent) -> None:
        try:
            log.count_feedback(backend.feedback(event))
        except AegisError as error:  # in process: same reasons the service answers with a 4xx
            log.feedback_rejected[error.reason] = log.feedback_rejected.get(error.reason, 0) + 1
        except FeedbackRejectedError as error:
            log.feedback_rejected[error.reason] = log.feedback_rejected.get(error.reason, 0) + 1

    for t, row in enumerate(rows):
        while pending and pending[0][0] <= t:
            deliver(heapq.heappop(pending)[2])
        if before_row is not None:
            before_row(t)
        sender = tenant if tenants is None else tenants[t]
        if t in sample_at:
            snapshot = backend.weights(tenant, categories)
            if snapshot is not None:
                snapshots.append((t, np.array([[snapshot[c][e] for e in experts] for c in categories])))
        request_id = f"{run_id}-{t}"
        request = ModerationRequest(
            messages=[Message(role="user", content=request_text(row.text))],
            tenant=sender,
            categories=list(categories),
            request_id=request_id,
        )
        log.record(t, backend.moderate(request))
        event = feedback_event(row, categories, request_id, sender)
        if event is not None and rng.random() < feedback_share:
            arrival[t] = t + 1 + feedback_delay
            heapq.heappush(pending, (int(arrival[t]), t, event))
            log.feedback_sent += 1
            if event.labels:
                for k, c in enumerate(categories):
                    sent[t, k] = event.labels.get(c, np.nan)
        if progress is not None:
            progress(1)
    while pending:
        deliver(heapq.heappop(pending)[2])
    return log, arrival, sent, snapshots


def learner_run(
    name: str,
    log: ReplayLog,
    snapshots: list[tuple[int, np.ndarray]],
    seconds: float,
    bandit: bool,
    learner: Learner | None = None,
) -> LearnerRun:
    """A replay's decisions in the shape the report reads (one replica)."""
    C, N = len(log.categories), len(log.experts)
    if snapshots:
        times = np.array([t for t, _ in snapshots])
        samples = np.stack([w for _, w in snapshots])
    else:  # a service does not expose its weights: show those it used, among the experts that answered
        times = np.unique(np.linspace(0, log.steps - 1, min(WEIGHT_SAMPLES, log.steps)).round().astype(int))
        samples = log.weights[times]
    final = {"global": samples[-1]} if len(samples) else {"global": np.zeros((C, N))}
    return LearnerRun(
        name=name,
        learner=learner,
        weights=log.weights[None],
        predictions=log.scores[None],
        queried=log.queried[None],
        propensities=None,
        weight_times=times,
        weight_samples=samples,
        final_weights=final,
        seconds=seconds,
        flagged=log.flagged[None],
        bandit=bandit,
    )


def replay_stream(
    rows: Sequence[LabelledText],
    segments: Sequence[Segment],
    experts: Sequence[str],
    categories: Sequence[str],
    outputs: np.ndarray,
    arrival: np.ndarray,
    sent: np.ndarray,
    thresholds: np.ndarray,
    tenant: str = "default",
    personalise_after: int = 50,
) -> Stream:
    """The rows' truth and the experts' outputs as a one-replica ``Stream``."""
    truth = np.array([[np.nan if (v := row.label(c)) is None else float(v) for c in categories] for row in rows])
    truth = truth.reshape(len(rows), len(categories))
    unsafe = np.array([np.nan if row.unsafe is None else float(row.unsafe) for row in rows])
    return Stream(
        experts=tuple(experts),
        categories=tuple(categories),
        tenants=(tenant,),
        outputs=outputs[None],
        truth=truth[None],
        unsafe=unsafe[None],
        feedback=sent[None],
        arrival=arrival[None],
        tenant=np.zeros((1, len(rows)), dtype=np.int64),
        thresholds=thresholds[None, :],
        personalise_after=np.array([personalise_after]),
        drifts=tuple(s.start for s in segments[1:]),
        segments=tuple(segments),
    )


def replay_in_process(
    rows: Sequence[LabelledText],
    cached: Sequence[CachedExpert],
    categories: Sequence[str],
    learner: str,
    *,
    tenant: str = "default",
    feedback_delay: int = 0,
    feedback_share: float = 1.0,
    bandit: BanditConfig | None = None,
    cascade: CascadeConfig | None = None,
    name: str | None = None,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> tuple[LearnerRun, ReplayLog, np.ndarray, np.ndarray, TenantPolicy]:
    """Replay rows through a fresh in-process ``Engine`` with ``learner`` over experts that answer from the cache
    (with ``cascade``: the engine in cascade mode; the run is called ``name``, default the learner's)."""
    for expert in cached:
        expert.calls = 0
    engine = Engine(list(cached), learner=learner, bandit=bandit, cascade=cascade, seed=seed)
    backend = EngineBackend(engine)
    started = time.perf_counter()
    try:
        log, arrival, sent, snapshots = drive(
            backend,
            rows,
            experts=engine.expert_names,
            categories=categories,
            tenant=tenant,
            feedback_delay=feedback_delay,
            feedback_share=feedback_share,
            seed=seed,
            run_id=f"{learner.replace('+', '.')}-{seed}",  # request ids allow no "+"
            progress=progress,
        )
    finally:
        backend.close()
    run = learner_run(
        name or learner, log, snapshots, time.perf_counter() - started, bandit is not None, engine.learner
    )
    if cascade is not None:
        expensive = tuple(i for i, e in enumerate(engine.expert_names) if e in cascade.expensive)
        run.cascade = CascadeSetup(expensive, cascade.rule, full_information=learner)
        run.escalated = log.escalated[None]
    return run, log, arrival, sent, engine.policy(tenant)


def summary_of_feedback(log: ReplayLog) -> dict[str, Any]:
    """``applied``: events the learner applied before answering (in process); ``queued``: events a service's
    feedback bus accepted, which its learner applies later (over HTTP: the service does not say when); ``duplicate``:
    events applied or queued before; ``rejected``: refused events by reason."""
    return {
        "sent": log.feedback_sent,
        "applied": log.feedback_applied,
        "queued": log.feedback_queued,
        "duplicate": log.feedback_duplicate,
        "rejected": dict(log.feedback_rejected),
    }
