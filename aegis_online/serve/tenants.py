"""``/v1/tenants/{tenant}/policy`` (GET, PUT), ``/v1/tenants/{tenant}/weights`` (GET) and ``/v1/weights/global``.

A tenant's clients may read its policy and weights; only its admins (or global admins) may change the policy. A
tenant without a policy of its own reads the ``default`` tenant's (as the engine applies it). A PUT body that names
no tenant takes the path's; one that names another is refused.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aegis_online.api_models.native import CategoryWeights, TenantWeights
from aegis_online.engine import Engine
from aegis_online.errors import InvalidRequestError
from aegis_online.policy import TenantPolicy, resolve_category
from aegis_online.serve.access import require_admin, require_read
from aegis_online.serve.auth import Principal
from aegis_online.serve.errors import ApiError
from aegis_online.state import StoreUnavailableError
from aegis_online.weights import GLOBAL_SCOPE


class TenantServing:
    def __init__(self, engine: Engine, learner_name: str) -> None:
        self.engine = engine
        self.learner_name = learner_name

    def get_policy(self, tenant: str, principal: Principal) -> TenantPolicy:
        require_read(principal, tenant)
        return self.engine.policy(tenant)

    async def put_policy(self, tenant: str, policy: TenantPolicy, principal: Principal) -> TenantPolicy:
        require_admin(principal, tenant)
        if "tenant" not in policy.model_fields_set:
            policy = policy.model_copy(update={"tenant": tenant})
        elif policy.tenant != tenant:
            raise ApiError(
                403,
                f"tenant: the body names {policy.tenant!r}, the path {tenant!r}; a policy is set through its own path",
                field="tenant",
                code="wrong_tenant",
            )
        try:
            await asyncio.to_thread(self.engine.policies.put, policy)
        except StoreUnavailableError:
            raise ApiError(
                503,
                "the policy store is unreachable; the policy was not changed",
                code="store_unavailable",
                headers={"Retry-After": "1"},
            ) from None
        return policy

    def weights(self, tenant: str, categories: Sequence[str] | None, principal: Principal) -> TenantWeights:
        require_read(principal, tenant)
        return self._weights(tenant, self.engine.policy(tenant), categories)

    def global_weights(self, categories: Sequence[str] | None, principal: Principal) -> TenantWeights:
        """The global weights every tenant starts from (categories of the ``default`` policy): operators only, since
        they are learned from several tenants' trusted feedback."""
        if principal.tenant is not None:
            raise ApiError(403, "the global weights are for keys of every tenant (operators)", code="wrong_tenant")
        return self._weights(GLOBAL_SCOPE, self.engine.policy("default"), categories)

    def _weights(self, scope: str, policy: TenantPolicy, categories: Sequence[str] | None) -> TenantWeights:
        known = policy.category_set()
        if categories:
            ids = []
            for i, key in enumerate(categories):
                cat = resolve_category(key, known)
                if cat is None:
                    raise InvalidRequestError(f"category.{i}: unknown category {key!r}")
                ids.append(cat)
            cats = list(dict.fromkeys(ids))
        else:
            cats = list(known.ids)
        states, scopes = self.engine.moderator.load_states(scope, cats, policy)
        weights = self.engine.learner.weights(states)
        names = self.engine.expert_names
        categories = {}
        for i, cat in enumerate(cats):
            # Only the experts that score this category, renormalised: the weights its decisions use when they all
            # answer (an expert that never scores it keeps its prior, which means nothing).
            covering = [j for j, expert in enumerate(self.engine.experts) if expert.covers(known[cat])]
            total = float(sum(weights[i][j] for j in covering))
            categories[cat] = CategoryWeights(
                scope=scopes[i],  # type: ignore[arg-type]
                weights={names[j]: float(weights[i][j]) / total for j in covering} if total > 0 else {},
            )
        return TenantWeights(tenant=scope, learner=self.learner_name, experts=list(names), categories=categories)
