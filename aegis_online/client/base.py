"""What the sync and async clients share besides the calls: the root URL, the key, the retry policy, and which
object owns the connection pool (a view made by ``with_api_key`` acts with another key over the same pool)."""

from __future__ import annotations

import copy
from typing import Any

from aegis_online.api_models import Readiness
from aegis_online.client import calls
from aegis_online.client.retry import RetryPolicy

#: ``/readyz`` is polled, never retried inside one poll.
ONCE = RetryPolicy(attempts=1)


class ClientSettings:
    """What both clients share: the root URL, the key, the retry policy, and whether this object owns the pool."""

    def __init__(self, base_url: str, api_key: str | None, retry: RetryPolicy | None) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._owns_pool = True

    def _view(self, api_key: str | None) -> Any:
        view = copy.copy(self)
        view._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        view._owns_pool = False
        return view

    def _policy(self, call: calls.Call[Any]) -> RetryPolicy:
        return self.retry if call.retry else ONCE


def ready_enough(readiness: Readiness, accept_degraded: bool) -> bool:
    return readiness.status == "ready" or (accept_degraded and readiness.status == "degraded")
