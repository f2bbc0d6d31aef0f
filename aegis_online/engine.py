"""The embedded service's pair: a ``Moderator`` (the request path) and the ``FeedbackApplier`` of its feedback,
over the same stores and keys.

Whatever serves, replays or simulates a service in one process builds an ``Engine``; a feedback worker builds only
a ``FeedbackApplier`` (``feedback/``), from expert names and a learner.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aegis_online.experts import Expert
from aegis_online.learn import DEFAULT_LEARNER, Learner
from aegis_online.moderator import BanditConfig, CascadeConfig, Moderator
from aegis_online.policy import PlatformFloor, TenantPolicy
from aegis_online.schemas import Decision, ExpertOutput, FeedbackEvent, FeedbackResult, ModerationRequest
from aegis_online.state import LearnerStore, PolicyStore, PredictionLog, PredictionRecord
from aegis_online.weights import GLOBAL_SCOPE, BatchOutcome, FeedbackApplier, PlannedFeedback

__all__ = ["GLOBAL_SCOPE", "BanditConfig", "CascadeConfig", "Engine"]


class Engine:
    """A moderator and its feedback applier; the methods below hand each call to the one that does it."""

    def __init__(
        self,
        experts: Sequence[Expert],
        *,
        learner: str | Learner = DEFAULT_LEARNER,
        store: LearnerStore | None = None,
        prediction_log: PredictionLog | None = None,
        policies: PolicyStore | None = None,
        deadline_s: float = 2.0,
        bandit: BanditConfig | None = None,
        cascade: CascadeConfig | None = None,
        seed: int | None = None,
        floors: dict[str, PlatformFloor] | None = None,
    ) -> None:
        self.moderator = Moderator(
            experts,
            learner=learner,
            store=store,
            prediction_log=prediction_log,
            policies=policies,
            deadline_s=deadline_s,
            bandit=bandit,
            cascade=cascade,
            seed=seed,
            floors=floors,
        )
        m = self.moderator
        self.applier = FeedbackApplier(
            m.expert_names, m.learner, store=m.store, prediction_log=m.prediction_log, policies=m.policies
        )
        self.experts, self.expert_names, self.learner, self.keyspace = m.experts, m.expert_names, m.learner, m.keyspace

    # -- the stores both paths share: replacing one replaces it for both -------------------------------------------
    @property
    def store(self) -> LearnerStore:
        return self.moderator.store

    @store.setter
    def store(self, store: LearnerStore) -> None:
        self.moderator.store = self.applier.store = store

    @property
    def prediction_log(self) -> PredictionLog:
        return self.moderator.prediction_log

    @prediction_log.setter
    def prediction_log(self, log: PredictionLog) -> None:
        self.moderator.prediction_log = self.applier.prediction_log = log

    @property
    def policies(self) -> PolicyStore:
        return self.moderator.policies

    @policies.setter
    def policies(self, policies: PolicyStore) -> None:
        self.moderator.policies = self.applier.policies = policies

    # -- the request path (``Moderator``) --------------------------------------------------------------------------
    async def moderate(
        self, request: ModerationRequest, *, deadline_s: float | None = None, remember: bool = True
    ) -> Decision:
        return await self.moderator.moderate(request, deadline_s=deadline_s, remember=remember)

    def decide(self, request: ModerationRequest, outputs: Sequence[ExpertOutput], **context: Any) -> Decision:
        return self.moderator.decide(request, outputs, **context)

    def weights(self, scope: str, categories: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
        return self.moderator.weights(scope, categories)

    def policy(self, tenant: str) -> TenantPolicy:
        return self.policies.effective(tenant)

    # -- the learning path (``FeedbackApplier``) -------------------------------------------------------------------
    def feedback(self, event: FeedbackEvent) -> FeedbackResult:
        return self.applier.apply(event)

    def plan_feedback(self, event: FeedbackEvent, record: PredictionRecord | None) -> PlannedFeedback:
        return self.applier.plan(event, record)

    def feedback_batch(self, items: Sequence[tuple[PlannedFeedback, str, int]]) -> BatchOutcome:
        return self.applier.apply_batch(items)
