"""Prometheus metrics of the service, in a registry of its own (one per app, so tests can build many).

Counters and histograms are updated on the request path; the figures that live elsewhere (the embedded feedback
worker's statistics, the weights' entropy, store health) are read when ``/metrics`` is scraped, so they cost nothing
per request. The worker's statistics go through ``feedback.stats_collector``, the collector the Kafka worker's own
``/metrics`` uses: the same names in both modes. Labels are bounded sets (routes, experts, categories, actions,
outcomes, reasons): never a tenant id or a request id. The reference of every metric: docs/metrics.md.

With several ingress replicas each scrape of ``/metrics`` through the proxy reaches one replica; scrape replicas
directly, or keep ``ingress.replicas: 1`` (the memory store requires it anyway).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from aegis_online.feedback.stats_collector import FeedbackStatsCollector
from aegis_online.schemas import Decision
from aegis_online.serve.health import EXPERT_FAILURES

logger = logging.getLogger(__name__)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _ScrapeTime(Collector):
    """Figures computed when scraped."""

    def __init__(
        self,
        weights: Callable[[], dict[str, dict[str, float]]],
        store_degraded: Callable[[], bool],
        predictions_dropped: Callable[[], int],
    ) -> None:
        self.weights = weights
        self.store_degraded = store_degraded
        self.predictions_dropped = predictions_dropped

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        entropy = GaugeMetricFamily(
            "aegis_weight_entropy_nats",
            "Entropy of the global expert weights per category (log(experts) = uniform, 0 = one expert decides).",
            labels=["category"],
        )
        for category, weights in self.weights().items():
            entropy.add_metric([category], -sum(w * math.log(w) for w in weights.values() if w > 0))
        yield entropy
        yield GaugeMetricFamily(
            "aegis_store_degraded",
            "1 while the store is unreachable and answers come from cache.",
            value=float(self.store_degraded()),
        )
        yield CounterMetricFamily(
            "aegis_predictions_dropped",
            "Prediction records the store could not take (feedback cannot join them).",
            value=self.predictions_dropped(),
        )


class _AdmissionState(Collector):
    """The admission controller's gauges, read when scraped."""

    def __init__(self, state: Callable[[], tuple[float, int, int]]) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        limit, in_flight, queued = self.state()
        yield GaugeMetricFamily("aegis_admission_limit", "Moderation inputs allowed in progress at once.", value=limit)
        yield GaugeMetricFamily("aegis_admission_in_flight", "Moderation inputs in progress.", value=in_flight)
        yield GaugeMetricFamily("aegis_admission_queued", "Moderation inputs waiting to start.", value=queued)


#: A replica's batching report: (deployment, replica id, ``ExpertDeployment.batching()``'s figures).
ReplicaReport = tuple[str, str, Mapping[str, Any]]
#: How long a replica's last report is exported without news of it (a scrape reaches one replica per deployment;
#: one that has stopped answering is gone after this).
REPLICA_REPORT_TTL_S = 600.0
#: How long a scrape waits for the replicas' reports before it answers with what it has.
REPLICA_POLL_TIMEOUT_S = 2.0
#: Scrapes closer together than this share one poll (``/metrics`` needs no key by default: a client that floods it
#: must not flood the replicas too).
REPLICA_POLL_INTERVAL_S = 1.0


class _ReplicaBatching(Collector):
    """The expert replicas' batching, as each replica last reported it.

    Each poll reaches one replica per deployment (Ray's router picks it), so the others' series keep their last
    report: per replica, the counters only grow, which is what ``rate()`` needs.
    """

    def __init__(self) -> None:
        self.reports: dict[tuple[str, str], tuple[float, Mapping[str, Any]]] = {}

    def update(self, reports: Iterable[ReplicaReport], now: float) -> None:
        for deployment, replica, report in reports:
            self.reports[(deployment, replica)] = (now, report)
        for key, (seen, _) in list(self.reports.items()):
            if now - seen > REPLICA_REPORT_TTL_S:
                del self.reports[key]

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        labels = ["deployment", "replica"]
        batches = CounterMetricFamily("aegis_replica_batches", "Batches an expert replica has scored.", labels=labels)
        calls = CounterMetricFamily(
            "aegis_replica_batched_calls",
            "Expert calls in those batches (calls / batches: the mean batch).",
            labels=labels,
        )
        fixed = GaugeMetricFamily(
            "aegis_replica_batch_fixed_seconds",
            "The fitted cost of a batch that does not grow with its size (absent until known).",
            labels=labels,
        )
        per_call = GaugeMetricFamily(
            "aegis_replica_batch_per_call_seconds", "The fitted cost of each call in a batch.", labels=labels
        )
        batching = GaugeMetricFamily(
            "aegis_replica_batching",
            "1 while the replica batches (the fit says a batch saves model time, or is not known yet), 0 while it "
            "scores one call at a time.",
            labels=labels,
        )
        if not self.reports:  # the experts run in process (or no replica has answered yet)
            return
        for (deployment, replica), (_, report) in sorted(self.reports.items()):
            key = [deployment, replica]
            batches.add_metric(key, report["batches"])
            calls.add_metric(key, report["items"])
            if report.get("fixed_ms") is not None:
                fixed.add_metric(key, report["fixed_ms"] / 1000.0)
                per_call.add_metric(key, report["per_call_ms"] / 1000.0)
            batching.add_metric(key, float(bool(report["batch_pays"])))
        yield from (batches, calls, fixed, per_call, batching)


class ServiceMetrics:
    """The service's metrics and the few calls that update them.

    ``feedback_stats``: the embedded feedback worker's ``WorkerStats.as_dict`` (None when feedback goes to Kafka:
    the workers export them).
    """

    def __init__(
        self,
        *,
        feedback_stats: Callable[[], Mapping[str, Any]] | None = None,
        weights: Callable[[], dict[str, dict[str, float]]] = dict,
        store_degraded: Callable[[], bool] = lambda: False,
        predictions_dropped: Callable[[], int] = lambda: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        disable_created_metrics()  # the *_created series double the output and no dashboard reads them
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "aegis_requests", "HTTP requests by route, method and status.", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "aegis_request_latency_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.expert_latency = Histogram(
            "aegis_expert_latency_seconds",
            "Latency of each expert that answered, as the ingress saw it.",
            ["expert"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.expert_failures = Counter(
            "aegis_expert_failures",
            "Expert calls that failed or missed the deadline.",
            ["expert", "reason"],
            registry=r,
        )
        self.decisions = Counter(
            "aegis_decisions", "Moderation decisions by overall action.", ["action", "degraded"], registry=r
        )
        self.degraded_decisions = Counter(
            "aegis_degraded_decisions",
            "Decisions in which a category went unscored, by why (timeout, error, not_queried, language); a decision "
            "counts once per kind it shows.",
            ["kind"],
            registry=r,
        )
        self.category_decisions = Counter(
            "aegis_category_decisions",
            "Per-category decisions by category and action.",
            ["category", "action"],
            registry=r,
        )
        self.feedback_events = Counter(
            "aegis_feedback_events", "Feedback events received by the API, by outcome.", ["outcome"], registry=r
        )
        self.admission = Counter(
            "aegis_admission",
            "Moderation requests by admission outcome: admitted (at once), admitted_after_wait (queued), refused "
            "(503 at once: it could not start in time), refused_after_wait (503: it did not start in time).",
            ["outcome"],
            registry=r,
        )
        self.admission_wait = Histogram(
            "aegis_admission_wait_seconds",
            "Time from arrival to start of the moderation requests that waited in the admission queue.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_ScrapeTime(weights, store_degraded, predictions_dropped))
        if feedback_stats is not None:
            r.register(FeedbackStatsCollector(feedback_stats))
        self._category_children: dict[tuple[str, str], Counter] = {}
        self._admission_state: _AdmissionState | None = None
        self._replica_poll: Callable[[], Awaitable[list[ReplicaReport]]] | None = None
        self._replica_batching = _ReplicaBatching()
        self._clock = clock
        self._polled_at = -math.inf
        r.register(self._replica_batching)

    def observe_decision(self, decision: Decision) -> None:
        self.decisions.labels(decision.action, str(decision.degraded).lower()).inc()
        children = self._category_children
        for d in decision.categories:
            key = (d.category, d.action)
            child = children.get(key)
            if child is None:
                child = children[key] = self.category_decisions.labels(*key)
            child.inc()
        for contribution in decision.experts:
            self.expert_latency.labels(contribution.expert).observe(contribution.latency_ms / 1000.0)
        for missing in decision.missing_experts:
            if missing.kind in EXPERT_FAILURES:
                self.expert_failures.labels(missing.expert, missing.kind).inc()
        if decision.degraded:
            for kind in {k for u in decision.unscored for k in u.kinds} or {"no_expert"}:
                self.degraded_decisions.labels(kind).inc()

    def observe_admission(self, outcome: str, waited_s: float | None = None) -> None:
        self.admission.labels(outcome).inc()
        if waited_s is not None:
            self.admission_wait.observe(waited_s)

    def watch_admission(self, state: Callable[[], tuple[float, int, int]]) -> None:
        """Report the admission controller's (limit, inputs in progress, inputs waiting) when scraped (the latest
        controller's, if an app is built twice over one service)."""
        if self._admission_state is not None:
            self.registry.unregister(self._admission_state)
        self._admission_state = _AdmissionState(state)
        self.registry.register(self._admission_state)

    def observe_feedback(self, queued: int, rejected: int) -> None:
        if queued:
            self.feedback_events.labels("queued").inc(queued)
        if rejected:
            self.feedback_events.labels("rejected").inc(rejected)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def watch_replicas(self, poll: Callable[[], Awaitable[list[ReplicaReport]]]) -> None:
        """Ask ``poll`` for the expert replicas' batching reports at each scrape (``refresh``)."""
        self._replica_poll = poll

    async def refresh(self) -> None:
        """Fetch what lives in other processes (the replicas' reports) before a scrape. A poll that fails or takes
        much longer than ``REPLICA_POLL_TIMEOUT_S`` (its own limit per replica) leaves the last reports as they were:
        a scrape always answers."""
        now = self._clock()
        if self._replica_poll is None or now - self._polled_at < REPLICA_POLL_INTERVAL_S:
            return
        self._polled_at = now  # before the poll: scrapes while it runs answer with the last reports
        try:
            reports = await asyncio.wait_for(self._replica_poll(), REPLICA_POLL_TIMEOUT_S + 1.0)
        except Exception:  # the scrape goes on with the last reports
            logger.warning("the expert replicas' batching reports could not be fetched", exc_info=True)
            reports = []
        self._replica_batching.update(reports, now)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
