"""Tenant policies through one bounded cache: the feedback worker's and the serving path's.

Both read a tenant's policy for every event or request, and a round trip to Redis each time would put the network
(and Redis' availability) on that path. One class serves both:

* **Bounded, least recently used out.** At most ``max_tenants`` policies are kept; a new tenant past that evicts the
  one read least recently, only that one (``cachetools.LRUCache``). The two caches this replaces were cleared whole
  at 100,000 tenants, so a burst of new tenants made every tenant miss at once.
* **A time-to-live on reads.** An entry older than ``ttl_s`` is read again before it is used, so a changed policy is
  seen within ``ttl_s`` (misses, "no policy", are cached the same way). The entry is refreshed, not expired away (as
  ``cachetools.TTLCache`` would drop it): it stays there to be served while the store is down.
* **Stale while down** (with ``health``, the serving path): when the store fails, the last known policy is served
  (a tenant never seen: None, the default policy), ``health`` turns degraded, and the store is tried again only when
  ``health.may_try()`` says so, so a dead Redis costs one timeout per retry interval, not one per request. Without
  ``health`` (the feedback worker, whose batch cannot be applied while Redis is down anyway) a store error is raised.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from cachetools import LRUCache

from aegis_online.policy import TenantPolicy
from aegis_online.state.base import PolicyStore, StoreUnavailableError

#: The most tenants' policies a process keeps (a policy is a few KB: a few hundred MB at most).
MAX_CACHED_TENANTS = 100_000


class Availability(Protocol):
    """What the cache asks of the store's health (``serve.resilience.DependencyHealth``)."""

    def may_try(self) -> bool: ...

    def failed(self, error: BaseException) -> None: ...

    def succeeded(self) -> None: ...


class CachedPolicyStore(PolicyStore):
    """``inner``'s policies through a bounded LRU cache with a time-to-live; see the module docstring.

    >>> from aegis_online.state.memory import MemoryPolicyStore
    >>> store = CachedPolicyStore(MemoryPolicyStore([TenantPolicy(tenant="a")]), ttl_s=60.0)
    >>> store.get("a").tenant, store.get("b")
    ('a', None)
    """

    def __init__(
        self,
        inner: PolicyStore,
        ttl_s: float = 5.0,
        *,
        health: Availability | None = None,
        max_tenants: int = MAX_CACHED_TENANTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_tenants < 1:
            raise ValueError("max_tenants must be at least 1")
        self.inner = inner
        self.ttl_s = ttl_s
        self.health = health
        self._clock = clock
        #: tenant -> (when read from the store, its policy or None); cachetools caches are not thread-safe
        self._cache: LRUCache[str, tuple[float, TenantPolicy | None]] = LRUCache(maxsize=max_tenants)
        self._lock = threading.Lock()

    def get(self, tenant: str) -> TenantPolicy | None:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(tenant)  # a read makes it the most recently used
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        health = self.health
        if health is not None and not health.may_try():  # the store is down: what we have, without a timeout
            return None if hit is None else hit[1]
        try:
            policy = self.inner.get(tenant)
        except StoreUnavailableError as error:
            if health is None:
                raise
            health.failed(error)
            return None if hit is None else hit[1]
        if health is not None:
            health.succeeded()
        self._remember(tenant, now, policy)
        return policy

    def put(self, policy: TenantPolicy) -> None:
        """Write through; raises ``StoreUnavailableError`` when the store cannot take it (the API answers 503)."""
        try:
            self.inner.put(policy)
        except StoreUnavailableError as error:
            if self.health is not None:
                self.health.failed(error)
            raise
        if self.health is not None:
            self.health.succeeded()
        self._remember(policy.tenant, self._clock(), policy)

    def _remember(self, tenant: str, at: float, policy: TenantPolicy | None) -> None:
        with self._lock:
            self._cache[tenant] = (at, policy)
