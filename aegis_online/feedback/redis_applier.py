"""The feedback worker's learning path over Redis: a ``FeedbackApplier`` built from addresses and names only.

The worker must use the service's learner and its exact, ordered expert list: the key space is named after both,
so a worker configured with another list would read and write other keys (and refuse every prediction made by a
different expert set as ``invalid_feedback``). It never needs the experts themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

from aegis_online.learn import DEFAULT_LEARNER
from aegis_online.state import CachedPolicyStore
from aegis_online.weights import FeedbackApplier


def redis_applier(
    redis_url: str,
    expert_names: Sequence[str],
    *,
    learner: str = DEFAULT_LEARNER,
    prefix: str = "aegis:",
    wait_replicas: int = 0,
    policy_cache_s: float = 5.0,
    cluster: bool = False,
) -> FeedbackApplier:
    """A feedback applier over the Redis stores at ``redis_url`` for the given expert names (in the service's
    order) and learner (the service's ``learner.name``: in bandit mode, ``exp3-ix``)."""
    from aegis_online.state.redis_store import RedisLearnerStore, RedisPolicyStore, RedisPredictionLog, connect

    client = connect(redis_url, cluster=cluster)
    return FeedbackApplier(
        expert_names,
        learner,
        store=RedisLearnerStore(client, prefix, wait_replicas=wait_replicas),
        prediction_log=RedisPredictionLog(client, prefix),
        policies=CachedPolicyStore(RedisPolicyStore(client, prefix), ttl_s=policy_cache_s),
    )
