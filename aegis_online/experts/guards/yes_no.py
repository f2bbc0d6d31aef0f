"""Families that ask one Yes/No question per policy and read P(Yes): ShieldGemma and Granite Guardian.

Both word one prompt per built-in policy (a harm type, a risk) and per custom category asked about, query each with
``Yes``/``No`` as the verdict words, and turn the per-policy probabilities into canonical scores. The loop lives
here once; a family says which built-in policies apply, how each question is worded, and how its policies map.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from aegis_online.experts.base import ExpertInput
from aegis_online.experts.guards.answers import Requested, ordered, paired, requested, yes_no_probability
from aegis_online.experts.guards.base import GuardAnswer, GuardFamily, GuardQuery
from aegis_online.experts.guards.conversation import Exchange, last_exchange
from aegis_online.taxonomy import Category


class YesNoPerPolicy(GuardFamily):
    """One ``Yes``/``No`` query per policy; scores are P(Yes), projected onto the canonical categories."""

    free_form = True

    @property
    @abc.abstractmethod
    def policies(self) -> Sequence[str]:
        """The built-in policies this instance asks about (query keys)."""

    @abc.abstractmethod
    def policy_prompts(self, exchange: Exchange, asked: Requested, response: bool) -> list[tuple[str, str]]:
        """``(policy, prompt)`` for each built-in policy that answers ``asked``."""

    @abc.abstractmethod
    def custom_prompt(self, exchange: Exchange, category: Category, response: bool) -> str:
        """The prompt that asks about a custom category, from its description."""

    @abc.abstractmethod
    def canonical_scores(self, per_policy: dict[str, float], asked: Requested) -> dict[str, float]:
        """Canonical category id -> probability, from P(Yes) per built-in policy (only categories ``asked``)."""

    def queries(self, item: ExpertInput) -> list[GuardQuery]:
        asked = requested(self, item)
        if not asked:
            return []
        exchange = last_exchange(item)
        response = item.check == "response"
        prompts = self.policy_prompts(exchange, asked, response)
        prompts += [(c.id, self.custom_prompt(exchange, c, response)) for c in asked.custom]
        return [GuardQuery(key=k, positive="Yes", negative="No", prompt=p, max_new_tokens=1) for k, p in prompts]

    def parse(
        self, item: ExpertInput, queries: Sequence[GuardQuery], answers: Sequence[GuardAnswer]
    ) -> dict[str, float]:
        asked = requested(self, item)
        custom = {c.id for c in asked.custom}
        per_policy: dict[str, float] = {}
        scores: dict[str, float] = {}
        for key, answer in paired(self.name, queries, answers):
            if key in self.policies:
                per_policy[key] = yes_no_probability(self.name, key, answer)
            elif key in custom:
                scores[key] = yes_no_probability(self.name, key, answer)
            else:
                raise ValueError(f"{self.name}: query key {key!r} does not belong to this item")
        scores.update(self.canonical_scores(per_policy, asked))
        return ordered(scores, asked.custom)
