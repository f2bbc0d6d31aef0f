"""Per-tenant rate limits and quotas at the HTTP layer: 429 with ``Retry-After`` before any work is done.

The buckets of a call come from the config (``rate_limits``: the tenant's own, else the default) for its endpoint
class: ``moderate`` (``/v1/moderate`` and ``/v1/moderations``, one unit per input) and ``feedback`` (one unit per
event). Admin keys are not limited (operators' tools must get through when tenants are throttled). With the Redis
store the buckets live in Redis and every replica shares them; while Redis is unreachable each replica falls back to
buckets of its own (so a tenant may briefly get up to its limit per replica), and says so in the log.
"""

from __future__ import annotations

import logging
import math

from aegis_online.config import RateLimitsSection
from aegis_online.serve.auth import Principal
from aegis_online.serve.errors import ApiError
from aegis_online.state import StoreUnavailableError
from aegis_online.state.quotas import MemoryRateLimiter, RateLimiter

log = logging.getLogger("aegis_online.serve.quotas")


class TenantQuotas:
    """Checks a call against its tenant's buckets; refuses with 429 (or 413 when it can never fit)."""

    def __init__(self, config: RateLimitsSection, limiter: RateLimiter | None = None) -> None:
        self.config = config
        self.local = MemoryRateLimiter()
        self.limiter = limiter or self.local
        self.refused = 0
        kinds = [config.default, *config.tenants.values()]
        self.enabled = any(limits.moderate or limits.feedback for limits in kinds)

    def check(self, principal: Principal, tenant: str, kind: str, cost: int) -> None:
        """Take ``cost`` units of ``kind`` (``moderate`` or ``feedback``) from ``tenant``'s buckets, or raise."""
        if not self.enabled or principal.role == "admin" or cost <= 0:
            return
        limits = getattr(self.config.for_tenant(tenant), kind)
        if not limits:
            return
        buckets = [limit.bucket() for limit in limits]
        key = f"{tenant}:{kind}"
        try:
            wait = self.limiter.take(key, buckets, cost)
        except StoreUnavailableError as error:
            log.warning("rate-limit store unreachable; limiting %s in this replica only: %s", tenant, error)
            wait = self.local.take(key, buckets, cost)
        if wait == 0.0:
            return
        self.refused += 1
        if math.isinf(wait):
            burst = min(b.burst for b in buckets)
            raise ApiError(
                413,
                f"this call needs {cost} {kind} units but tenant {tenant!r} may use at most {burst:g} at once; "
                "split it",
                code="exceeds_burst",
            )
        retry = max(1, math.ceil(wait))
        raise ApiError(
            429,
            f"rate limit of tenant {tenant!r} for {kind} reached; retry in {retry} s",
            code="rate_limited",
            headers={"Retry-After": str(retry)},
        )
