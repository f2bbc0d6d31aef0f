"""The replay's view of a running service: ``aegis_online.client.AegisClient`` behind the replay's backend interface
(``replay.ModerationBackend``), so that a replay over HTTP drives the service exactly as one in process drives the
engine.

What the service says is passed on as it said it: feedback comes back ``queued`` (its learner applies it later) or
``duplicate``, never "applied"; a refused event (4xx) is counted by its reason, not fatal (its prediction may have
expired); anything else the client raises stops the replay with the service's message.
"""

from __future__ import annotations

from collections.abc import Sequence

from aegis_online.api_models import FeedbackOutcome
from aegis_online.client import AegisClient, APIError, ClientError
from aegis_online.schemas import Decision, FeedbackEvent, ModerationRequest
from aegis_online.simulate.replay import FeedbackRejectedError

#: Answers of a service that does not offer the weights endpoint.
_NO_WEIGHTS = frozenset({404, 405, 501})


class ServiceBackend:
    """``moderate``, ``feedback`` and ``weights`` of the replay through ``client``; closes it with ``close``."""

    def __init__(self, client: AegisClient) -> None:
        self.client = client
        #: the service's learner, as its weights endpoint names it
        self.learner_name: str | None = None
        self._weights_supported = True

    def moderate(self, request: ModerationRequest) -> Decision:
        return self.client.moderate(request)

    def feedback(self, event: FeedbackEvent) -> FeedbackOutcome:
        # Whose weights an event trains is the service's call, from the replay's key: ``trusted`` is never sent.
        sent = FeedbackEvent.model_validate(event.model_dump(exclude={"trusted"}, exclude_unset=True))
        try:
            return self.client.feedback(sent)
        except APIError as error:
            if 400 <= error.status < 500 and error.status != 429:
                raise FeedbackRejectedError(error.reason, error.message) from None
            raise

    def weights(self, tenant: str, categories: Sequence[str]) -> dict[str, dict[str, float]] | None:
        """The weights the tenant's requests use (every expert of the service; 0 for one that does not score a
        category), or None when the service does not offer them or the call failed: the replay then reads the
        weights from the decisions. A missed snapshot never fails a replay."""
        if not self._weights_supported:
            return None
        try:
            body = self.client.weights(tenant, categories)
        except APIError as error:
            self._weights_supported = error.status not in _NO_WEIGHTS
            return None
        except ClientError:
            return None
        self.learner_name = body.learner
        if any(c not in body.categories for c in categories):
            return None
        return {c: {e: body.categories[c].weights.get(e, 0.0) for e in body.experts} for c in categories}

    def close(self) -> None:
        self.client.close()
