"""Build what a feedback worker needs from addresses: the Redis stores and an engine that learns but never scores.

The worker must use the service's learner and its exact, ordered expert list: the engine namespaces learner keys by
both, so a worker configured with another list would read and write other keys (and refuse every prediction made
by a different expert set as ``invalid_feedback``).
"""

from __future__ import annotations

from collections.abc import Sequence

from aegis_online.engine import BanditConfig, Engine
from aegis_online.experts import Expert, ExpertInput
from aegis_online.schemas import ExpertOutput
from aegis_online.state import CachedPolicyStore


class LoggedExpert(Expert):
    """An expert known by name only: the worker reads experts' outputs from the prediction log, never calls them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.categories = frozenset()

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        raise RuntimeError(f"expert {self.name!r} is not callable in a feedback worker")


def redis_engine(
    redis_url: str,
    expert_names: Sequence[str],
    *,
    learner: str = "default",
    prefix: str = "aegis:",
    wait_replicas: int = 0,
    policy_cache_s: float = 5.0,
    cluster: bool = False,
    bandit: BanditConfig | None = None,
) -> Engine:
    """An engine over the Redis stores at ``redis_url`` for the given expert names (in the service's order).

    ``bandit``: the service's bandit settings when it runs in bandit mode. The engine then learns with Exp3-IX
    whatever ``learner`` says, and names its keys after it, so a worker without them would write keys the service
    never reads (a worker never selects experts: only the learner follows from it).
    """
    from aegis_online.state.redis_store import RedisLearnerStore, RedisPolicyStore, RedisPredictionLog, connect

    client = connect(redis_url, cluster=cluster)
    return Engine(
        [LoggedExpert(name) for name in expert_names],
        learner=learner,
        store=RedisLearnerStore(client, prefix, wait_replicas=wait_replicas),
        prediction_log=RedisPredictionLog(client, prefix),
        policies=CachedPolicyStore(RedisPolicyStore(client, prefix), ttl_s=policy_cache_s),
        bandit=bandit,
    )
