"""Store wrappers for the request path: weights and policies from a cache of bounded staleness, and answers that keep
coming when the store (Redis) is unreachable.

A moderation request reads the learner state of its (tenant, category) keys and the tenant's policy, and writes a
prediction record. Going to Redis for each would put a network round trip, and Redis' availability, on every
request. Instead:

* ``CachedLearnerStore``: a key younger than half the staleness bound is served from memory; an older one is served
  and refreshed in the background; one older than the bound (or never seen) is loaded before answering. So the
  weights a request uses are never older than ``max_staleness_s`` while the store answers, and hot keys never wait.
* ``ResilientPolicyStore``: the same for policies, with a time-to-live.
* ``ResilientPredictionLog``: a failed write is counted and dropped (the decision matters more than learning from it:
  feedback for that request will be refused as unknown).

When the store fails, every wrapper keeps serving what it has cached (a key never seen gets the learner's prior),
``DependencyHealth`` turns ``degraded`` (``/readyz`` says so) and the store is retried at most every ``retry_after_s``,
so a dead Redis costs one timeout per interval, not one per request. Writes of the feedback path go straight to the
store and invalidate the cached keys they touch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from aegis_online.policy import TenantPolicy
from aegis_online.state import (
    BatchCompute,
    BatchOutcome,
    LearnerRecord,
    LearnerStore,
    PolicyStore,
    PredictionLog,
    PredictionRecord,
    StoreUnavailableError,
    UpdateBatch,
)
from aegis_online.state.base import RecordsUpdate

log = logging.getLogger("aegis_online.serve.store")

MAX_CACHED_KEYS = 500_000
Clock = Callable[[], float]


class DependencyHealth:
    """Whether a dependency (the store, the bus) answered its last call, since when it has not, and when to retry."""

    def __init__(self, name: str = "store", retry_after_s: float = 1.0, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self.error: str | None = None
        self.since: float | None = None
        self.failures = 0
        self._next_try = 0.0

    @property
    def degraded(self) -> bool:
        return self.error is not None

    def may_try(self) -> bool:
        """False while a recent failure says the store is down (the circuit is open)."""
        return self.error is None or self._clock() >= self._next_try

    def succeeded(self) -> None:
        if self.error is not None:
            with self._lock:
                log.warning("%s reachable again after %.1f s", self.name, self._clock() - (self.since or self._clock()))
                self.error, self.since = None, None

    def failed(self, error: BaseException) -> None:
        with self._lock:
            now = self._clock()
            if self.error is None:
                log.error("%s unreachable: %s", self.name, error)
                self.since = now
            self.error = str(error) or type(error).__name__
            self.failures += 1
            self._next_try = now + self.retry_after_s

    def describe(self) -> str:
        if self.error is None:
            return "ok"
        return f"unreachable for {self._clock() - (self.since or self._clock()):.0f} s: {self.error}"


class CachedLearnerStore(LearnerStore):
    """Learner records cached per key with a staleness bound; see the module docstring."""

    def __init__(
        self, inner: LearnerStore, health: DependencyHealth, max_staleness_s: float = 1.0, clock: Clock = time.monotonic
    ) -> None:
        self.inner = inner
        self.health = health
        self.max_staleness_s = max_staleness_s
        self._clock = clock
        self._cache: dict[str, tuple[float, LearnerRecord | None]] = {}
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._refreshing = False

    def load(self, keys: Sequence[str]) -> list[LearnerRecord | None]:
        now = self._clock()
        cache = self._cache
        found: list[LearnerRecord | None] = []
        expired: list[str] = []
        ageing: list[str] = []
        for key in keys:
            hit = cache.get(key)
            if hit is None or now - hit[0] >= self.max_staleness_s:
                expired.append(key)
                found.append(None if hit is None else hit[1])
            else:
                if now - hit[0] >= self.max_staleness_s / 2:
                    ageing.append(key)
                found.append(hit[1])
        if expired and self.health.may_try():
            fresh = self._fetch(expired)
            if fresh is not None:
                found = [fresh.get(k, r) for k, r in zip(keys, found, strict=True)]
        if ageing:
            self._refresh_later(ageing)
        return found

    def _fetch(self, keys: Sequence[str]) -> dict[str, LearnerRecord | None] | None:
        """Load ``keys`` into the cache; their records, or None when the store failed."""
        try:
            records = self.inner.load(keys)
        except StoreUnavailableError as error:
            self.health.failed(error)
            return None
        self.health.succeeded()
        now = self._clock()
        with self._lock:
            if len(self._cache) + len(keys) > MAX_CACHED_KEYS:
                self._cache.clear()
            for key, record in zip(keys, records, strict=True):
                self._cache[key] = (now, record)
        return dict(zip(keys, records, strict=True))

    def _refresh_later(self, keys: Sequence[str]) -> None:
        with self._lock:
            self._pending.update(keys)
            if self._refreshing:
                return
            self._refreshing = True
        threading.Thread(target=self._refresh, name="weights-refresh", daemon=True).start()

    def _refresh(self) -> None:
        try:
            while True:
                with self._lock:
                    keys = list(self._pending)
                    self._pending.clear()
                    if not keys:
                        return
                if self.health.may_try():
                    self._fetch(keys)
        finally:
            with self._lock:
                self._refreshing = False

    def _invalidate(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._cache.pop(key, None)

    def apply(self, event_id: str, keys: Sequence[str], update: RecordsUpdate) -> bool:
        try:
            return self.inner.apply(event_id, keys, update)
        finally:
            self._invalidate(keys)

    def apply_batch(self, batch: UpdateBatch, compute: BatchCompute) -> BatchOutcome:
        try:
            return self.inner.apply_batch(batch, compute)
        finally:
            self._invalidate(batch.keys)

    def close(self) -> None:
        self.inner.close()


class ResilientPolicyStore(PolicyStore):
    """Policies cached for ``ttl_s``; the last known one is served while the store is down."""

    def __init__(
        self, inner: PolicyStore, health: DependencyHealth, ttl_s: float = 5.0, clock: Clock = time.monotonic
    ) -> None:
        self.inner = inner
        self.health = health
        self.ttl_s = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, TenantPolicy | None]] = {}

    def get(self, tenant: str) -> TenantPolicy | None:
        now = self._clock()
        hit = self._cache.get(tenant)
        if hit is not None and (now - hit[0] < self.ttl_s or not self.health.may_try()):
            return hit[1]
        if hit is None and not self.health.may_try():
            return None
        try:
            policy = self.inner.get(tenant)
        except StoreUnavailableError as error:
            self.health.failed(error)
            return None if hit is None else hit[1]
        self.health.succeeded()
        if len(self._cache) > 100_000:
            self._cache.clear()
        self._cache[tenant] = (now, policy)
        return policy

    def put(self, policy: TenantPolicy) -> None:
        """Raises ``StoreUnavailableError`` when the store cannot take it (the API answers 503)."""
        try:
            self.inner.put(policy)
        except StoreUnavailableError as error:
            self.health.failed(error)
            raise
        self.health.succeeded()
        self._cache[policy.tenant] = (self._clock(), policy)


class ResilientPredictionLog(PredictionLog):
    """Writes that fail are counted in ``dropped`` instead of failing the request; reads raise as the store does."""

    def __init__(self, inner: PredictionLog, health: DependencyHealth) -> None:
        self.inner = inner
        self.health = health
        self.dropped = 0

    def put(self, record: PredictionRecord) -> None:
        if not self.health.may_try():
            self.dropped += 1
            return
        try:
            self.inner.put(record)
        except StoreUnavailableError as error:
            self.health.failed(error)
            self.dropped += 1
            return
        self.health.succeeded()

    def get(self, request_id: str) -> PredictionRecord | None:
        return self.get_many([request_id])[0]

    def get_many(self, request_ids: Sequence[str]) -> list[PredictionRecord | None]:
        if not self.health.may_try():
            raise StoreUnavailableError(f"store down: {self.health.error}")
        try:
            records = self.inner.get_many(request_ids)
        except StoreUnavailableError as error:
            self.health.failed(error)
            raise
        self.health.succeeded()
        return records
