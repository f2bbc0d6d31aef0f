"""``POST /v1/moderate``: a conversation in, the engine's decision out (scores, thresholds, actions, contributions,
missing experts, request id). The engine defines the decision; this class scopes the request to the caller's tenant,
holds it to the configured input size (``limits.max_input_chars``, per message, as ``/v1/moderations`` per input)
and records what happened (metrics, expert health).
"""

from __future__ import annotations

from aegis_online.engine import Engine
from aegis_online.schemas import MAX_MESSAGE_CHARS, Decision, ModerationRequest
from aegis_online.serve.access import tenant_for
from aegis_online.serve.auth import Principal
from aegis_online.serve.errors import ApiError
from aegis_online.serve.health import ExpertHealth
from aegis_online.serve.metrics import ServiceMetrics
from aegis_online.state import StoreUnavailableError


class DecisionRecorder:
    """What every decision updates, whichever endpoint asked for it."""

    def __init__(self, metrics: ServiceMetrics, experts: ExpertHealth) -> None:
        self.metrics = metrics
        self.experts = experts

    def __call__(self, decision: Decision) -> None:
        self.metrics.observe_decision(decision)
        self.experts.record(decision)


class ModerateServing:
    def __init__(self, engine: Engine, record: DecisionRecorder, max_input_chars: int = MAX_MESSAGE_CHARS) -> None:
        self.engine = engine
        self.record = record
        self.max_input_chars = max_input_chars

    async def __call__(
        self, request: ModerationRequest, principal: Principal, *, deadline_s: float | None = None
    ) -> Decision:
        """``deadline_s``: what is left of the request's budget for the experts (default: the engine's)."""
        self._check_size(request)
        explicit = request.tenant if "tenant" in request.model_fields_set else None
        tenant = tenant_for(principal, explicit)
        if request.request_id is not None:
            self._check_request_id(request.request_id, tenant, request.input_digest)
        if tenant != request.tenant:
            request = request.model_copy(update={"tenant": tenant})
        decision = await self.engine.moderate(request, deadline_s=deadline_s)
        self.record(decision)
        return decision

    def _check_size(self, request: ModerationRequest) -> None:
        """A message over ``limits.max_input_chars`` is refused like one over the schema's own cap (422, naming the
        message), before it costs the experts anything: the operator's limit, not only the built-in one, holds."""
        for i, message in enumerate(request.messages):
            if len(message.content) > self.max_input_chars:
                raise ApiError(
                    422,
                    f"messages.{i}.content: at most {self.max_input_chars} characters per message "
                    "(limits.max_input_chars)",
                    field=f"messages.{i}.content",
                    code="input_too_long",
                )

    def _check_request_id(self, request_id: str, tenant: str, digest: str) -> None:
        """A caller-chosen request id may be reused by its own tenant for the same input (a retry), never for
        another input nor by another tenant: either would overwrite the logged prediction that feedback joins."""
        try:
            record = self.engine.prediction_log.get(request_id)
        except StoreUnavailableError:
            return  # the write will not land either; nothing to protect
        if record is None:
            return
        if record.tenant != tenant:
            raise ApiError(
                409,
                "request_id: already used; choose another (or omit it)",
                field="request_id",
                type="conflict",
                code="request_id_taken",
            )
        if record.input_digest and record.input_digest != digest:
            raise ApiError(
                409,
                "request_id: already used for another input; a retry must send the same messages, check and "
                "categories (or use a new request_id)",
                field="request_id",
                type="conflict",
                code="request_id_reused",
            )
