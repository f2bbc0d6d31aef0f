"""A CPU expert on offensive language: ``alt-profanity-check``'s linear model (TF-IDF + calibrated linear SVM).

The package ships one score, P(offensive), learned from toxic-comment data. It is a direct signal for S12
(profanity) and, weaker, for S10 (harassment) and S8 (hate): insults and slurs are usually profane, but so is plenty
of friendly banter, and hate can be written politely. Field notes section 8 measured harmful-vs-benign AUROC .84 on
the OpenAI moderation set and .58 on XSTest (which has no swearing in either class). We therefore report the same
score for all three categories, scaled down for the two indirect ones, so that on its own it never claims more
than it knows; the ensemble learns per category how far to trust it.

Imports only ``experts.base``, ``schemas``, numpy and, lazily, ``profanity_check`` (its import loads scikit-learn
and the model: about 3 s, so it happens on first use, not on import).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from aegis_online.experts.base import Expert, ExpertInput
from aegis_online.schemas import ExpertOutput

__all__ = ["DEFAULT_CATEGORY_SCALE", "ProfanityExpert"]

#: Category id -> factor applied to P(offensive). 1 for profanity itself; below 1 for the categories where
#: offensive wording is evidence but not proof (so a profane joke does not read as confident hate).
DEFAULT_CATEGORY_SCALE: Mapping[str, float] = {"S12": 1.0, "S10": 0.7, "S8": 0.5}

_predict_lock = threading.Lock()
_predict_prob: Callable[[Sequence[str]], Any] | None = None


def _load_predict_prob() -> Callable[[Sequence[str]], Any]:
    global _predict_prob
    with _predict_lock:
        if _predict_prob is None:
            try:
                from profanity_check import predict_prob
            except ImportError as error:  # pragma: no cover - depends on the environment
                raise RuntimeError(
                    "ProfanityExpert needs the 'alt-profanity-check' package (pip install alt-profanity-check)"
                ) from error
            _predict_prob = predict_prob
    return _predict_prob


class ProfanityExpert(Expert):
    """P(offensive language) from ``alt-profanity-check``, reported for S12 and, scaled, S10 and S8.

    Parameters
    ----------
    name
        Expert name in outputs and learner state.
    category_scale
        Category id -> factor in (0, 1] applied to P(offensive); its keys are the categories covered.
    batch_size
        Texts per call of the vectoriser (it is fast; this only bounds memory).

    Examples
    --------
    >>> expert = ProfanityExpert()
    >>> sorted(expert.categories)
    ['S10', 'S12', 'S8']
    """

    def __init__(
        self,
        name: str = "profanity-check",
        category_scale: Mapping[str, float] | None = None,
        batch_size: int = 1024,
    ) -> None:
        scale = dict(DEFAULT_CATEGORY_SCALE if category_scale is None else category_scale)
        if not scale:
            raise ValueError("category_scale must name at least one category")
        for cat_id, factor in scale.items():
            if not 0.0 < factor <= 1.0:
                raise ValueError(f"category_scale[{cat_id!r}] must be in (0, 1], got {factor}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.scale = scale
        self.categories = frozenset(scale)
        self.batch_size = batch_size

    def offensive_probability(self, texts: Sequence[str]) -> np.ndarray:
        """P(offensive) per text, shape ``(len(texts),)`` (blocking; ``score`` runs it in a thread)."""
        predict_prob = _load_predict_prob()
        if not texts:
            return np.zeros(0, dtype=np.float64)
        parts = [
            np.asarray(predict_prob(list(texts[i : i + self.batch_size])), dtype=np.float64)
            for i in range(0, len(texts), self.batch_size)
        ]
        return np.clip(np.concatenate(parts), 0.0, 1.0)

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        started = time.perf_counter()
        probs = await asyncio.to_thread(self.offensive_probability, [item.checked_text for item in batch])
        latency_ms = (time.perf_counter() - started) * 1000.0
        outputs = []
        for item, p in zip(batch, probs, strict=True):
            scores = {c.id: float(p) * self.scale[c.id] for c in item.categories if c.id in self.categories}
            outputs.append(ExpertOutput(expert=self.name, scores=scores, latency_ms=latency_ms))
        return outputs
