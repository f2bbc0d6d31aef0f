"""Bounded retries with jittered exponential backoff that honour ``Retry-After``: the one implementation in the
project, used by the service's client (``aegis_online.client``) and by the HTTP experts
(``experts.backends.http_client``).

What is retried is what may pass on its own: a connection error or timeout, the statuses of the policy (by default
429 and 503, which this service answers with ``Retry-After`` when it is over a rate limit or at capacity, and 502/504
from a proxy in front of it), and any other error that carries ``Retry-After`` (the server says when to come back:
this service's 409 for a feedback event another call is queueing right now). A server that asks for a longer wait
than the policy allows is not retried early, where it would only be refused again: the caller gets the answer, with
its ``Retry-After``, at once. The policy is pure (delays and decisions); the two loops below only send, sleep and ask.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx

__all__ = ["DEFAULT_STATUSES", "Outcome", "RetryPolicy", "parse_retry_after", "send", "send_async"]

#: Statuses retried by default: rate limited, at capacity or unavailable, and a proxy's bad gateway or timeout.
DEFAULT_STATUSES = frozenset({429, 502, 503, 504})


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delay-seconds or an HTTP date); None when absent or unreadable.

    >>> parse_retry_after("2"), parse_retry_after("0.5"), parse_retry_after("soon"), parse_retry_after(None)
    (2.0, 0.5, None, None)
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=datetime(2015, 10, 21, 7, 28, tzinfo=timezone.utc))
    5.0
    """
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return max(seconds, 0.0) if seconds == seconds else None  # NaN reads as unreadable


@dataclass(frozen=True)
class RetryPolicy:
    """How many times to try and how long to wait in between.

    Parameters
    ----------
    attempts
        Tries in all, the first included (1: never retry).
    backoff_s
        Ceiling of the first wait; doubled at each retry, capped at ``max_backoff_s``. The wait is drawn between half
        the ceiling and the ceiling, so that clients that failed together do not retry together.
    max_backoff_s
        The longest wait, ``Retry-After`` included: a server asking for more is not retried.
    statuses
        HTTP statuses worth retrying; any other answer is returned at once.
    """

    attempts: int = 4
    backoff_s: float = 0.25
    max_backoff_s: float = 8.0
    statuses: frozenset[int] = DEFAULT_STATUSES

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError("need 0 <= backoff_s <= max_backoff_s")

    def delay(self, attempt: int, retry_after: float | None = None) -> float | None:
        """Seconds to wait after failed try number ``attempt`` (from 1) before the next, or None to give up: no tries
        left, or the server asked for longer than ``max_backoff_s``.

        >>> RetryPolicy(attempts=2, backoff_s=0.0).delay(1, retry_after=1.5), RetryPolicy(attempts=2).delay(2)
        (1.5, None)
        >>> RetryPolicy(max_backoff_s=4.0).delay(1, retry_after=30.0) is None
        True
        """
        if attempt >= self.attempts:
            return None
        if retry_after is not None and retry_after > self.max_backoff_s:
            return None
        ceiling = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
        wait = ceiling / 2 + random.uniform(0.0, ceiling / 2)
        return max(wait, retry_after or 0.0)


def _transient(error: BaseException) -> bool:
    """A failed try that may pass on its own: no answer came back (connection refused or reset, a timeout)."""
    import httpx

    return isinstance(error, httpx.TransportError | TimeoutError | asyncio.TimeoutError)


@dataclass
class Outcome:
    """How the tries ended: the last answer, or the error of the last try when none came back; and how many tries."""

    response: httpx.Response | None
    error: BaseException | None
    attempts: int

    @property
    def retry_after(self) -> float | None:
        return None if self.response is None else parse_retry_after(self.response.headers.get("retry-after"))


def _judge(
    policy: RetryPolicy, attempt: int, response: httpx.Response | None, error: BaseException | None
) -> tuple[Outcome, float | None]:
    """(the outcome so far, seconds to wait before the next try or None to stop)."""
    outcome = Outcome(response, error, attempt)
    if response is None or response.status_code in policy.statuses:
        return outcome, policy.delay(attempt, outcome.retry_after)
    if response.status_code < 400 or outcome.retry_after is None:
        return outcome, None
    return outcome, policy.delay(attempt, outcome.retry_after)


def send(
    policy: RetryPolicy,
    attempt: Callable[[], httpx.Response],
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Call ``attempt`` until it answers with a status the policy does not retry, or the policy gives up."""
    tries = 0
    while True:
        tries += 1
        response, error = None, None
        try:
            response = attempt()
        except Exception as exc:
            if not _transient(exc):
                raise
            error = exc
        outcome, wait = _judge(policy, tries, response, error)
        if wait is None:
            return outcome
        sleep(wait)


async def send_async(policy: RetryPolicy, attempt: Callable[[], Awaitable[httpx.Response]]) -> Outcome:
    """``send`` for coroutines: the waits are ``asyncio.sleep``, so the event loop keeps serving other calls."""
    tries = 0
    while True:
        tries += 1
        response, error = None, None
        try:
            response = await attempt()
        except Exception as exc:
            if not _transient(exc):
                raise
            error = exc
        outcome, wait = _judge(policy, tries, response, error)
        if wait is None:
            return outcome
        await asyncio.sleep(wait)
