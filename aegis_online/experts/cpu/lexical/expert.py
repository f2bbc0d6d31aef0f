"""The lexical expert: TF-IDF word and character n-grams, one logistic head per category, trained on the shared sets.

It covers only the categories its file has a head for (the shipped file: those with enough labelled positives in
the shared sets, see ``lexical-heads.provenance.json``), so the ensemble never reads a guess from it for the others.
It is cheap (a few thousand texts per second on one core) and sees wording only: it catches the vocabulary of the
sets it learned from, misses paraphrase, and can be fooled by benign text that borrows that vocabulary (XSTest).
The ensemble learns per category how far to trust it.

Imports only ``experts.base``, ``schemas``, numpy and ``model`` (scikit-learn is imported on the first texts).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Sequence

import numpy as np

from aegis_online.experts.base import Expert, ExpertInput
from aegis_online.experts.cpu.lexical.model import LexicalHeads, shipped_model_path
from aegis_online.experts.cpu.provenance import trained_on
from aegis_online.schemas import OVERALL, ExpertOutput

__all__ = ["LexicalExpert"]


class LexicalExpert(Expert):
    """Per-category probabilities from the lexical heads (``LexicalHeads``), for the categories with a head.

    Parameters
    ----------
    model
        A ``LexicalHeads``, a path to a file written by ``train_lexical``, or None for the shipped artifact.
    name
        Expert name in outputs and learner state.
    categories
        Category ids to cover (default: every category with a head); each must have one.

    Examples
    --------
    >>> expert = LexicalExpert()
    >>> expert.name, "S12" in expert.categories, "overall" in expert.categories
    ('lexical-heads', True, False)
    """

    def __init__(
        self,
        model: LexicalHeads | str | os.PathLike[str] | None = None,
        name: str = "lexical-heads",
        categories: Iterable[str] | None = None,
    ) -> None:
        if model is None:
            model = shipped_model_path()
        if not isinstance(model, LexicalHeads):
            model = LexicalHeads.load(model)
        self.model = model
        self.trained_on = trained_on(model.metadata)
        self.name = name
        available = frozenset(model.categories)
        cats = available if categories is None else frozenset(categories)
        missing = sorted(cats - available)
        if missing:
            raise ValueError(f"no lexical head for {missing}; heads: {sorted(available)}")
        self.categories = cats

    def score_texts(self, texts: Sequence[str], categories: Sequence[str]) -> np.ndarray:
        """Probabilities, shape ``(len(texts), len(categories))`` (blocking; ``score`` runs it in a thread)."""
        return self.model.predict(list(texts), list(categories))

    def overall_probability(self, texts: Sequence[str]) -> np.ndarray:
        """P(unsafe overall) per text from the ``overall`` head, shape ``(len(texts),)`` (blocking)."""
        if OVERALL not in self.model:
            raise KeyError(f"this lexical model has no {OVERALL!r} head")
        return self.model.predict(list(texts), [OVERALL])[:, 0]

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        if not batch:
            return []
        started = time.perf_counter()
        wanted = sorted({c.id for item in batch for c in item.categories if self.covers(c)})
        probs = await asyncio.to_thread(self.score_texts, [item.checked_text for item in batch], wanted)
        latency_ms = (time.perf_counter() - started) * 1000.0
        column = {cat: j for j, cat in enumerate(wanted)}
        outputs = []
        for i, item in enumerate(batch):
            scores = {c.id: float(np.clip(probs[i, column[c.id]], 0.0, 1.0)) for c in item.categories if self.covers(c)}
            outputs.append(ExpertOutput(expert=self.name, scores=scores, latency_ms=latency_ms))
        return outputs
