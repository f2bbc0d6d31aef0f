"""What a tenant may still do: token-bucket rate limits, and its share of the updates to the global weights.

Two small counters the API consults before it does work, each behind an interface with an in-process
implementation (here: the embedded service is one process) and a Redis one (``state.redis_quotas``: shared by every
ingress replica, atomic in one script per call).

* ``RateLimiter``: token buckets per (tenant, endpoint class). A call of cost ``n`` (inputs of a moderation, events of
  a feedback batch) takes ``n`` tokens from every bucket that applies, or none; when one lacks tokens the call is
  refused with the seconds until it would pass (the HTTP layer's ``Retry-After``).
* ``ContributionCounter``: feedback from a *contributing* tenant (one the operator lets train the global weights)
  may make at most ``max_share`` of the global updates in a window, beyond a floor of ``min_events``; events from
  moderator and admin keys count in the total but are not capped. A tenant that floods feedback therefore cannot
  steer the weights every other tenant starts from.

Clocks are injectable for the tests; the Redis versions read the server's clock, so replicas agree.
"""

from __future__ import annotations

import abc
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class Bucket:
    """A token bucket: ``rate_per_s`` tokens come back per second, at most ``burst`` are held.

    >>> Bucket(rate_per_s=2, burst=5).seconds_for(3, tokens=1.0)
    1.0
    """

    rate_per_s: float
    burst: float

    def seconds_for(self, cost: float, tokens: float) -> float:
        """How long until ``tokens`` grow to ``cost``."""
        return max(0.0, (cost - tokens) / self.rate_per_s)


class RateLimiter(abc.ABC):
    @abc.abstractmethod
    def take(self, key: str, buckets: Sequence[Bucket], cost: float) -> float:
        """Take ``cost`` tokens from each of ``key``'s buckets (all or none): 0.0 when taken, else the seconds until
        they would be (nothing taken). ``math.inf`` when ``cost`` exceeds a bucket's burst: it can never pass."""


class MemoryRateLimiter(RateLimiter):
    """Buckets in a dict (bounded: the least recently used keys go first; a forgotten bucket starts full again).

    >>> now = [0.0]
    >>> limiter = MemoryRateLimiter(clock=lambda: now[0])
    >>> per_second = [Bucket(rate_per_s=1, burst=2)]
    >>> [limiter.take("acme:moderate", per_second, 1) for _ in range(3)]
    [0.0, 0.0, 1.0]
    >>> now[0] = 1.0; limiter.take("acme:moderate", per_second, 1)
    0.0
    """

    def __init__(self, clock: Clock = time.monotonic, capacity: int = 100_000) -> None:
        self.clock = clock
        self.capacity = capacity
        self._buckets: OrderedDict[str, list[tuple[float, float]]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, buckets: Sequence[Bucket], cost: float) -> float:
        if any(cost > b.burst for b in buckets):
            return math.inf
        now = self.clock()
        with self._lock:
            state = self._buckets.get(key)
            if state is None or len(state) != len(buckets):
                state = [(b.burst, now) for b in buckets]
            held = zip(buckets, state, strict=True)
            tokens = [min(b.burst, t + max(0.0, now - at) * b.rate_per_s) for b, (t, at) in held]
            wait = max(b.seconds_for(cost, t) for b, t in zip(buckets, tokens, strict=True))
            if wait == 0.0:
                tokens = [t - cost for t in tokens]
            self._buckets[key] = [(t, now) for t in tokens]
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.capacity:
                self._buckets.popitem(last=False)
            return wait


@dataclass(frozen=True)
class ShareCap:
    """At most ``max_share`` of a window's global updates from one contributing tenant, beyond ``min_events``."""

    max_share: float
    window_s: float
    min_events: int

    def allows(self, own: int, total: int) -> bool:
        """Whether one more event of a tenant that made ``own`` of the window's ``total`` updates may count.

        >>> cap = ShareCap(max_share=0.25, window_s=3600, min_events=2)
        >>> cap.allows(own=1, total=1), cap.allows(own=2, total=2), cap.allows(own=2, total=20)
        (True, False, True)
        """
        return own + 1 <= max(self.min_events, self.max_share * (total + 1))


class ContributionCounter(abc.ABC):
    @abc.abstractmethod
    def admit(self, tenant: str, capped: int, trusted: int, cap: ShareCap) -> int:
        """Count ``trusted`` uncapped global updates (moderator and admin keys) of the current window, then admit up
        to ``capped`` updates of contributing tenant ``tenant`` under ``cap``; how many were admitted (and counted)."""


class MemoryContributionCounter(ContributionCounter):
    """The counts of the current window in a dict: right for one process (the embedded service); a restart starts
    the window afresh.

    >>> counter = MemoryContributionCounter(clock=lambda: 0.0)
    >>> cap = ShareCap(max_share=0.5, window_s=60, min_events=1)
    >>> counter.admit("acme", 5, 0, cap), counter.admit("ops", 0, 3, cap), counter.admit("acme", 5, 0, cap)
    (1, 0, 2)
    """

    def __init__(self, clock: Clock = time.time) -> None:
        self.clock = clock
        self._window = -1
        self._counts: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def admit(self, tenant: str, capped: int, trusted: int, cap: ShareCap) -> int:
        window = int(self.clock() // cap.window_s)
        with self._lock:
            if window != self._window:
                self._window, self._counts, self._total = window, {}, 0
            self._total += trusted
            own = self._counts.get(tenant, 0)
            admitted = 0
            while admitted < capped and cap.allows(own, self._total):
                own += 1
                self._total += 1
                admitted += 1
            if admitted:
                self._counts[tenant] = own
            return admitted
