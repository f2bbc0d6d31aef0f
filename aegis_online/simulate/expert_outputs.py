"""Score replay texts with real experts once, through the ``ReplayCache``, and serve them back as experts.

``score_texts`` runs each expert only on the texts its cache lacks (in batches, through the expert's own async
``score``), for every canonical category it covers, so one cache serves any later choice of categories.
``CachedExpert`` then stands in for the expert inside the engine: same name and categories, answers from memory, and
counts the calls the engine made (which is what bandit mode saves).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from aegis_online.experts import Expert, ExpertInput
from aegis_online.schemas import MAX_MESSAGE_CHARS, ExpertOutput, Message
from aegis_online.simulate.cache import ReplayCache, expert_fingerprint
from aegis_online.taxonomy import CANONICAL, Category

BATCH_SIZE = 128


def request_text(text: str) -> str:
    """The text as a request carries it (messages are capped at ``MAX_MESSAGE_CHARS``)."""
    return text[:MAX_MESSAGE_CHARS]


def _covered(expert: Expert) -> tuple[Category, ...]:
    return tuple(c for c in CANONICAL if expert.covers(c))


async def _score_batches(
    expert: Expert, texts: Sequence[str], cache: ReplayCache, fingerprint: str, progress: Callable[[int], None] | None
) -> int:
    categories = _covered(expert)
    failures = 0
    for start in range(0, len(texts), BATCH_SIZE):
        batch = texts[start : start + BATCH_SIZE]
        inputs = [
            ExpertInput(messages=(Message(role="user", content=t),), check="prompt", categories=categories)
            for t in batch
        ]
        outputs = await expert.score(inputs)
        for text, output in zip(batch, outputs, strict=True):
            if output.ok:
                cache.put(fingerprint, text, expert.name, output.scores)
            else:
                failures += 1  # not cached: the next run tries again
        cache.flush()
        if progress is not None:
            progress(len(batch))
    return failures


def score_texts(
    experts: Sequence[Expert],
    texts: Sequence[str],
    cache: ReplayCache,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, int]:
    """Fill ``cache`` with every expert's scores for ``texts``; returns how many texts each expert failed on.

    ``progress(expert name, done, to do)`` reports the texts scored (cache misses only).
    """
    failures = {}
    for expert in experts:
        fingerprint = expert_fingerprint(expert)
        todo = list(dict.fromkeys(request_text(t) for t in texts if cache.get(fingerprint, request_text(t)) is None))
        done = 0

        def tick(n: int, name: str = expert.name, total: int = len(todo)) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress(name, done, total)

        failures[expert.name] = asyncio.run(_score_batches(expert, todo, cache, fingerprint, tick)) if todo else 0
    return failures


def output_matrix(
    experts: Sequence[Expert], texts: Sequence[str], categories: Sequence[str], cache: ReplayCache
) -> np.ndarray:
    """``(T, C, N)`` probabilities from the cache; NaN where an expert does not cover a category or failed."""
    out = np.full((len(texts), len(categories), len(experts)), np.nan)
    for i, expert in enumerate(experts):
        fingerprint = expert_fingerprint(expert)
        for t, text in enumerate(texts):
            scores = cache.get(fingerprint, request_text(text))
            if scores is not None:
                out[t, :, i] = [scores.get(c, np.nan) for c in categories]
    return out


class CachedExpert(Expert):
    """An expert that answers from outputs computed earlier (keyed by the checked text)."""

    def __init__(self, name: str, categories: frozenset[str], outputs: dict[str, dict[str, float]]) -> None:
        self.name = name
        self.categories = categories
        self._outputs = outputs
        self.calls = 0

    @classmethod
    def from_cache(cls, expert: Expert, texts: Sequence[str], cache: ReplayCache) -> CachedExpert:
        fingerprint = expert_fingerprint(expert)
        table = {}
        for text in texts:
            scores = cache.get(fingerprint, request_text(text))
            if scores is not None:
                table[request_text(text)] = scores
        return cls(expert.name, frozenset(expert.categories), table)

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        self.calls += len(batch)
        outputs = []
        for item in batch:
            scores = self._outputs.get(item.checked_text)
            if scores is None:
                outputs.append(ExpertOutput(expert=self.name, error="no cached output for this text"))
            else:
                wanted = {c.id: scores[c.id] for c in item.categories if c.id in scores}
                outputs.append(ExpertOutput(expert=self.name, scores=wanted))
        return outputs
