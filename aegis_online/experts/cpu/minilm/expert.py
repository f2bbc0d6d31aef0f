"""The MiniLM embedding expert: trained heads per category where present, else zero-shot similarity.

``EmbeddingExpert`` scores every canonical category and, being ``free_form``, any tenant-defined one:

* zero-shot: the mean cosine similarity between the text and the category's prototypes (``prototypes.py``),
  squashed by one fixed logistic.
* heads: where a file from ``train_heads`` (``training.py``) holds a logistic-regression head for a category, the
  head's probability replaces the zero-shot score for it. With ``zero_shot=False`` the expert is the heads alone
  (catalog entry ``minilm-heads``, ``heads: packaged``: the heads trained on the shared sets that ship beside this
  module): it covers the categories with a head and nothing else, so it errs differently from the zero-shot expert.
  Both read one embedding per text: the process-wide embedder keeps recent texts (``model.MiniLMEmbedder``).

The zero-shot squash ``p = 1 / (1 + exp(-ZERO_SHOT_SLOPE * (s - ZERO_SHOT_CENTRE)))`` was chosen once, on the shared
data (``shared/data``, see ``datasets.py``), and is fixed here: a one-feature logistic regression of the category
label on ``s`` over the 7,937 (text, category) pairs labelled in the OpenAI moderation set (with the set's own
convention that rows with no category set are benign) and SimpleSafetyTests, 11% of them positive, gave slope 19.6
and centre 0.248 (rounded below). Measured then, harmful-vs-benign AUROC of the max over the 23 categories:
OpenAI moderation .79 (.73 counting as benign only rows with all eight codes known), XSTest .74; 84% of
SimpleSafetyTests and 19% of XSTest's safe prompts score above 0.5 in some category (a prior, not a decision: the
policy thresholds and the ensemble weights decide).

Imports only ``experts.base``, ``schemas``, ``taxonomy``, numpy and, lazily, sentence-transformers.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from aegis_online.experts.base import Expert, ExpertInput
from aegis_online.experts.cpu.minilm.heads import EmbeddingHeads
from aegis_online.experts.cpu.minilm.model import MiniLMEmbedder, get_embedder
from aegis_online.experts.cpu.minilm.prototypes import prototype_texts
from aegis_online.experts.cpu.provenance import trained_on
from aegis_online.schemas import OVERALL, ExpertOutput
from aegis_online.taxonomy import AEGIS_2_IDS, CANONICAL, CANONICAL_IDS, Category

__all__ = ["PACKAGED_HEADS", "ZERO_SHOT_CENTRE", "ZERO_SHOT_SLOPE", "EmbeddingExpert"]

#: The heads trained on the shared sets (``make heads``), with their provenance file beside them.
PACKAGED_HEADS = Path(__file__).with_name("minilm-heads.npz")

ZERO_SHOT_SLOPE = 19.6
"""Slope of the zero-shot logistic squash (per unit of mean cosine similarity); see the module docstring."""
ZERO_SHOT_CENTRE = 0.25
"""Mean cosine similarity at which the zero-shot probability is 0.5; see the module docstring."""

_CANONICAL_BY_ID = {c.id: c for c in CANONICAL}


class EmbeddingExpert(Expert):
    """Per-category probabilities from MiniLM embeddings: trained heads where present, else zero-shot similarity.

    Parameters
    ----------
    heads
        An ``EmbeddingHeads``, a path to a heads file, ``"packaged"`` (``PACKAGED_HEADS``), or None (zero-shot
        only).
    zero_shot
        Score categories without a head zero-shot (default). False: the heads alone; it then covers only the
        categories with a head and no custom category.
    name
        Expert name in outputs and learner state.
    embedder
        Default: the process-wide packaged MiniLM (``get_embedder()``).
    categories
        Canonical ids covered (default: all 23, or those with a head when ``zero_shot`` is False). Custom categories
        are covered too (``free_form``) when ``zero_shot``.

    Examples
    --------
    >>> expert = EmbeddingExpert()
    >>> len(expert.categories), expert.free_form
    (23, True)
    >>> heads_only = EmbeddingExpert(heads="packaged", zero_shot=False, name="minilm-heads")
    >>> heads_only.free_form, heads_only.categories <= set(heads_only.heads.categories)
    (False, True)
    """

    def __init__(
        self,
        heads: EmbeddingHeads | str | os.PathLike[str] | None = None,
        name: str = "minilm-embedding",
        embedder: MiniLMEmbedder | None = None,
        categories: Iterable[str] | None = None,
        zero_shot: bool = True,
    ) -> None:
        self.name = name
        self._embedder = embedder
        if isinstance(heads, str) and heads == "packaged":
            heads = PACKAGED_HEADS
        if heads is not None and not isinstance(heads, EmbeddingHeads):
            heads = EmbeddingHeads.load(heads)
        self.heads = heads
        self.trained_on = {} if heads is None else trained_on(heads.metadata)
        self.zero_shot = zero_shot
        self.free_form = zero_shot
        if not zero_shot:
            if heads is None:
                raise ValueError("zero_shot=False needs heads (a heads file, or 'packaged')")
            with_head = [c for c in heads.categories if c != OVERALL]
            if categories is None:
                categories = with_head
            missing = sorted(set(categories) - set(with_head))
            if missing:
                raise ValueError(f"categories {missing} have no head, and zero_shot is off")
        cats = frozenset(AEGIS_2_IDS if categories is None else categories)
        unknown = sorted(cats - set(CANONICAL_IDS))
        if unknown:
            raise ValueError(f"unknown canonical categories {unknown}; valid ids: {', '.join(CANONICAL_IDS)}")
        self.categories = cats
        self._prototypes: dict[tuple[str, str], np.ndarray] = {}
        self._proto_lock = threading.Lock()

    @property
    def embedder(self) -> MiniLMEmbedder:
        if self._embedder is None:
            self._embedder = get_embedder()
        if self.heads is not None and self.heads.embedder != self._embedder.name:
            raise ValueError(f"heads were trained on {self.heads.embedder!r}, not on {self._embedder.name!r}")
        return self._embedder

    def _prototype_matrix(self, cat: Category) -> np.ndarray:
        key = (cat.id, cat.description)
        with self._proto_lock:
            matrix = self._prototypes.get(key)
        if matrix is None:
            matrix = self.embedder.encode(prototype_texts(cat))
            with self._proto_lock:
                self._prototypes[key] = matrix
        return matrix

    def zero_shot_similarity(self, embeddings: np.ndarray, cats: Sequence[Category]) -> np.ndarray:
        """Mean cosine similarity of each embedding to each category's prototypes, shape ``(n, len(cats))``."""
        columns = [embeddings @ self._prototype_matrix(c).mean(axis=0) for c in cats]
        return np.stack(columns, axis=1) if columns else np.empty((len(embeddings), 0), dtype=np.float32)

    def score_embeddings(self, embeddings: np.ndarray, cats: Sequence[Category | str]) -> np.ndarray:
        """Probabilities, shape ``(n, len(cats))``: a head's where there is one, else the zero-shot squash."""
        resolved = [_CANONICAL_BY_ID[c] if isinstance(c, str) else c for c in cats]
        if not self.zero_shot:
            assert self.heads is not None
            return self.heads.predict(embeddings, [c.id for c in resolved])
        sims = self.zero_shot_similarity(embeddings, resolved)
        probs = 1.0 / (1.0 + np.exp(-ZERO_SHOT_SLOPE * (sims.astype(np.float64) - ZERO_SHOT_CENTRE)))
        if self.heads is not None:
            with_head = [j for j, c in enumerate(resolved) if c.id in self.heads]
            if with_head:
                probs[:, with_head] = self.heads.predict(embeddings, [resolved[j].id for j in with_head])
        return probs

    def overall_probability(self, texts: Sequence[str]) -> np.ndarray | None:
        """The whole-request head's P(unsafe) per text, or None when the heads have no ``overall`` head."""
        if self.heads is None or OVERALL not in self.heads:
            return None
        return self.heads.predict(self.embedder.encode(texts), [OVERALL])[:, 0]

    def score_texts(self, texts: Sequence[str], cats: Sequence[Category | str]) -> np.ndarray:
        """``score_embeddings`` of the texts' embeddings (blocking; ``score`` runs it in a thread)."""
        return self.score_embeddings(self.embedder.encode(texts), cats)

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        if not batch:
            return []
        started = time.perf_counter()
        cats: dict[tuple[str, str], Category] = {}
        for item in batch:
            for c in item.categories:
                if self.covers(c):
                    cats.setdefault((c.id, c.description), c)
        keys = list(cats)
        probs = await asyncio.to_thread(self.score_texts, [item.checked_text for item in batch], list(cats.values()))
        latency_ms = (time.perf_counter() - started) * 1000.0
        column = {key: j for j, key in enumerate(keys)}
        outputs = []
        for i, item in enumerate(batch):
            scores = {
                c.id: float(np.clip(probs[i, column[(c.id, c.description)]], 0.0, 1.0))
                for c in item.categories
                if self.covers(c)
            }
            outputs.append(ExpertOutput(expert=self.name, scores=scores, latency_ms=latency_ms))
        return outputs
