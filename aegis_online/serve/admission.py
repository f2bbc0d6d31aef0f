"""Admission control of the moderation routes: a request that cannot be answered within its deadline is refused at
once (503, ``Retry-After``), so that under overload the service keeps answering the requests it takes in time
instead of answering every request late.

Without it, work piles up where nothing sees the deadline (Ray's proxy, the experts' queues): on 2 cores, 128
clients got 9.5 answers/s instead of 30, 14 s at p50 and 15% of decisions missing experts (issue 11, item 5). The
parts are known mechanisms, not tuned constants:

* **A concurrency limit, AIMD toward a latency target** (``AimdLimit``): the inputs in progress at once. It grows
  while started requests finish within ``target_share`` of the deadline and shrinks by ``backoff`` when one does
  not, at most once per round trip (TCP's congestion avoidance, Netflix concurrency-limits' ``AIMDLimit``; slow
  start until the first decrease). It settles where the latency of a started request is the target: past the point
  where throughput stops growing, more concurrency only adds latency (Little's law), so the limit keeps the
  experts busy without letting their queues eat the deadline.
* **A FIFO queue bounded by each request's deadline**: a request that finds the limit reached waits, unless the
  work ahead of it cannot clear in time for it to start and still finish. Its expected start is the inputs that
  must complete first x the latency (mean + 1 deviation) / the limit; "still finish" means before its deadline
  with the latency's upper estimate left (``LatencyEstimate``: mean + 2 deviations, smoothed as TCP smooths round
  trips, RFC 6298). A request that still has not started when that latest start passes is refused then.
* **No standing queue** (``StandingQueue``, CoDel's rule): a queue absorbs bursts, but once every request leaving
  it for a round trip (the latency target) waited longer than ``queue_target_share`` of the deadline, it only adds
  latency: then a request is queued only if it should start within that share, and refused at once otherwise,
  until a request leaves it quickly again. Under sustained overload admitted requests wait about that share
  instead of nearly the whole deadline, and the tail stays clear of it.
* **The deadline bounds the whole request**: it runs from the moment the request reached the app
  (``ArrivalStamp``), so the experts get what is left of it, less ``reserve_share`` of it for deciding and answering.

Costs are in inputs: ``/v1/moderations`` with n inputs takes n units. A request larger than the limit still
starts when nothing else is in progress. One controller per ingress replica (its own process and event loop).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from aegis_online.config import AdmissionSection
from aegis_online.serve.errors import ApiError
from aegis_online.serve.metrics import ServiceMetrics

#: Key of the ASGI scope under which ``ArrivalStamp`` notes when the request reached the app (time.monotonic).
ARRIVED = "aegis.arrived"

Outcome = Literal["admitted", "admitted_after_wait", "refused", "refused_after_wait"]


class AimdLimit:
    """Additive-increase, multiplicative-decrease concurrency limit toward a latency target.

    ``update`` takes one finished request's latency (from its start). Within ``target_s``: during slow start the
    limit grows by one per sample (doubling each round trip), afterwards by ``1 / limit`` (one per round trip), and
    only while the limit is in use (at least half of it in progress: an idle service learns nothing about its
    capacity). Beyond ``target_s``: times ``backoff``, then no further decrease for the sample's latency, so the
    requests started under the old limit do not shrink it again. Always within ``[minimum, maximum]``.
    """

    def __init__(self, *, initial: float, minimum: float, maximum: float, target_s: float, backoff: float) -> None:
        if not 0 < minimum <= initial <= maximum:
            raise ValueError(f"need 0 < minimum <= initial <= maximum, got {minimum}, {initial}, {maximum}")
        self.limit = float(initial)
        self.minimum = float(minimum)
        self.maximum = float(maximum)
        self.target_s = target_s
        self.backoff = backoff
        self.slow_start = True
        self._hold_until = -math.inf

    def update(self, latency_s: float, in_flight: float, now: float) -> None:
        if latency_s > self.target_s:
            if now >= self._hold_until:
                self.limit = max(self.minimum, self.limit * self.backoff)
                self.slow_start = False
                self._hold_until = now + latency_s
            return
        if 2 * in_flight < self.limit:
            return
        step = 1.0 if self.slow_start else 1.0 / self.limit
        self.limit = min(self.maximum, self.limit + step)


class LatencyEstimate:
    """Mean and mean deviation of a started request's latency, smoothed as TCP smooths round trips (RFC 6298:
    gains 1/8 and 1/4). Until the first sample both are 0: nothing is refused on a guess, the queue is bounded by the
    deadline alone."""

    def __init__(self) -> None:
        self.mean_s = 0.0
        self.deviation_s = 0.0
        self.samples = 0

    def add(self, latency_s: float) -> None:
        if self.samples == 0:
            self.mean_s, self.deviation_s = latency_s, latency_s / 2
        else:
            self.deviation_s += 0.25 * (abs(self.mean_s - latency_s) - self.deviation_s)
            self.mean_s += 0.125 * (latency_s - self.mean_s)
        self.samples += 1

    @property
    def high_s(self) -> float:
        """Mean + 1 deviation: what the queue is priced at (waiting in vain costs a client more than a retry)."""
        return self.mean_s + self.deviation_s

    @property
    def upper_s(self) -> float:
        """Mean + 2 deviations (about the 95th percentile of a normal spread; TCP's timeout takes 4, where a false
        alarm costs more): the time a request should have left when it starts, so as not to be cut short."""
        return self.mean_s + 2 * self.deviation_s


class StandingQueue:
    """CoDel's test for a queue that no longer drains: every request that left it during the last ``interval_s``
    waited longer than ``target_s``. An empty queue or one quick departure clears it."""

    def __init__(self, target_s: float, interval_s: float) -> None:
        self.target_s = target_s
        self.interval_s = interval_s
        self._above_since: float | None = None

    def left(self, waited_s: float, now: float) -> None:
        """A request left the queue (it started, or gave up) after ``waited_s``."""
        if waited_s <= self.target_s:
            self._above_since = None
        elif self._above_since is None:
            self._above_since = now

    def emptied(self) -> None:
        self._above_since = None

    def standing(self, now: float) -> bool:
        return self._above_since is not None and now - self._above_since >= self.interval_s


@dataclass(eq=False)
class _Waiter:
    cost: int
    since: float
    granted: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class AdmissionControl:
    """The limit, the queue and the deadline of one ingress replica's moderation requests.

    ``slot(arrived, cost)`` is an async context manager: it yields the seconds left for the experts, or raises
    ``ApiError(503, code="overloaded")`` with ``Retry-After``. Counts go to ``metrics`` when given.
    """

    def __init__(
        self,
        settings: AdmissionSection,
        deadline_s: float,
        metrics: ServiceMetrics | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self.deadline_s = deadline_s
        self.reserve_s = settings.reserve_share * deadline_s
        self.metrics = metrics
        self.clock = clock
        target_s = settings.target_share * deadline_s
        self.limiter = AimdLimit(
            initial=settings.initial_limit,
            minimum=settings.min_limit,
            maximum=settings.max_limit,
            target_s=target_s,
            backoff=settings.backoff,
        )
        self.latency = LatencyEstimate()
        self.standing = StandingQueue(settings.queue_target_share * deadline_s, interval_s=target_s)
        self.in_flight = 0
        self.queued = 0
        self._queue: deque[_Waiter] = deque()
        self._refusals: deque[float] = deque()  # when the requests told to come back (not yet due) were refused
        self._retry_after_s = 1.0  # the last Retry-After given
        if metrics is not None:
            metrics.watch_admission(self.state)

    def state(self) -> tuple[float, int, int]:
        """(limit, inputs in progress, inputs waiting), for the metrics."""
        return self.limiter.limit, self.in_flight, self.queued

    @asynccontextmanager
    async def slot(self, arrived: float, cost: int = 1) -> AsyncIterator[float]:
        """Start a request of ``cost`` inputs that reached the app at ``arrived``; yields the experts' budget."""
        deadline_at = arrived + self.deadline_s - self.reserve_s
        if not self.enabled:
            yield max(deadline_at - self.clock(), 0.0)
            return
        waited = await self._admit(cost, deadline_at)
        started = self.clock()
        self._count("admitted_after_wait" if waited else "admitted", started - arrived if waited else None)
        finished = False
        try:
            yield max(deadline_at - started, 0.0)
            finished = True
        finally:
            self.in_flight -= cost
            if finished:  # a cancelled request (client gone) says nothing about the service's latency
                now = self.clock()
                self.latency.add(now - started)
                self.limiter.update(now - started, self.in_flight + cost, now)
            self._dispatch()

    async def _admit(self, cost: int, deadline_at: float) -> bool:
        """Take ``cost`` units now (False), after waiting in the queue (True), or raise 503."""
        if not self._queue and self._fits(cost):
            self.in_flight += cost
            return False
        now = self.clock()
        latest_start = deadline_at - self.latency.upper_s
        ahead = self.queued + self.in_flight + cost - self.limiter.limit
        expected_wait = max(ahead, 0.0) * self.latency.high_s / self.limiter.limit
        too_late = now + expected_wait > latest_start
        standing = self.standing.standing(now) and expected_wait > self.standing.target_s
        if too_late or standing or self.queued + cost > self.settings.max_queue:
            self._refuse("refused", "the service is at capacity and this request could not start in time")
        waiter = _Waiter(cost, now)
        self._queue.append(waiter)
        self.queued += cost
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), timeout=max(latest_start - now, 0.0))
        except (TimeoutError, asyncio.CancelledError) as error:
            if waiter.granted.done() and not waiter.granted.cancelled():
                if isinstance(error, TimeoutError):  # granted just as the wait ran out: take it
                    return True
                self.in_flight -= cost  # granted, but the caller is gone: hand the units on
                self._dispatch()
                raise
            waiter.granted.cancel()
            self.queued -= cost
            if isinstance(error, asyncio.CancelledError):
                raise
            self.standing.left(self.clock() - waiter.since, self.clock())
            self._refuse("refused_after_wait", "the service is at capacity and this request did not start in time")
        return True

    def _fits(self, cost: int) -> bool:
        return self.in_flight == 0 or self.in_flight + cost <= self.limiter.limit

    def _dispatch(self) -> None:
        """Start queued requests, oldest first, while they fit under the limit."""
        now = self.clock()
        while self._queue:
            head = self._queue[0]
            if head.granted.done():  # gave up waiting
                self._queue.popleft()
                continue
            if not self._fits(head.cost):
                return
            self._queue.popleft()
            self.queued -= head.cost
            self.in_flight += head.cost
            self.standing.left(now - head.since, now)
            head.granted.set_result(None)
        self.standing.emptied()

    def _refuse(self, outcome: Outcome, message: str) -> None:
        """503 with ``Retry-After``: when everything ahead will have been served at the present rate (limit / mean
        latency): the inputs in progress and queued, and the clients refused before and told to come back within
        the last Retry-After (they come back first); at least 1 s. Under sustained overload refused clients thus
        spread their retries over what the service can take, instead of coming back together to be refused again,
        and each refusal costs CPU that the experts need."""
        self._count(outcome, None)
        now = self.clock()
        while self._refusals and self._refusals[0] < now - self._retry_after_s:
            self._refusals.popleft()
        self._refusals.append(now)
        backlog = self.in_flight + self.queued + len(self._refusals)
        retry = max(1, math.ceil(backlog * self.latency.mean_s / self.limiter.limit))
        self._retry_after_s = float(retry)
        raise ApiError(503, f"{message}; retry in {retry} s", code="overloaded", headers={"Retry-After": str(retry)})

    def _count(self, outcome: Outcome, waited_s: float | None) -> None:
        if self.metrics is not None:
            self.metrics.observe_admission(outcome, waited_s)


Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


class ArrivalStamp:
    """Notes in the scope when a request reached the app: where its deadline starts (pure ASGI, outermost)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope[ARRIVED] = time.monotonic()
        await self.app(scope, receive, send)


def arrival(scope: Scope) -> float:
    """When the request of ``scope`` reached the app (now, if no ``ArrivalStamp`` saw it)."""
    stamped = scope.get(ARRIVED)
    return stamped if isinstance(stamped, float) else time.monotonic()
