"""What the HTTP app serves, built from a config and a list of experts: engine, stores, feedback bus, auth, health.

``build_service`` is the one place that turns configuration into objects. The experts are given, not built here:
the Ray ingress passes stand-ins for its expert deployments (``deployments.RemoteExpert``), tests and the benchmark
pass experts that run in this process. Either way the engine is the same, so a decision means the same thing.

Embedded defaults need no server: the SQLite stores in ``store.data_dir`` (``store.persist: false``: memory only)
and the in-process feedback queue, journalled in the same database, drained by a worker thread in this process.
``store.kind: redis`` and ``bus.kind: kafka`` switch to the production backends; with Kafka the feedback workers
run apart (``aegis-online feedback-worker``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aegis_online.config import ServiceConfig
from aegis_online.engine import GLOBAL_SCOPE, BanditConfig, CascadeConfig, Engine
from aegis_online.experts import Expert
from aegis_online.feedback.bus import FeedbackPublisher
from aegis_online.feedback.inprocess import EmbeddedFeedbackWorker, InProcessFeedbackQueue
from aegis_online.learn.escalation import EscalationRule
from aegis_online.policy import TenantPolicy
from aegis_online.serve.auth import KeyTable
from aegis_online.serve.feedback import GlobalLearningGate
from aegis_online.serve.health import ExpertHealth, ServiceHealth
from aegis_online.serve.metrics import ServiceMetrics
from aegis_online.serve.quotas import TenantQuotas
from aegis_online.serve.resilience import (
    CachedLearnerStore,
    DependencyHealth,
    ResilientPredictionLog,
)
from aegis_online.state import (
    CachedPolicyStore,
    FeedbackLedger,
    LearnerStore,
    MemoryFeedbackLedger,
    MemoryLearnerStore,
    MemoryPolicyStore,
    MemoryPredictionLog,
    PolicyStore,
    PredictionLog,
    QueueJournal,
    StoreUnavailableError,
)
from aegis_online.state.quotas import (
    ContributionCounter,
    MemoryContributionCounter,
    MemoryRateLimiter,
    RateLimiter,
)

log = logging.getLogger("aegis_online.serve")


class SeededPolicyStore(PolicyStore):
    """Stored policies first, then the config's: a policy set through the API overrides the file's, and the file's
    apply without ever being written (so a store that is down at start-up loses nothing)."""

    def __init__(self, stored: PolicyStore, seeds: Sequence[TenantPolicy]) -> None:
        self.stored = stored
        self.seeds = {p.tenant: p for p in seeds}

    def get(self, tenant: str) -> TenantPolicy | None:
        return self.stored.get(tenant) or self.seeds.get(tenant)

    def put(self, policy: TenantPolicy) -> None:
        self.stored.put(policy)


@dataclass
class Stores:
    learner: LearnerStore
    predictions: PredictionLog
    policies: PolicyStore
    ledger: FeedbackLedger
    health: DependencyHealth | None
    dropped: Callable[[], int]
    description: str
    #: what the tenants' rate limits and global-learning shares are counted in (in process without Redis)
    limiter: RateLimiter = field(default_factory=MemoryRateLimiter)
    contributions: ContributionCounter = field(default_factory=MemoryContributionCounter)
    #: the in-process queue's journal (embedded and persistent), and what releases the stores at stop
    journal: QueueJournal | None = None
    close: Callable[[], None] = lambda: None


def build_stores(config: ServiceConfig) -> Stores:
    """The stores of the config, wrapped for the request path when they live in a server."""
    store = config.store
    if store.kind == "memory" and store.persist:
        from aegis_online.state.sqlite import open_sqlite_stores

        embedded = open_sqlite_stores(
            store.data_dir, prediction_ttl_s=store.prediction_ttl_s, max_predictions=store.max_predictions
        )
        return Stores(
            learner=embedded.learner,
            predictions=embedded.predictions,
            policies=SeededPolicyStore(embedded.policies, config.policies),
            ledger=embedded.ledger,
            health=None,
            dropped=lambda: 0,
            description=f"sqlite ({embedded.data_dir})",
            journal=embedded.journal,
            close=embedded.close,
        )
    if store.kind == "memory":
        return Stores(
            learner=MemoryLearnerStore(),
            predictions=MemoryPredictionLog(ttl_s=store.prediction_ttl_s, max_records=store.max_predictions),
            policies=MemoryPolicyStore(config.policies),
            ledger=MemoryFeedbackLedger(ttl_s=store.prediction_ttl_s),
            health=None,
            dropped=lambda: 0,
            description="memory (nothing survives a restart)",
        )
    from aegis_online.state.redis_quotas import RedisContributionCounter, RedisRateLimiter
    from aegis_online.state.redis_store import (
        RedisFeedbackLedger,
        RedisLearnerStore,
        RedisPolicyStore,
        RedisPredictionLog,
        connect,
    )

    client = connect(store.redis_url or "", cluster=store.cluster, timeout_s=store.timeout_ms / 1000.0)
    health = DependencyHealth("store", retry_after_s=store.retry_after_s)
    predictions = ResilientPredictionLog(RedisPredictionLog(client, store.prefix, ttl_s=store.prediction_ttl_s), health)
    policies = CachedPolicyStore(RedisPolicyStore(client, store.prefix), store.policy_cache_s, health=health)
    return Stores(
        learner=CachedLearnerStore(RedisLearnerStore(client, store.prefix), health, store.weights_max_staleness_s),
        predictions=predictions,
        policies=SeededPolicyStore(policies, config.policies),
        ledger=RedisFeedbackLedger(client, store.prefix, ttl_s=store.prediction_ttl_s),
        health=health,
        dropped=lambda: predictions.dropped,
        description="redis",
        limiter=RedisRateLimiter(client, store.prefix),
        contributions=RedisContributionCounter(client, store.prefix),
    )


@dataclass
class ModerationService:
    """Everything the HTTP app needs; ``start``/``stop`` run with the app's lifespan."""

    config: ServiceConfig
    engine: Engine
    keys: KeyTable
    publisher: FeedbackPublisher
    worker: EmbeddedFeedbackWorker | None
    health: ServiceHealth
    metrics: ServiceMetrics
    bus_health: DependencyHealth
    store_description: str
    ledger: FeedbackLedger
    quotas: TenantQuotas
    gate: GlobalLearningGate
    close_stores: Callable[[], None] = lambda: None
    _stopped: bool = field(default=False, repr=False)

    def start(self) -> None:
        if self.worker is not None:
            self.worker.start()
        self.health.started = True
        log.info(
            "aegis-online service ready: experts %s, learner %s, store %s, bus %s, %s",
            ", ".join(self.engine.expert_names),
            self.engine.learner.name,
            self.store_description,
            self.config.bus.kind,
            "OPEN development mode" if self.keys.open_mode else f"{len(self.keys)} API keys",
        )

    def stop(self) -> None:
        """Apply what the in-process queue still holds (what it cannot stays journalled), then release the bus and the
        stores."""
        if self._stopped:
            return
        self._stopped = True
        self.health.started = False
        if self.worker is not None:
            if not self.worker.drain(timeout_s=10.0):
                log.warning("stopping with %d feedback events not applied", self.worker.queue.pending())
            self.worker.stop()
        for close in (self.publisher.close, self.engine.store.close, self.close_stores):
            try:
                close()
            except Exception:  # closing must go on whatever one backend does
                log.exception("while stopping")


def build_service(config: ServiceConfig, experts: Sequence[Expert], keys: KeyTable) -> ModerationService:
    """The service of ``config`` over ``experts`` (in the config's order: it names the learner's keys)."""
    stores = build_stores(config)
    bandit = None
    if config.learner.bandit is not None:
        bandit = BanditConfig(k=config.learner.bandit.k, always=tuple(config.learner.bandit.always))
    expensive = config.cascade_expensive([e.name for e in experts])
    cascade = None
    if expensive is not None and config.cascade is not None:
        rule = EscalationRule(
            target_rate=config.cascade.target_escalation_rate,
            step=config.cascade.step,
            initial=config.cascade.initial_cut,
            experts_per_escalation=config.cascade.experts_per_escalation,
            exploration=config.cascade.exploration,
            hedge_share=config.cascade.hedge_share,
        )
        cascade = CascadeConfig(
            expensive=expensive,
            rule=rule,
            cheap_deadline_share=config.cascade.cheap_deadline_share,
            failed_cooldown_s=config.cascade.failed_cooldown_s,
        )
    engine = Engine(
        experts,
        cascade=cascade,
        learner=config.learner_name([e.name for e in experts]),
        store=stores.learner,
        prediction_log=stores.predictions,
        policies=stores.policies,
        deadline_s=config.limits.deadline_ms / 1000.0,
        bandit=bandit,
        floors=config.floors,
    )
    bus_health = DependencyHealth("feedback bus")
    publisher: FeedbackPublisher
    worker: EmbeddedFeedbackWorker | None = None
    backlog = None
    if config.bus.kind == "inprocess":
        queue = InProcessFeedbackQueue(
            config.bus.partitions,
            topic=config.bus.topic,
            max_pending=config.bus.max_pending,
            publish_timeout_s=config.limits.feedback_ack_timeout_s,
            journal=stores.journal,
        )
        # Short polls and back-offs: the queue and the worker share the process; latency matters more than calls.
        publisher, worker = queue, EmbeddedFeedbackWorker(engine.applier, queue, poll_timeout_s=0.05, backoff_max_s=1.0)
        max_pending = config.bus.max_pending

        def backlog() -> tuple[int, int]:
            return queue.pending(), max_pending

    else:
        from aegis_online.feedback.kafka import KafkaFeedbackPublisher

        publisher = KafkaFeedbackPublisher(config.bus.bootstrap_servers or "", config.bus.topic)
        log.info(
            "feedback goes to Kafka topic %s; apply it with workers: aegis-online feedback-worker --experts %s "
            "--learner %s --prefix %s --topic %s --bootstrap-servers <brokers> --redis-url <store.redis_url>",
            config.bus.topic,
            ",".join(engine.expert_names),
            engine.learner.name,
            config.store.prefix,
            config.bus.topic,
        )

    def global_weights() -> dict[str, dict[str, float]]:
        try:
            return engine.weights(GLOBAL_SCOPE)
        except StoreUnavailableError:
            return {}

    health = ServiceHealth(
        ExpertHealth(engine.expert_names),
        stores.health,
        bus_health,
        store_kind=stores.description,
        bus_kind=config.bus.kind,
        bus_backlog=backlog,
    )
    metrics = ServiceMetrics(
        feedback_stats=None if worker is None else (lambda: worker.stats.as_dict()),
        weights=global_weights,
        store_degraded=lambda: bool(health.store is not None and health.store.degraded),
        predictions_dropped=stores.dropped,
    )
    return ModerationService(
        config=config,
        engine=engine,
        keys=keys,
        publisher=publisher,
        worker=worker,
        health=health,
        metrics=metrics,
        bus_health=bus_health,
        store_description=stores.description,
        ledger=stores.ledger,
        quotas=TenantQuotas(config.rate_limits, stores.limiter),
        gate=GlobalLearningGate(config.global_learning, stores.contributions),
        close_stores=stores.close,
    )
