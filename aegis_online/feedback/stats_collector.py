"""The feedback worker's counters as Prometheus metrics: one collector and one naming for every deployment mode.

Feedback is applied by the same ``FeedbackWorker`` loop whether it drains the embedded service's in-process queue or
a Kafka topic (``aegis-online feedback-worker``), and both keep the same ``WorkerStats``. Both ``/metrics`` (the
service's in embedded mode, the worker's health server in Kafka mode) render those statistics through this one
collector, so a dashboard or an alert reads the same names and labels whichever mode runs. prometheus_client writes
the exposition: label values (a dead letter's reason) are escaped by the library, never by hand.

The collector reads a *mapping* (``WorkerStats.as_dict()`` or the health server's snapshot of it), not the worker
itself, so this module imports neither the worker nor the engine: a scrape never waits for the loop, and the
serving layer and the worker's health server can both import it cheaply. The metric reference is
docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aegis_online.errors import InvalidFeedbackError, TenantMismatchError, UnknownRequestError
from aegis_online.feedback.records import MALFORMED, OVERSIZED, PROCESSING_ERROR

PREFIX = "aegis_feedback_"
#: ``aegis_feedback_applied_total{outcome}``: what became of each event taken from the queue or topic, with the
#: ``WorkerStats`` field that counts it.
OUTCOMES: dict[str, str] = {"applied": "applied", "duplicate": "duplicates", "dead_letter": "dead_letters"}
#: The ``WorkerStats`` field counting dead letters per reason (a mapping reason -> count).
REASONS_FIELD = "dead_letter_reasons"
#: Reasons exported at 0 before their first dead letter, so that ``rate()`` and alerts see the series from the start.
KNOWN_REASONS: tuple[str, ...] = (
    MALFORMED,
    OVERSIZED,
    TenantMismatchError.reason,
    UnknownRequestError.reason,
    InvalidFeedbackError.reason,
    PROCESSING_ERROR,
)
#: Unlabelled ``WorkerStats`` counters, exported as ``aegis_feedback_<name>_total``, with their help text.
COUNTERS: dict[str, str] = {
    "records": "Records taken care of (applied, duplicate or dead-lettered) whose offsets were committed.",
    "batches": "Batches processed and committed.",
    "store_retries": "Rounds retried with backoff because the store or the bus was unavailable.",
    "commits_refused": "Offset commits refused by the consumer group (rebalances; harmless).",
    "write_conflicts": "Concurrent writes to a learner key that were re-done.",
}

StatsSource = Callable[[], Mapping[str, Any]]


def stats_families(stats: Mapping[str, Any]) -> Iterator[Metric]:
    """The metric families of one statistics snapshot (``WorkerStats.as_dict()``; missing fields count as 0)."""
    applied = CounterMetricFamily(
        PREFIX + "applied",
        "Feedback events taken from the queue or topic, by outcome: applied to the learner store, duplicate "
        "(a redelivery, applied already), dead_letter (refused; by reason in aegis_feedback_dead_letters_total).",
        labels=["outcome"],
    )
    for outcome, name in OUTCOMES.items():
        applied.add_metric([outcome], float(stats.get(name, 0)))
    yield applied
    dead = CounterMetricFamily(PREFIX + "dead_letters", "Refused feedback events, by reason.", labels=["reason"])
    counts = dict.fromkeys(KNOWN_REASONS, 0) | dict(stats.get(REASONS_FIELD) or {})
    for reason, count in sorted(counts.items()):
        dead.add_metric([str(reason)], float(count))
    yield dead
    for name, help_text in COUNTERS.items():
        yield CounterMetricFamily(PREFIX + name, help_text, value=float(stats.get(name, 0)))
    yield GaugeMetricFamily(
        PREFIX + "last_commit_timestamp_seconds",
        "Unix time of the worker's last commit (0: none yet).",
        value=float(stats.get("last_commit_at", 0.0)),
    )


class FeedbackStatsCollector(Collector):
    """Collects ``stats()`` (a ``WorkerStats.as_dict()``-shaped mapping) when scraped; nothing per event."""

    def __init__(self, stats: StatsSource) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        return stats_families(self.stats())
