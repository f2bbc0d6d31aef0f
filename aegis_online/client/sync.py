"""``AegisClient``: the service's API from synchronous code (scripts, the replay), over one pooled ``httpx.Client``."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

from aegis_online.api_models import (
    FeedbackOutcome,
    FeedbackReceipt,
    Liveness,
    ModerationCreateRequest,
    ModerationCreateResponse,
    Readiness,
    TenantWeights,
)
from aegis_online.client import calls
from aegis_online.client.base import ClientSettings, ready_enough
from aegis_online.client.errors import ClientError
from aegis_online.client.retry import RetryPolicy, send
from aegis_online.schemas import Decision, FeedbackEvent, ModerationRequest

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")


class AegisClient(ClientSettings):
    """Calls to an aegis-online service at ``base_url`` (e.g. ``http://127.0.0.1:8000``), answered with the service's
    own models.

    Parameters
    ----------
    api_key
        Sent as ``Authorization: Bearer <key>``; the key decides the tenant (none: the open development mode).
    timeout
        Seconds (or an ``httpx.Timeout``) per try.
    retry
        Tries and waits on connection errors, 429 and 503 (``Retry-After`` honoured); ``RetryPolicy(attempts=1)``
        never retries.
    limits, transport, headers
        Passed to ``httpx.Client`` (pool size; an ASGI or mock transport in tests; extra headers on every call).

    Errors: ``APIError`` (the service refused: ``status``, ``reason``, ``message``, ``field``, ``retry_after``),
    ``APIConnectionError`` (no answer after the tries), ``APIResponseError`` (an answer the client cannot read).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 10.0,
        retry: RetryPolicy | None = None,
        limits: httpx.Limits | None = None,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        import httpx

        super().__init__(base_url, api_key, retry)
        options: dict[str, Any] = {"limits": limits} if limits is not None else {}
        self._http = httpx.Client(
            base_url=self.base_url, timeout=timeout, transport=transport, headers=dict(headers or {}), **options
        )

    def with_api_key(self, api_key: str | None) -> AegisClient:
        """The same client acting with another key (another tenant or role), sharing this one's connections."""
        return self._view(api_key)

    def _run(self, call: calls.Call[T]) -> T:
        def attempt() -> httpx.Response:
            return self._http.request(call.method, call.path, json=call.body, params=call.params, headers=self._auth)

        return calls.finish(call, send(self._policy(call), attempt), self.base_url)

    def moderate(self, request: ModerationRequest) -> Decision:
        """``POST /v1/moderate``: the decision on a conversation."""
        return self._run(calls.moderate(request))

    def moderations(
        self, input: str | Sequence[str] | ModerationCreateRequest, *, model: str | None = None
    ) -> ModerationCreateResponse:
        """``POST /v1/moderations`` (OpenAI-compatible); each result's ``aegis.request_id`` is what feedback labels."""
        return self._run(calls.moderations(input, model))

    def feedback(self, event: FeedbackEvent) -> FeedbackOutcome:
        """``POST /v1/feedback`` with one event: ``queued`` (the bus has it; the learner applies it later) or
        ``duplicate`` (queued before, applied once). A refused event raises ``APIError`` (404 ``unknown_request``,
        ...)."""
        return self._run(calls.feedback(event))

    def feedback_batch(self, events: Sequence[FeedbackEvent]) -> FeedbackReceipt:
        """``POST /v1/feedback`` with ``{"events": [...]}``: one outcome per event, refused ones included."""
        return self._run(calls.feedback_batch(events))

    def get_policy(self, tenant: str) -> calls.PolicyJSON:
        """The policy the tenant's requests use (``TenantPolicy`` as JSON)."""
        return self._run(calls.get_policy(tenant))

    def put_policy(self, tenant: str, policy: BaseModel | Mapping[str, Any]) -> calls.PolicyJSON:
        """Set the tenant's policy (admin keys); the service's validated policy comes back."""
        return self._run(calls.put_policy(tenant, policy))

    def weights(self, tenant: str, categories: Sequence[str] | None = None) -> TenantWeights:
        """The expert weights the tenant's requests use, per category (default: all of its policy's)."""
        return self._run(calls.weights(tenant, categories))

    def health(self) -> Liveness:
        return self._run(calls.health())

    def ready(self) -> Readiness:
        """Readiness (``ready``, ``degraded`` or ``not_ready``, with the checks behind it)."""
        return self._run(calls.ready())

    def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        return self._run(calls.metrics())

    def wait_ready(
        self,
        timeout_s: float = 60.0,
        *,
        poll_s: float = 0.25,
        accept_degraded: bool = False,
        check: Callable[[], None] | None = None,
    ) -> float:
        """Poll ``/readyz`` until the service is ready; the seconds it took. ``check`` runs before each poll and may
        raise to stop waiting (say, the service's process has exited); ``TimeoutError`` after ``timeout_s``."""
        started = time.monotonic()
        last = "no answer"
        while True:
            if check is not None:
                check()
            try:
                readiness = self.ready()
                if ready_enough(readiness, accept_degraded):
                    return time.monotonic() - started
                last = readiness.status
            except ClientError as error:  # a proxy that is up before the app answers in its own words
                last = str(error)
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{self.base_url} was not ready after {timeout_s:g} s (last: {last})")
            time.sleep(poll_s)

    def close(self) -> None:
        """Close the connections (a view from ``with_api_key`` leaves them to its owner)."""
        if self._owns_pool:
            self._http.close()

    def __enter__(self) -> AegisClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
