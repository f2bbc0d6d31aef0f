"""The API's calls, once for both clients: what each sends, which statuses are its success, and how its answer is
read into the service's own models. The sync and async clients only send them (``AegisClient``,
``AsyncAegisClient``) and hand the outcome to ``finish``.

Answers are read with ``extra="ignore"``: a field a newer service adds does not break an older client. Anything else
that does not fit the model is an ``APIResponseError``, never a made-up success.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from urllib.parse import quote

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
from aegis_online.client.errors import APIConnectionError, APIError, APIResponseError, api_error
from aegis_online.client.retry import Outcome
from aegis_online.schemas import Decision, FeedbackEvent, ModerationRequest, new_request_id

if TYPE_CHECKING:
    import httpx

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

#: A policy as JSON: ``aegis_online.policy.TenantPolicy`` sits above the client's layer (``TenantPolicy.model_validate``
#: turns it into the model; ``put_policy`` takes the model or its JSON).
PolicyJSON = dict[str, Any]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP call: method, path, body and query, its success statuses, how its answer is read, and whether it is
    safe to retry (every call here is: request ids and event ids make the writes idempotent)."""

    method: str
    path: str
    read: Callable[[httpx.Response], T]
    body: Any = None
    params: Sequence[tuple[str, str]] | None = None
    ok: frozenset[int] = frozenset({200})
    retry: bool = True

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


def finish(call: Call[T], outcome: Outcome, base_url: str) -> T:
    """The call's result from how its tries ended, or the error that says why there is none."""
    response = outcome.response
    if response is None:
        error = outcome.error
        why = f"{type(error).__name__}: {error}"
        raise APIConnectionError(
            f"{call.label}: {base_url} unreachable after {outcome.attempts} attempt(s) ({why})",
            attempts=outcome.attempts,
        ) from error
    if response.status_code not in call.ok:
        raise api_error(response, call.label, outcome.attempts, outcome.retry_after)
    try:
        return call.read(response)
    except ValueError as error:  # not JSON, or a pydantic ValidationError (a ValueError)
        raise APIResponseError(
            f"{call.label} answered {response.status_code} with a body the client cannot read: {error}",
            status=response.status_code,
        ) from None


def lenient(model: type[M], data: Any) -> M:
    """``data`` as ``model``, ignoring fields this client does not know (the service's models forbid them)."""
    return model.model_validate(data, extra="ignore")


def _reader(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: lenient(model, response.json())


def _json_object(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    return body


def _one_outcome(response: httpx.Response) -> FeedbackOutcome:
    receipt = lenient(FeedbackReceipt, response.json())
    if len(receipt.results) != 1:
        raise ValueError(f"a receipt of one event has {len(receipt.results)} results")
    (outcome,) = receipt.results
    if outcome.status == "rejected":  # the service answers 4xx for a refused single event; read it the same way
        error = outcome.error
        raise APIError(
            response.status_code,
            error.message if error else "rejected",
            type=error.type if error else "rejected",
            code=error.code if error else None,
            field=error.field if error else None,
            request="POST /v1/feedback",
        )
    return outcome


def _event_body(event: FeedbackEvent) -> dict[str, Any]:
    # Only what the caller set: the service stamps the time, and the tenant and whether the event trains the global
    # weights come from the key (a client key asking for ``trusted`` is refused).
    return event.model_dump(mode="json", exclude_unset=True)


def moderate(request: ModerationRequest) -> Call[Decision]:
    """``POST /v1/moderate``. A request without ``request_id`` gets one here, so that a retry after a lost answer is
    the same request to the service (logged once), not a second one."""
    if request.request_id is None:
        request = request.model_copy(update={"request_id": new_request_id()})
    body = request.model_dump(mode="json", exclude_unset=True)
    return Call("POST", "/v1/moderate", _reader(Decision), body=body)


def moderations(
    input: str | Sequence[str] | ModerationCreateRequest, model: str | None = None
) -> Call[ModerationCreateResponse]:
    """``POST /v1/moderations``: a string, a list of strings (one result each), or a whole request."""
    request = (
        input
        if isinstance(input, ModerationCreateRequest)
        else ModerationCreateRequest(input=input if isinstance(input, str) else list(input), model=model)
    )
    body = request.model_dump(mode="json", by_alias=True, exclude_none=True)
    return Call("POST", "/v1/moderations", _reader(ModerationCreateResponse), body=body)


def feedback(event: FeedbackEvent) -> Call[FeedbackOutcome]:
    return Call("POST", "/v1/feedback", _one_outcome, body=_event_body(event), ok=frozenset({202}))


def feedback_batch(events: Sequence[FeedbackEvent]) -> Call[FeedbackReceipt]:
    body = {"events": [_event_body(e) for e in events]}
    return Call("POST", "/v1/feedback", _reader(FeedbackReceipt), body=body, ok=frozenset({202}))


def get_policy(tenant: str) -> Call[PolicyJSON]:
    return Call("GET", f"/v1/tenants/{quote(tenant, safe='')}/policy", _json_object)


def put_policy(tenant: str, policy: BaseModel | Mapping[str, Any]) -> Call[PolicyJSON]:
    body = policy.model_dump(mode="json", exclude_unset=True) if isinstance(policy, BaseModel) else dict(policy)
    return Call("PUT", f"/v1/tenants/{quote(tenant, safe='')}/policy", _json_object, body=body)


def weights(tenant: str, categories: Sequence[str] | None = None) -> Call[TenantWeights]:
    params = [("category", c) for c in categories or ()]
    return Call("GET", f"/v1/tenants/{quote(tenant, safe='')}/weights", _reader(TenantWeights), params=params or None)


def health() -> Call[Liveness]:
    return Call("GET", "/healthz", _reader(Liveness))


def ready() -> Call[Readiness]:
    """``/readyz``: 503 means not ready, which is an answer, not a failure; and it is never retried (polled)."""
    return Call("GET", "/readyz", _reader(Readiness), ok=frozenset({200, 503}), retry=False)


def metrics() -> Call[str]:
    return Call("GET", "/metrics", lambda response: response.text)
