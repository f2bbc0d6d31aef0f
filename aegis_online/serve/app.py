"""The FastAPI app: routes, middleware and start-up wired over a ``ModerationService``. Thin by design: each route
authenticates, hands its body to the serving class of its endpoint and returns what it says.

``create_app(service)`` runs anywhere: under Ray Serve (the ingress deployment returns it from
``__serve_build_asgi_app__``), under uvicorn, or in tests through Starlette's ``TestClient`` with no Ray at all.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline

from aegis_online.api_models.native import (
    ErrorResponse,
    FeedbackBody,
    FeedbackReceipt,
    Liveness,
    Readiness,
    TenantWeights,
)
from aegis_online.api_models.openai_protocol import (
    ModerationCreateRequest,
    ModerationCreateResponse,
    OpenAIErrorResponse,
)
from aegis_online.api_models.perspective_protocol import (
    AnalyzeCommentRequest,
    AnalyzeCommentResponse,
    PerspectiveErrorResponse,
)
from aegis_online.policy import TenantPolicy
from aegis_online.schemas import Decision, ModerationRequest, TenantId
from aegis_online.serve.access import principal_dependency, query_key_principal_dependency, tenant_for
from aegis_online.serve.admission import AdmissionControl, ArrivalStamp, arrival
from aegis_online.serve.auth import Principal
from aegis_online.serve.chat_proxy import ChatProxyServing
from aegis_online.serve.errors import ApiError, install_error_handlers
from aegis_online.serve.feedback import FeedbackServing
from aegis_online.serve.middleware import BodySizeLimit, RequestTiming, RequireJson
from aegis_online.serve.moderate import DecisionRecorder, ModerateServing
from aegis_online.serve.openai_moderations import OpenAIModerationServing
from aegis_online.serve.perspective import PerspectiveServing
from aegis_online.serve.service import ModerationService
from aegis_online.serve.tenants import TenantServing

#: The ``{tenant}`` of the tenant routes: a ``TenantId`` (pattern, and ``global`` refused with a 422 naming it).
TenantPath = Annotated[TenantId, Path(description="Tenant id.")]

DESCRIPTION = """\
An ensemble of content-safety experts whose weights are learned online per tenant and category; each tenant's
policy turns the ensemble's risk into allow, flag or block.

Authenticate with `Authorization: Bearer <API key>`: the key decides the tenant a call acts for.
`POST /v1/moderations` is compatible with OpenAI's moderation API (point the `openai` SDK's `base_url` here).
`POST /v1alpha1/comments:analyze` is compatible with Google's Perspective API (the key also as `?key=` there).
"""


def _errors(*codes: int, openai: bool = False, perspective: bool = False) -> dict[int | str, dict[str, Any]]:
    model = OpenAIErrorResponse if openai else PerspectiveErrorResponse if perspective else ErrorResponse
    return {code: {"model": model} for code in codes}


def create_app(service: ModerationService) -> FastAPI:
    config = service.config
    engine = service.engine
    record = DecisionRecorder(service.metrics, service.health.experts)
    moderate = ModerateServing(engine, record, config.limits.max_input_chars)
    admission = AdmissionControl(config.limits.admission, config.limits.deadline_ms / 1000.0, service.metrics)
    moderations = OpenAIModerationServing(engine, record, config.limits, config.server.model_name)
    feedback = FeedbackServing(
        engine,
        service.publisher,
        service.bus_health,
        service.metrics,
        config.limits,
        service.ledger,
        gate=service.gate,
        quotas=service.quotas,
    )
    perspective = PerspectiveServing(engine, record, config.limits)
    chat = ChatProxyServing(engine, record, config.chat)
    tenants = TenantServing(engine, engine.learner.name)
    principal = principal_dependency(service.keys)
    perspective_principal = query_key_principal_dependency(service.keys)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await chat.aclose()
            await asyncio.to_thread(service.stop)

    # Swagger UI and ReDoc from files shipped in fastapi-offline: FastAPI's defaults load them from a CDN, which
    # leaves /docs blank on a machine without Internet access. server.docs: false turns both pages off.
    docs = {} if config.server.docs else {"docs_url": None, "redoc_url": None}
    app = FastAPIOffline(
        **docs,
        title="aegis-online",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_tags=[
            {"name": "moderation", "description": "Decisions on conversations."},
            {"name": "feedback", "description": "Labels for past decisions: how the weights learn."},
            {"name": "tenants", "description": "Policies and learned weights per tenant."},
            {"name": "operations", "description": "Health, readiness and metrics."},
        ],
    )
    app.state.service = service
    app.state.admission = admission
    install_error_handlers(app)
    app.add_middleware(RequireJson)
    app.add_middleware(BodySizeLimit, max_bytes=config.limits.max_body_bytes)
    app.add_middleware(RequestTiming, metrics=service.metrics)
    app.add_middleware(ArrivalStamp)  # outermost: the deadline runs from here

    @app.post(
        "/v1/moderate",
        response_model=Decision,
        tags=["moderation"],
        summary="Moderate a conversation (prompt or response check)",
        responses=_errors(400, 401, 403, 409, 413, 415, 422, 429, 503),
    )
    async def moderate_route(
        body: ModerationRequest, http: Request, caller: Principal = Depends(principal)
    ) -> Decision:
        tenant = tenant_for(caller, body.tenant if "tenant" in body.model_fields_set else None)
        await asyncio.to_thread(service.quotas.check, caller, tenant, "moderate", 1)
        async with admission.slot(arrival(http.scope)) as budget_s:
            return await moderate(body, caller, deadline_s=budget_s)

    @app.post(
        "/v1/moderations",
        response_model=ModerationCreateResponse,
        tags=["moderation"],
        summary="OpenAI-compatible moderation",
        # 422 only to replace FastAPI's default: it answers 400
        responses=_errors(400, 401, 413, 415, 422, 429, 503, openai=True),
    )
    async def openai_moderations_route(
        body: ModerationCreateRequest, http: Request, response: Response, caller: Principal = Depends(principal)
    ) -> ModerationCreateResponse:
        inputs = len(body.input) if isinstance(body.input, list) and all(isinstance(v, str) for v in body.input) else 1
        await asyncio.to_thread(service.quotas.check, caller, caller.home_tenant, "moderate", inputs)
        async with admission.slot(arrival(http.scope), inputs) as budget_s:
            result, request_ids = await moderations(body, caller, deadline_s=budget_s)
        response.headers["X-Aegis-Request-Ids"] = ",".join(request_ids)
        degraded = any(r.aegis is not None and r.aegis.degraded for r in result.results)
        response.headers["X-Aegis-Degraded"] = "true" if degraded else "false"
        return result

    @app.post(
        "/v1/chat/completions",
        tags=["moderation"],
        summary="Guarded OpenAI-compatible chat completions (a proxy to the configured upstream LLM)",
        responses=_errors(400, 401, 404, 413, 415, 429, 502, 503, 504, openai=True),
    )
    async def chat_route(
        http: Request,
        body: dict[str, Any] = Body(..., description="An OpenAI chat completion request, forwarded upstream."),
        caller: Principal = Depends(principal),
    ) -> Response:
        await asyncio.to_thread(service.quotas.check, caller, caller.home_tenant, "moderate", 1)
        async with admission.slot(arrival(http.scope)) as budget_s:
            return await chat(body, caller.home_tenant, deadline_s=budget_s)

    @app.post(
        "/v1alpha1/comments:analyze",
        response_model=AnalyzeCommentResponse,
        response_model_exclude_none=True,
        tags=["moderation"],
        summary="Perspective API-compatible comment analysis",
        responses=_errors(400, 401, 413, 415, 429, 503, perspective=True),
    )
    async def perspective_route(
        body: AnalyzeCommentRequest,
        http: Request,
        response: Response,
        caller: Principal = Depends(perspective_principal),
    ) -> AnalyzeCommentResponse:
        checks = perspective.checks(body)
        await asyncio.to_thread(service.quotas.check, caller, caller.home_tenant, "moderate", checks)
        async with admission.slot(arrival(http.scope), checks) as budget_s:
            result = await perspective(body, caller, deadline_s=budget_s)
        if result.aegis.request_id is not None:
            response.headers["X-Aegis-Request-Ids"] = result.aegis.request_id
        response.headers["X-Aegis-Degraded"] = "true" if result.aegis.degraded else "false"
        return result

    @app.post(
        "/v1/feedback",
        response_model=FeedbackReceipt,
        status_code=202,
        tags=["feedback"],
        summary="Send feedback: one event, or a batch under 'events'",
        responses=_errors(400, 401, 403, 404, 409, 413, 415, 422, 429, 503),
    )
    async def feedback_route(body: FeedbackBody, caller: Principal = Depends(principal)) -> FeedbackReceipt:
        return await feedback(body, caller)

    @app.get(
        "/v1/tenants/{tenant}/policy",
        response_model=TenantPolicy,
        tags=["tenants"],
        summary="A tenant's policy (its own, else the default tenant's)",
        responses=_errors(401, 403, 422),
    )
    def get_policy_route(tenant: TenantPath, caller: Principal = Depends(principal)) -> TenantPolicy:
        return tenants.get_policy(tenant, caller)

    @app.put(
        "/v1/tenants/{tenant}/policy",
        response_model=TenantPolicy,
        tags=["tenants"],
        summary="Set a tenant's policy (admin)",
        responses=_errors(400, 401, 403, 413, 415, 422, 503),
    )
    async def put_policy_route(
        body: TenantPolicy, tenant: TenantPath, caller: Principal = Depends(principal)
    ) -> TenantPolicy:
        return await tenants.put_policy(tenant, body, caller)

    @app.get(
        "/v1/tenants/{tenant}/weights",
        response_model=TenantWeights,
        tags=["tenants"],
        summary="The expert weights a tenant's requests use, per category",
        responses=_errors(401, 403, 422),
    )
    def weights_route(
        tenant: TenantPath,
        category: list[str] | None = Query(
            default=None, max_length=64, description="Category ids or slugs (repeat); default: all of the policy's."
        ),
        caller: Principal = Depends(principal),
    ) -> TenantWeights:
        return tenants.weights(tenant, category, caller)

    @app.get(
        "/v1/weights/global",
        response_model=TenantWeights,
        tags=["tenants"],
        summary="The global expert weights every tenant starts from, per category (operator keys)",
        responses=_errors(401, 403, 422),
    )
    def global_weights_route(
        category: list[str] | None = Query(
            default=None, max_length=64, description="Category ids or slugs (repeat); default: all of the policy's."
        ),
        caller: Principal = Depends(principal),
    ) -> TenantWeights:
        return tenants.global_weights(category, caller)

    @app.get("/healthz", response_model=Liveness, tags=["operations"], summary="Liveness")
    def healthz() -> Liveness:
        return Liveness()

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["operations"],
        summary="Readiness: ready, degraded (still serving; says why) or not_ready",
        responses={503: {"model": Readiness}, **_errors(422)},
    )
    def readyz(strict: bool = Query(default=False, description="Answer 503 when degraded too.")) -> JSONResponse:
        readiness = service.health.readiness()
        failing = readiness.status == "not_ready" or (strict and readiness.status == "degraded")
        return JSONResponse(readiness.model_dump(mode="json"), status_code=503 if failing else 200)

    async def admin_only(caller: Principal = Depends(principal)) -> None:
        if caller.role != "admin":
            raise ApiError(403, "/metrics needs an admin key (auth.protect_metrics)", code="admin_required")

    metrics_auth = [Depends(admin_only)] if config.auth.protect_metrics else []

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
        dependencies=metrics_auth,
    )
    async def metrics_route() -> Response:
        await service.metrics.refresh()
        body, content_type = service.metrics.render()
        return Response(content=body, media_type=content_type)

    return app
