"""Store wrappers for the request path: weights and policies from a cache of bounded staleness, and answers that keep
coming when the store (Redis) is unreachable.

A moderation request reads the learner state of its (tenant, category) keys and the tenant's policy, and writes a
prediction record. Going to Redis for each would put a network round trip, and Redis' availability, on every
request. Instead:

* ``CachedLearnerStore``: a key younger than half the staleness bound is served from memory; an older one is served
  and refreshed in the background; one older than the bound (or never seen) is loaded before answering. So the
  weights a request uses are never older than ``max_staleness_s`` while the store answers, and hot keys never wait.
* Policies: ``state.CachedPolicyStore`` given this module's ``DependencyHealth`` (one bounded LRU cache with a
  time-to-live, shared with the feedback worker; the last known policy is served while the store is down).
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

from aegis_online.state import (
    GroupWrite,
    LearnerRecord,
    LearnerStore,
    PredictionLog,
    PredictionRecord,
    StoreUnavailableError,
)

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

    def compare_and_set(self, writes: Sequence[GroupWrite], event_id: str | None = None) -> list[str]:
        try:
            return self.inner.compare_and_set(writes, event_id)
        finally:
            self._invalidate([key for write in writes for key in write.keys])

    def close(self) -> None:
        self.inner.close()


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
