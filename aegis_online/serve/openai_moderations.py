"""``POST /v1/moderations``: OpenAI's moderation API over the ensemble (protocol <-> engine, the engine untouched).

Each input becomes a prompt check of the caller's tenant over the canonical categories that OpenAI's labels map to
(``taxonomy.OPENAI_OMNI``), decided by the tenant's policy like any other request. Back on the wire, a label's score
is the highest score of the canonical categories it relates to, and it is flagged when any of them is: the same
recall-oriented projection the taxonomy declares. ``flagged`` is the decision's (so a tenant that fails closed gets
``flagged: true`` when no expert answered). The request ids, which feedback refers to, are in the
``X-Aegis-Request-Ids`` header; ``id`` is ``modr-`` + the first of them.
"""

from __future__ import annotations

import asyncio

from aegis_online.api_models.openai_protocol import (
    OPENAI_CATEGORIES,
    AegisResultInfo,
    Categories,
    CategoryAppliedInputTypes,
    CategoryScores,
    Moderation,
    ModerationCreateRequest,
    ModerationCreateResponse,
    ModerationImageURLInput,
)
from aegis_online.config import LimitsSection
from aegis_online.engine import Engine
from aegis_online.schemas import Decision, Message, ModerationRequest
from aegis_online.serve.auth import Principal
from aegis_online.serve.errors import ApiError
from aegis_online.serve.moderate import DecisionRecorder
from aegis_online.taxonomy import CANONICAL_IDS, OPENAI_OMNI

#: Canonical categories related to OpenAI's labels, in canonical order: what an OpenAI-style call evaluates.
OPENAI_CANONICAL: tuple[str, ...] = tuple(
    c for c in CANONICAL_IDS if any(c in OPENAI_OMNI.to_canonical[label] for label in OPENAI_CATEGORIES)
)
_TEXT_ONLY = CategoryAppliedInputTypes.model_validate({label: ["text"] for label in OPENAI_CATEGORIES})


class OpenAIModerationServing:
    def __init__(self, engine: Engine, record: DecisionRecorder, limits: LimitsSection, model_name: str) -> None:
        self.engine = engine
        self.record = record
        self.limits = limits
        self.model_name = model_name

    async def __call__(
        self, body: ModerationCreateRequest, principal: Principal, *, deadline_s: float | None = None
    ) -> tuple[ModerationCreateResponse, list[str]]:
        """Every input in parallel; ``deadline_s``: what is left of the call's budget for the experts."""
        texts = self.texts(body)
        tenant = principal.home_tenant
        requests = [
            ModerationRequest(
                messages=[Message(role="user", content=text)], tenant=tenant, categories=list(OPENAI_CANONICAL)
            )
            for text in texts
        ]
        decisions = await asyncio.gather(*(self.engine.moderate(r, deadline_s=deadline_s) for r in requests))
        for decision in decisions:
            self.record(decision)
        ids = [d.request_id for d in decisions]
        response = ModerationCreateResponse(
            id=f"modr-{ids[0]}", model=self.model_name, results=[to_openai(d) for d in decisions]
        )
        return response, ids

    def texts(self, body: ModerationCreateRequest) -> list[str]:
        """The texts to classify: one per string, or the text parts of a multi-modal input joined into one."""
        value = body.input
        if isinstance(value, str):
            texts = [value]
        elif all(isinstance(v, str) for v in value):
            texts = list(value)  # type: ignore[arg-type]
        else:
            for i, part in enumerate(value):
                if isinstance(part, ModerationImageURLInput):
                    raise ApiError(
                        400,
                        f"input.{i}: image inputs are not supported; this service moderates text",
                        field=f"input.{i}",
                        code="unsupported_input",
                    )
            texts = ["\n".join(part.text for part in value)]  # type: ignore[union-attr]
        if len(texts) > self.limits.max_inputs:
            raise ApiError(
                400,
                f"input: at most {self.limits.max_inputs} inputs per call, got {len(texts)}",
                field="input",
                code="too_many_inputs",
            )
        for i, text in enumerate(texts):
            if len(text) > self.limits.max_input_chars:
                where = "input" if isinstance(value, str) else f"input.{i}"
                raise ApiError(
                    400,
                    f"{where}: at most {self.limits.max_input_chars} characters per input",
                    field=where,
                    code="input_too_long",
                )
        return texts


def to_openai(decision: Decision) -> Moderation:
    """One decision as an OpenAI moderation result: a label's score is the highest of its related categories that
    were scored (null when none was); the degradation, if any, is under ``aegis``."""
    scores = {d.category: d.score for d in decision.categories if d.score is not None}
    flagged = {d.category for d in decision.categories if d.flagged}
    unscored = {u.category for u in decision.unscored}
    label_scores: dict[str, float | None] = {}
    label_flags: dict[str, bool] = {}
    unscored_labels = []
    for label in OPENAI_CATEGORIES:
        related = OPENAI_OMNI.to_canonical[label]
        known = [scores[c] for c in related if c in scores]
        label_scores[label] = max(known) if known else None
        label_flags[label] = any(c in flagged for c in related)
        if any(c in unscored for c in related):
            unscored_labels.append(label)
    return Moderation(
        flagged=decision.flagged,
        categories=Categories.model_validate(label_flags),
        category_scores=CategoryScores.model_validate(label_scores),
        category_applied_input_types=_TEXT_ONLY,
        aegis=AegisResultInfo(
            request_id=decision.request_id,
            action=decision.action,
            degraded=decision.degraded,
            unscored=unscored_labels,
            unscored_categories=sorted(unscored),
            missing_experts=[{"expert": m.expert, "kind": m.kind} for m in decision.missing_experts],
            language=decision.language,
        ),
    )
