"""The HTTP API's wire models, shared by the service (``aegis_online.serve``) and its client
(``aegis_online.client``): one definition of every body, below both, importing nothing of the project but
``schemas``. Requests, decisions and feedback events themselves are ``aegis_online.schemas``'.
"""

from aegis_online.api_models.native import (
    Body,
    CategoryWeights,
    ComponentCheck,
    ErrorDetail,
    ErrorResponse,
    FeedbackBatch,
    FeedbackBody,
    FeedbackOutcome,
    FeedbackReceipt,
    Liveness,
    Readiness,
    TenantWeights,
)
from aegis_online.api_models.openai_protocol import (
    OPENAI_CATEGORIES,
    AegisResultInfo,
    Categories,
    CategoryAppliedInputTypes,
    CategoryScores,
    Moderation,
    ModerationCreateRequest,
    ModerationCreateResponse,
    ModerationImageURL,
    ModerationImageURLInput,
    ModerationMultiModalInput,
    ModerationTextInput,
    OpenAIErrorDetail,
    OpenAIErrorResponse,
)

__all__ = [
    "OPENAI_CATEGORIES",
    "AegisResultInfo",
    "Body",
    "Categories",
    "CategoryAppliedInputTypes",
    "CategoryScores",
    "CategoryWeights",
    "ComponentCheck",
    "ErrorDetail",
    "ErrorResponse",
    "FeedbackBatch",
    "FeedbackBody",
    "FeedbackOutcome",
    "FeedbackReceipt",
    "Liveness",
    "Moderation",
    "ModerationCreateRequest",
    "ModerationCreateResponse",
    "ModerationImageURL",
    "ModerationImageURLInput",
    "ModerationMultiModalInput",
    "ModerationTextInput",
    "OpenAIErrorDetail",
    "OpenAIErrorResponse",
    "Readiness",
    "TenantWeights",
]
