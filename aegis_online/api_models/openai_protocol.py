"""OpenAI's moderation API on the wire: request and response models that mirror ``POST /v1/moderations`` exactly.

Field names, aliases (``harassment/threatening``...), types and the input forms (a string, a list of strings, or a
list of multi-modal parts that together make one input) follow OpenAI's published API, so the official ``openai``
SDK pointed at this service by ``base_url`` works unchanged. Nothing from the engine appears here: the translation
lives in ``serve.openai_moderations``, like vLLM's protocol/serving split; the models live below ``serve`` so that
``aegis_online.client`` reads the same types without importing the service.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from aegis_online.schemas import MAX_MESSAGE_CHARS

#: OpenAI's moderation categories, in the order of its API reference.
OPENAI_CATEGORIES: tuple[str, ...] = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/instructions",
    "self-harm/intent",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)


class _Wire(BaseModel):
    model_config = ConfigDict(populate_by_name=True, frozen=True)


class ModerationTextInput(_Wire):
    """A text part of a multi-modal input."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str = Field(max_length=MAX_MESSAGE_CHARS)


class ModerationImageURL(_Wire):
    url: str = Field(max_length=MAX_MESSAGE_CHARS)


class ModerationImageURLInput(_Wire):
    """An image part (accepted by the schema; this service moderates text, so it answers 400)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["image_url"]
    image_url: ModerationImageURL


ModerationMultiModalInput = Annotated[ModerationTextInput | ModerationImageURLInput, Field(discriminator="type")]


class ModerationCreateRequest(_Wire):
    """``POST /v1/moderations``: classify one input or several."""

    model_config = ConfigDict(extra="forbid")

    input: (
        Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)]
        | Annotated[list[Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)]], Field(min_length=1, max_length=1024)]
        | Annotated[list[ModerationMultiModalInput], Field(min_length=1, max_length=64)]
    ) = Field(description="A string, a list of strings (one result each), or a list of parts (one result).")
    model: str | None = Field(
        default=None, max_length=256, description="Accepted for compatibility; the ensemble answers whatever it is."
    )


class Categories(_Wire):
    harassment: bool
    harassment_threatening: bool = Field(alias="harassment/threatening")
    hate: bool
    hate_threatening: bool = Field(alias="hate/threatening")
    illicit: bool | None = None
    illicit_violent: bool | None = Field(default=None, alias="illicit/violent")
    self_harm: bool = Field(alias="self-harm")
    self_harm_instructions: bool = Field(alias="self-harm/instructions")
    self_harm_intent: bool = Field(alias="self-harm/intent")
    sexual: bool
    sexual_minors: bool = Field(alias="sexual/minors")
    violence: bool
    violence_graphic: bool = Field(alias="violence/graphic")


class CategoryScores(_Wire):
    """Scores per label; null (never a made-up 0) for a label none of whose categories could be scored."""

    harassment: float | None
    harassment_threatening: float | None = Field(alias="harassment/threatening")
    hate: float | None
    hate_threatening: float | None = Field(alias="hate/threatening")
    illicit: float | None
    illicit_violent: float | None = Field(alias="illicit/violent")
    self_harm: float | None = Field(alias="self-harm")
    self_harm_instructions: float | None = Field(alias="self-harm/instructions")
    self_harm_intent: float | None = Field(alias="self-harm/intent")
    sexual: float | None
    sexual_minors: float | None = Field(alias="sexual/minors")
    violence: float | None
    violence_graphic: float | None = Field(alias="violence/graphic")


InputType = Literal["text", "image"]


class CategoryAppliedInputTypes(_Wire):
    harassment: list[Literal["text"]]
    harassment_threatening: list[Literal["text"]] = Field(alias="harassment/threatening")
    hate: list[Literal["text"]]
    hate_threatening: list[Literal["text"]] = Field(alias="hate/threatening")
    illicit: list[Literal["text"]]
    illicit_violent: list[Literal["text"]] = Field(alias="illicit/violent")
    self_harm: list[InputType] = Field(alias="self-harm")
    self_harm_instructions: list[InputType] = Field(alias="self-harm/instructions")
    self_harm_intent: list[InputType] = Field(alias="self-harm/intent")
    sexual: list[InputType]
    sexual_minors: list[Literal["text"]] = Field(alias="sexual/minors")
    violence: list[InputType]
    violence_graphic: list[InputType] = Field(alias="violence/graphic")


class AegisResultInfo(_Wire):
    """This service's own facts about one result, under the extra key ``aegis`` (the openai SDK keeps unknown keys:
    ``result.aegis`` or ``result.model_extra["aegis"]``). Degradation is here, never hidden in a made-up score."""

    request_id: str = Field(description="The decision's request id: what /v1/feedback labels.")
    action: Literal["allow", "flag", "block"] = Field(description="The tenant policy's action.")
    degraded: bool = Field(description="True when a category could not be scored; its labels are in unscored.")
    unscored: list[str] = Field(description="OpenAI labels with a related category that no expert could score.")
    unscored_categories: list[str] = Field(description="The canonical categories that could not be scored.")
    missing_experts: list[dict[str, str]] = Field(description="{expert, kind} of each expert that gave no score.")
    language: str = Field(
        default="und",
        description="ISO 639-1 code of the input's language, as identified ('und': undetermined); experts that do "
        "not read it are in missing_experts with kind language.",
    )


class Moderation(_Wire):
    flagged: bool = Field(description="Whether any of the categories is flagged.")
    categories: Categories
    category_scores: CategoryScores
    category_applied_input_types: CategoryAppliedInputTypes
    aegis: AegisResultInfo | None = Field(default=None, description="aegis-online's extra facts (an extra key).")


class ModerationCreateResponse(_Wire):
    id: str = Field(description="modr-<request id>; the request ids of every result are in X-Aegis-Request-Ids.")
    model: str
    results: list[Moderation]


class OpenAIErrorDetail(_Wire):
    """OpenAI's error object; ``field`` repeats ``param`` so that every error of this service has the same keys."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None
    field: str | None = None


class OpenAIErrorResponse(_Wire):
    error: OpenAIErrorDetail
