"""Synthetic experts whose quality per category changes over time, over a world of labelled items.

An item is a conversation whose text names its id (``item-<n>``); the world knows each item's true labels, and a
synthetic expert answers from them with its current accuracy and calibration. The driver advances ``world.clock``
so experts can drift (swap, decay, recur) exactly when a scenario says.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from aegis_online.experts import Expert, ExpertInput
from aegis_online.schemas import ExpertOutput, Message

#: accuracy of an expert on a category at time t, in [0, 1] (0.5 is a coin).
Quality = Callable[[int], float]
_ITEM = re.compile(r"item-(\d+)")


@dataclass
class World:
    """Labelled items and a clock. ``labels[i, c]`` is 1 when item ``i`` is unsafe in ``categories[c]``."""

    categories: tuple[str, ...]
    labels: np.ndarray
    clock: int = 0

    @classmethod
    def random(cls, categories: Sequence[str], n_items: int, base_rate: float, seed: int) -> World:
        rng = np.random.default_rng(seed)
        return cls(tuple(categories), (rng.random((n_items, len(categories))) < base_rate).astype(np.float64))

    def message(self, item: int) -> list[Message]:
        return [Message(role="user", content=f"synthetic conversation item-{item}")]

    def item_of(self, text: str) -> int:
        found = _ITEM.search(text)
        if found is None:
            raise ValueError(f"not a synthetic item: {text[:40]!r}")
        return int(found.group(1))


@dataclass
class SyntheticExpert(Expert):
    """Right with probability ``quality[c](t)``; when right it says ``confidence``, when wrong ``1 - confidence``."""

    name: str
    world: World
    quality: dict[str, Quality]
    confidence: float = 0.85
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.categories = frozenset(self.quality)
        self._rng = np.random.default_rng(self.seed)

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        return [self.score_item(self.world.item_of(x.checked_text), [c.id for c in x.categories]) for x in batch]

    def score_item(self, item: int, categories: Sequence[str]) -> ExpertOutput:
        scores = {}
        t = self.world.clock
        for cat in categories:
            truth = self.world.labels[item, self.world.categories.index(cat)]
            right = self._rng.random() < self.quality[cat](t)
            says_unsafe = truth if right else 1.0 - truth
            jitter = self._rng.uniform(-0.1, 0.1)
            scores[cat] = float(np.clip(self.confidence if says_unsafe else 1.0 - self.confidence, 0, 1) + jitter)
            scores[cat] = min(max(scores[cat], 0.0), 1.0)
        return ExpertOutput(expert=self.name, scores=scores, latency_ms=0.1)


def constant(accuracy: float) -> Quality:
    return lambda t: accuracy


def swap(before: float, after: float, at: int) -> Quality:
    """Abrupt change of accuracy at time ``at``."""
    return lambda t: before if t < at else after
