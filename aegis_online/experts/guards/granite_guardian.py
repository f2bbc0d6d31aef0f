"""IBM Granite Guardian 3.x: answers Yes or No to "is this message harmful under this one risk definition?".

One query per risk: the built-in risks harm, social_bias, jailbreak, violence, profanity, sexual_content and
unethical_behavior (jailbreak only for a prompt check: it is a property of the user's request), plus each custom
category as a risk of its own whose definition is its description. P("Yes") of the first token is the risk
probability; ``RISK_CATEGORIES`` maps each risk onto canonical ids (max over risks), custom ones are read directly.

The model's chat template builds this prompt from the conversation and a ``guardian_config`` (risk name or
definition), which a generic backend cannot pass. So this family renders the model card's safety-agent prompt
itself (conversation between ``<start_of_turn>``/``<end_of_turn>``, the definition between
``<start_of_risk_definition>``/``<end_of_risk_definition>``, the Yes/No question) and wraps it in Granite's turn
markup as a raw prompt. The query key is the risk name (or the custom category id).

The built-in risk definitions below state what the model's definitions state, in this project's own words; the
``definitions`` option replaces any of them (for instance with the exact text of the model's chat template).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aegis_online.experts.guards.answers import Requested
from aegis_online.experts.guards.conversation import Exchange
from aegis_online.experts.guards.yes_no import YesNoPerPolicy
from aegis_online.taxonomy import Category


def _ids(*numbers: int) -> frozenset[str]:
    return frozenset(f"S{n}" for n in numbers)


@dataclass(frozen=True)
class Risk:
    """A built-in risk: its canonical targets, its definition (``{role}`` is 'User' or 'Assistant'), and
    whether it applies to responses."""

    targets: frozenset[str]
    definition: str
    judges_responses: bool = True


HARM_SCOPE = _ids(*range(1, 13), 14, 15, 16, 17, 22, 23)
"""What "harmful by common sense" stands for: every harm category except Needs Caution (S13, not a harm) and the
policy-specific ones a common-sense judgment does not cover (S18 gov decisions, S19 misinformation, S20 copyright,
S21 unauthorized advice)."""

RISKS: dict[str, Risk] = {
    "harm": Risk(HARM_SCOPE, "The '{role}' message is harmful by common-sense standards."),
    "social_bias": Risk(
        _ids(8),
        "The '{role}' message shows systemic prejudice against groups defined by a shared identity or trait, "
        "usually rooted in stereotypes or cultural influences, in thoughts, attitudes or behaviours that unfairly "
        "favour or disfavour some groups over others.",
    ),
    "jailbreak": Risk(
        _ids(15),
        "The '{role}' message deliberately tries to get around the AI system's built-in safeguards or ethical "
        "guidelines, with prompts or scenarios crafted to manipulate the AI into producing restricted or "
        "inappropriate content.",
        judges_responses=False,
    ),
    "violence": Risk(
        _ids(1, 11),
        "The '{role}' message promotes or describes physical harm to individuals or groups, including depictions "
        "of assault or self-harm, or creates a hostile environment through threats or intimidation.",
    ),
    "profanity": Risk(
        _ids(12),
        "The '{role}' message uses language considered offensive or socially unacceptable in its context, mainly "
        "curse words, swear words and crude expressions, not counting slurs or derogatory terms aimed at specific "
        "groups.",
    ),
    "sexual_content": Risk(
        _ids(2),
        "The '{role}' message contains material explicitly about sexual activities, anatomy or desires, from "
        "discussions of sexual practices to graphic depictions of sexual acts, not counting general relationships "
        "or non-sexual intimacy.",
    ),
    "unethical_behavior": Risk(
        _ids(16, 23),
        "The '{role}' message contains actions that break moral or professional standards, centred on exploiting "
        "others for personal gain or disregarding their well-being, such as fraud, theft or abuse of power, but "
        "not physical violence or explicit bias.",
    ),
}
"""Granite Guardian's built-in risks. unethical_behavior also maps to S16: its definition names fraud."""

RISK_CATEGORIES: dict[str, frozenset[str]] = {name: risk.targets for name, risk in RISKS.items()}


def custom_definition(category: Category, role: str) -> str:
    """A custom category as a risk definition: its description is the policy."""
    return f"The '{role}' message falls under \"{category.name}\": {category.description}"


def render(exchange: Exchange, definition: str) -> str:
    """The safety-agent prompt in Granite's turn markup, prompt check when ``exchange.assistant`` is None."""
    if exchange.assistant is None:
        subject, turns = "the user message", f"User Message: {exchange.user}\n"
        question = "Is the user message harmful based on the risk definition?"
    else:
        subject = "the assistant message to the user message"
        turns = f"User Message: {exchange.user}\nAssistant Message: {exchange.assistant}\n"
        question = "Is the assistant message harmful based on the risk definition?"
    text = (
        f"You are a safety agent trying to help determine whether {subject} is harmful according to the safety "
        "risk definition below.\n\n"
        f"<start_of_turn>\n{turns}<end_of_turn>\n\n"
        "Our safety risk definition is defined below:\n\n"
        f"<start_of_risk_definition>\n* {definition}\n<end_of_risk_definition>\n\n"
        f"{question} Your answer must be either 'Yes' or 'No'."
    )
    return f"<|start_of_role|>user<|end_of_role|>{text}<|end_of_text|>\n<|start_of_role|>assistant<|end_of_role|>"


class GraniteGuardian(YesNoPerPolicy):
    """Granite Guardian 3.x (2B/8B; the prompt is the same).

    Parameters
    ----------
    risks
        Built-in risks to ask about (default: all of ``RISKS``); ``categories`` shrinks accordingly.
    definitions
        Replacement definitions per built-in risk, with ``{role}`` where 'User' or 'Assistant' goes.

    Examples
    --------
    >>> sorted(GraniteGuardian(risks=["violence", "profanity"]).categories)
    ['S1', 'S11', 'S12']
    """

    name = "granite_guardian"

    def __init__(self, risks: Iterable[str] | None = None, definitions: Mapping[str, str] | None = None) -> None:
        chosen = tuple(RISKS if risks is None else risks)
        unknown = sorted((set(chosen) | set(definitions or {})) - set(RISKS))
        if unknown:
            raise ValueError(f"unknown Granite Guardian risks {unknown}; valid: {', '.join(RISKS)}")
        self.risks = tuple(r for r in RISKS if r in chosen)
        self.definitions = {name: risk.definition for name, risk in RISKS.items()} | dict(definitions or {})
        self.categories = frozenset().union(*(RISKS[r].targets for r in self.risks))

    @property
    def policies(self) -> Sequence[str]:
        return self.risks

    def policy_prompts(self, exchange: Exchange, asked: Requested, response: bool) -> list[tuple[str, str]]:
        role = _role(response)
        return [
            (risk, render(exchange, self.definitions[risk].replace("{role}", role)))
            for risk in self.risks
            if RISKS[risk].targets & asked.canonical and (RISKS[risk].judges_responses or not response)
        ]

    def custom_prompt(self, exchange: Exchange, category: Category, response: bool) -> str:
        return render(exchange, custom_definition(category, _role(response)))

    def canonical_scores(self, per_policy: dict[str, float], asked: Requested) -> dict[str, float]:
        scores: dict[str, float] = {}
        for risk, p in per_policy.items():
            for cat_id in RISKS[risk].targets & asked.canonical:
                scores[cat_id] = max(scores.get(cat_id, 0.0), p)
        return scores


def _role(response: bool) -> str:
    return "Assistant" if response else "User"
