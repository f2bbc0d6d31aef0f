"""A client of a running aegis-online service, for replaying traffic over HTTP: ``POST /v1/moderate`` and
``POST /v1/feedback``, with the bodies of ``schemas.ModerationRequest`` and ``schemas.FeedbackEvent`` (and, where the
service offers it, ``GET /v1/tenants/{tenant}/weights`` for the weights over time).

Transient failures (connection errors, timeouts, 429 and 5xx) are retried with exponential backoff, honouring
``Retry-After``; retrying is safe because every request carries its ``request_id`` and every feedback event its
``event_id`` (the service applies an event once). A refused moderation request (another 4xx) stops the replay with
the service's message; a refused feedback event is reported and counted, not fatal (its prediction may have expired).
Responses are read leniently: fields a newer service adds are ignored. Imports httpx lazily.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from aegis_online.schemas import (
    CategoryDecision,
    Decision,
    ExpertContribution,
    FeedbackEvent,
    FeedbackResult,
    MissingExpert,
    ModerationRequest,
)
from aegis_online.simulate.replay import FeedbackRejectedError

MODERATE_PATH = "/v1/moderate"
FEEDBACK_PATH = "/v1/feedback"
WEIGHTS_PATH = "/v1/tenants/{tenant}/weights"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class ServiceError(RuntimeError):
    """The service refused a request or stayed unreachable after the retries."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def _known(model: type, data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k in model.model_fields}  # type: ignore[attr-defined]


def parse_decision(data: Mapping[str, Any]) -> Decision:
    """A ``Decision`` from a service's JSON, ignoring fields this client does not know."""
    body = _known(Decision, data)
    body["categories"] = [_known(CategoryDecision, c) for c in data.get("categories", [])]
    body["experts"] = [_known(ExpertContribution, e) for e in data.get("experts", [])]
    body["missing_experts"] = [_known(MissingExpert, m) for m in data.get("missing_experts", [])]
    return Decision.model_validate(body)


def _detail(response: Any) -> tuple[str, str]:
    """(reason, message) of an error answer: ``{"error": {"code", "type", "message"}}`` or ``{"reason", "detail"}``."""
    try:
        body = response.json()
    except ValueError:
        return f"http_{response.status_code}", response.text[:300]
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        reason = str(error.get("code") or error.get("type") or f"http_{response.status_code}")
        return reason, str(error.get("message", ""))[:300]
    if isinstance(body, dict):
        reason = str(body.get("reason") or body.get("error") or f"http_{response.status_code}")
        detail = body.get("detail") or body.get("message") or ""
        return reason, detail if isinstance(detail, str) else str(detail)[:300]
    return f"http_{response.status_code}", str(body)[:300]


def _feedback_result(event: FeedbackEvent, body: Any) -> FeedbackResult:
    """A ``FeedbackResult`` from either answer a service may give: the result itself (applied synchronously) or a
    receipt of events queued for its feedback worker (``{"accepted", "rejected", "results": [{"status", ...}]}``)."""
    if isinstance(body, dict) and isinstance(body.get("results"), list) and body["results"]:
        outcome = body["results"][0]
        if outcome.get("status") == "rejected":
            error = outcome.get("error") or {}
            raise FeedbackRejectedError(
                str(error.get("code") or error.get("type") or "rejected"), str(error.get("message", ""))
            )
        applied = outcome.get("status") != "duplicate"  # queued now: the worker applies it once
        return FeedbackResult(
            request_id=event.request_id, event_id=event.idempotency_key, applied=applied, categories={}
        )
    try:
        return FeedbackResult.model_validate(_known(FeedbackResult, body))
    except (ValueError, TypeError, AttributeError, ValidationError):
        # Accepted without a result body: the service applies it later.
        return FeedbackResult(request_id=event.request_id, event_id=event.idempotency_key, applied=True, categories={})


class ServiceClient:
    """Moderation and feedback calls to ``base_url`` (e.g. ``http://127.0.0.1:8000``).

    Parameters
    ----------
    base_url
        The service's root URL.
    timeout
        Seconds per HTTP call.
    retries
        Further attempts after a transient failure.
    backoff
        First wait in seconds; doubled at each retry (``Retry-After`` wins when the service sends it).
    headers
        Extra headers on every call.
    api_key
        Sent as ``Authorization: Bearer <key>``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
        headers: Mapping[str, str] | None = None,
        api_key: str | None = None,
        transport: Any = None,
    ) -> None:
        import httpx

        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self._httpx = httpx
        all_headers = dict(headers or {})
        if api_key:
            all_headers["Authorization"] = f"Bearer {api_key}"
        self._client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=all_headers, transport=transport)
        self.calls = 0
        self.retried = 0
        self.learner_name: str | None = None
        self._weights_supported = True

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        wait = self.backoff
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                self.calls += 1
                response = self._client.post(path, json=body)
            except self._httpx.TransportError as error:
                if last:
                    raise ServiceError(
                        f"{self.base_url}{path}: unreachable ({type(error).__name__}: {error})"
                    ) from None
                self.retried += 1
                time.sleep(wait)
                wait *= 2
                continue
            if response.status_code in RETRY_STATUS and not last:
                self.retried += 1
                retry_after = response.headers.get("retry-after")
                time.sleep(float(retry_after) if retry_after and retry_after.isdigit() else wait)
                wait *= 2
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def moderate(self, request: ModerationRequest) -> Decision:
        response = self._post(MODERATE_PATH, request.model_dump(mode="json", exclude_none=True))
        if response.status_code != 200:
            reason, detail = _detail(response)
            raise ServiceError(
                f"POST {MODERATE_PATH} answered {response.status_code} ({reason}): {detail}", response.status_code
            )
        return parse_decision(response.json())

    def feedback(self, event: FeedbackEvent) -> FeedbackResult:
        # Whose weights an event trains is the service's call, from this client's key: never sent.
        response = self._post(FEEDBACK_PATH, event.model_dump(mode="json", exclude_none=True, exclude={"trusted"}))
        if response.status_code in (200, 201, 202):
            try:
                body = response.json()
            except ValueError:
                body = None
            return _feedback_result(event, body)
        if 400 <= response.status_code < 500:
            raise FeedbackRejectedError(*_detail(response))
        reason, detail = _detail(response)
        raise ServiceError(f"POST {FEEDBACK_PATH} answered {response.status_code} ({reason}): {detail}")

    def weights(self, tenant: str, categories: Sequence[str]) -> dict[str, dict[str, float]] | None:
        """The weights the tenant's requests use (``GET /v1/tenants/{tenant}/weights``), or None when the service
        does not offer them (the replay then reads the weights from the decisions). Never fails a replay."""
        if not self._weights_supported:
            return None
        try:
            response = self._client.get(WEIGHTS_PATH.format(tenant=tenant), params={"category": list(categories)})
        except self._httpx.HTTPError:
            return None
        if response.status_code in (404, 405, 501):
            self._weights_supported = False
            return None
        if response.status_code != 200:
            return None
        try:
            body = response.json()
            self.learner_name = body.get("learner", self.learner_name)
            weights = {c: dict(v["weights"]) for c, v in body["categories"].items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return weights if all(c in weights for c in categories) else None

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
