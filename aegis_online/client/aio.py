"""``AsyncAegisClient``: ``AegisClient`` for asyncio code (the demo, the benchmarks), over one pooled
``httpx.AsyncClient``; waits between tries are ``asyncio.sleep``, so other calls go on meanwhile."""

from __future__ import annotations

import asyncio
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
from aegis_online.client.retry import RetryPolicy, send_async
from aegis_online.schemas import Decision, FeedbackEvent, ModerationRequest

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")


class AsyncAegisClient(ClientSettings):
    """``AegisClient``'s calls as coroutines; same parameters, models and errors."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 10.0,
        retry: RetryPolicy | None = None,
        limits: httpx.Limits | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        import httpx

        super().__init__(base_url, api_key, retry)
        options: dict[str, Any] = {"limits": limits} if limits is not None else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout, transport=transport, headers=dict(headers or {}), **options
        )

    def with_api_key(self, api_key: str | None) -> AsyncAegisClient:
        """The same client acting with another key (another tenant or role), sharing this one's connections."""
        return self._view(api_key)

    async def _run(self, call: calls.Call[T]) -> T:
        async def attempt() -> httpx.Response:
            return await self._http.request(
                call.method, call.path, json=call.body, params=call.params, headers=self._auth
            )

        return calls.finish(call, await send_async(self._policy(call), attempt), self.base_url)

    async def moderate(self, request: ModerationRequest) -> Decision:
        """``POST /v1/moderate``: the decision on a conversation."""
        return await self._run(calls.moderate(request))

    async def moderations(
        self, input: str | Sequence[str] | ModerationCreateRequest, *, model: str | None = None
    ) -> ModerationCreateResponse:
        """``POST /v1/moderations`` (OpenAI-compatible); each result's ``aegis.request_id`` is what feedback labels."""
        return await self._run(calls.moderations(input, model))

    async def feedback(self, event: FeedbackEvent) -> FeedbackOutcome:
        """``POST /v1/feedback`` with one event: ``queued`` (the bus has it; the learner applies it later) or
        ``duplicate`` (queued before, applied once). A refused event raises ``APIError`` (404 ``unknown_request``,
        ...)."""
        return await self._run(calls.feedback(event))

    async def feedback_batch(self, events: Sequence[FeedbackEvent]) -> FeedbackReceipt:
        """``POST /v1/feedback`` with ``{"events": [...]}``: one outcome per event, refused ones included."""
        return await self._run(calls.feedback_batch(events))

    async def get_policy(self, tenant: str) -> calls.PolicyJSON:
        """The policy the tenant's requests use (``TenantPolicy`` as JSON)."""
        return await self._run(calls.get_policy(tenant))

    async def put_policy(self, tenant: str, policy: BaseModel | Mapping[str, Any]) -> calls.PolicyJSON:
        """Set the tenant's policy (admin keys); the service's validated policy comes back."""
        return await self._run(calls.put_policy(tenant, policy))

    async def weights(self, tenant: str, categories: Sequence[str] | None = None) -> TenantWeights:
        """The expert weights the tenant's requests use, per category (default: all of its policy's)."""
        return await self._run(calls.weights(tenant, categories))

    async def health(self) -> Liveness:
        return await self._run(calls.health())

    async def ready(self) -> Readiness:
        """Readiness (``ready``, ``degraded`` or ``not_ready``, with the checks behind it)."""
        return await self._run(calls.ready())

    async def metrics(self) -> str:
        """The Prometheus text of ``/metrics``."""
        return await self._run(calls.metrics())

    async def wait_ready(
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
                readiness = await self.ready()
                if ready_enough(readiness, accept_degraded):
                    return time.monotonic() - started
                last = readiness.status
            except ClientError as error:  # a proxy that is up before the app answers in its own words
                last = str(error)
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"{self.base_url} was not ready after {timeout_s:g} s (last: {last})")
            await asyncio.sleep(poll_s)

    async def aclose(self) -> None:
        """Close the connections (a view from ``with_api_key`` leaves them to its owner)."""
        if self._owns_pool:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncAegisClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
