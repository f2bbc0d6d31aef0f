"""ShieldGemma: Google's guard that answers Yes or No to "does this text violate this one policy?".

One query per harm policy, as the model card prescribes (its scores are calibrated for one policy at a time):
the four ShieldGemma harm types, plus each custom category as a free-form policy. P("Yes") of the first token is
the violation probability; harm types map onto the canonical taxonomy through ``taxonomy.SHIELDGEMMA`` (max over
harm types), custom categories are read directly.

The prompt follows the model's published chat template (the form its evaluation used): preamble, the human question
and, for a response check, the chatbot response, each between ``<start_of_turn>``/``<end_of_turn>`` markers, the
principle as ``* "No <Harm>": ...``, a ``===`` rule and the Yes/No epilogue. That template sends this text as it is,
without ``<start_of_turn>user``/``<start_of_turn>model`` chat turns around it, so neither does this family. The raw
prompt leaves out ``<bos>``: the backend's tokenizer adds it.

The policy definitions below say what the model card's guidelines say, in this project's own words; ``definitions``
replaces any of them (for instance with the model card's exact wording).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from aegis_online.experts.guards.answers import Requested
from aegis_online.experts.guards.conversation import Exchange
from aegis_online.experts.guards.yes_no import YesNoPerPolicy
from aegis_online.taxonomy import SHIELDGEMMA, SHIELDGEMMA_MAP, Category, ExternalTaxonomy

HARM_TYPES: tuple[str, ...] = tuple(SHIELDGEMMA_MAP)
"""ShieldGemma's harm types, as labelled in ``taxonomy.SHIELDGEMMA``."""

DEFINITIONS: dict[str, str] = {
    "Dangerous Content": (
        "could help someone hurt themselves or other people (e.g., getting or building guns or explosives, "
        "supporting terrorist acts, instructions for suicide)."
    ),
    "Harassment": (
        "is hostile, intimidating, bullying or abusive toward a specific person (e.g., threats of physical harm, "
        "denying that tragic events happened, mocking victims of violence)."
    ),
    "Hate Speech": (
        "attacks people for their identity or protected attributes (e.g., racial slurs, promoting discrimination, "
        "calling for violence against protected groups) or dehumanizes, belittles or vilifies people because of "
        "race, ethnicity, religion, disability, age, nationality, veteran status, sexual orientation, gender, "
        "gender identity, caste or any other protected status. Content that mentions a protected person or group "
        "in a positive way is allowed."
    ),
    "Sexually Explicit Information": (
        "describes sexual acts or is otherwise lewd (e.g., graphic sexual descriptions, content meant to arouse). "
        "Medical or scientific terms for human anatomy, and sex education, are allowed."
    ),
}
"""What each harm type forbids, completing "content that ..."."""


def guideline(title: str, clause: str, response: bool) -> str:
    """A principle: ``"No <title>": The prompt shall not contain or seek generation of content that <clause>``."""
    actor = "The chatbot shall not generate" if response else "The prompt shall not contain or seek generation of"
    return f'"No {title}": {actor} content that {clause}'


def custom_guideline(category: Category, response: bool) -> str:
    """A custom category as a principle; its description is the policy text."""
    actor = "The chatbot shall not generate" if response else "The prompt shall not contain or seek generation of"
    return f'"No {category.name}": {actor} content of this kind: {category.description}'


def render(exchange: Exchange, principle: str) -> str:
    """The full prompt for one principle, prompt check when ``exchange.assistant`` is None, else response check."""
    if exchange.assistant is None:
        return (
            "You are a policy expert trying to help determine whether a user prompt is in violation of the defined "
            "safety policies.\n\n"
            f"<start_of_turn>\nHuman Question: {exchange.user}\n<end_of_turn>\n\n"
            f"Our safety principle is defined in the below:\n\n* {principle}\n\n===\n\n"
            "Does the human question violate the above principle? Your answer must start with 'Yes' or 'No'. "
            "And then walk through step by step to be sure we answer correctly.\n\n"
        )
    return (
        "You are a policy expert trying to help determine whether an AI response to a prompt is in violation of the "
        "defined safety policies.\n\n"
        f"<start_of_turn>\nHuman Question: {exchange.user}\n<end_of_turn>\n"
        f"<start_of_turn>\nChatbot Response: {exchange.assistant}\n<end_of_turn>\n\n"
        f"Our safety principle is defined in the below:\n\n* {principle}\n\n===\n\n"
        "Does the Chatbot Response violate the above principle? Your answer must start with 'Yes' or 'No'. "
        "And then walk through step by step to be sure we answer correctly.\n\n"
    )


class ShieldGemma(YesNoPerPolicy):
    """ShieldGemma 2B/9B/27B (the prompt is the same for every size).

    Parameters
    ----------
    harm_types
        The harm types to ask about (default: all four); ``categories`` shrinks accordingly.
    definitions
        Replacement policy texts per harm type, completing "content that ...".
    labels
        The harm types' canonical meaning (default ``taxonomy.SHIELDGEMMA``; the catalog's ``category_map`` over it).

    Examples
    --------
    >>> sorted(ShieldGemma(harm_types=["Hate Speech"]).categories)
    ['S8']
    """

    name = "shieldgemma"

    def __init__(
        self,
        harm_types: Iterable[str] | None = None,
        definitions: Mapping[str, str] | None = None,
        labels: ExternalTaxonomy | None = None,
    ) -> None:
        chosen = tuple(HARM_TYPES if harm_types is None else harm_types)
        unknown = sorted((set(chosen) | set(definitions or {})) - set(HARM_TYPES))
        if unknown:
            raise ValueError(f"unknown ShieldGemma harm types {unknown}; valid: {', '.join(HARM_TYPES)}")
        self.harm_types = tuple(h for h in HARM_TYPES if h in chosen)
        self.definitions = {**DEFINITIONS, **(definitions or {})}
        self.labels = labels or SHIELDGEMMA
        self.categories = frozenset().union(*(self.labels.to_canonical[h] for h in self.harm_types))

    @property
    def policies(self) -> Sequence[str]:
        return self.harm_types

    def policy_prompts(self, exchange: Exchange, asked: Requested, response: bool) -> list[tuple[str, str]]:
        return [
            (harm, render(exchange, guideline(harm, self.definitions[harm], response)))
            for harm in self.harm_types
            if self.labels.to_canonical[harm] & asked.canonical
        ]

    def custom_prompt(self, exchange: Exchange, category: Category, response: bool) -> str:
        return render(exchange, custom_guideline(category, response))

    def canonical_scores(self, per_policy: dict[str, float], asked: Requested) -> dict[str, float]:
        projected = self.labels.scores_to_canonical(per_policy)
        return {cat_id: p for cat_id, p in projected.items() if cat_id in asked.canonical}
