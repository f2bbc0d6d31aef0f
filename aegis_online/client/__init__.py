"""The project's client of its own HTTP API: typed, sync (``AegisClient``) and async (``AsyncAegisClient``).

Answers come back as the models the service itself answers with (``schemas.Decision``,
``api_models.FeedbackOutcome``, ``TenantWeights``, ``ModerationCreateResponse``...), errors as ``APIError`` with the
service's status, reason and message. Connection errors, timeouts, 429 and 503 are retried a bounded number of times
with jittered backoff, honouring ``Retry-After`` (``RetryPolicy``); retrying is safe because moderation requests
carry a request id (the client adds one) and feedback events an event id (the service applies each once).

Feedback is reported as the service says it: ``queued`` means the feedback bus has the event and the learner will
apply it later, not that it was applied; ``duplicate`` that it was queued before.

The client depends on nothing of the service (no Ray, no FastAPI): only ``schemas``, ``api_models`` and httpx
(``pip install 'aegis-online[http]'``).

>>> from aegis_online.schemas import Message, ModerationRequest
>>> with AegisClient("http://127.0.0.1:8000", api_key="...") as client:  # doctest: +SKIP
...     decision = client.moderate(ModerationRequest(messages=[Message(role="user", content="hi")]))
"""

from aegis_online.client.aio import AsyncAegisClient
from aegis_online.client.errors import APIConnectionError, APIError, APIResponseError, ClientError
from aegis_online.client.retry import RetryPolicy
from aegis_online.client.sync import AegisClient

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIResponseError",
    "AegisClient",
    "AsyncAegisClient",
    "ClientError",
    "RetryPolicy",
]
