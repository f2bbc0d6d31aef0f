"""A CPU expert on offensive language: ``alt-profanity-check``'s linear model (TF-IDF + calibrated linear SVM).

The package ships one score, P(offensive), learned from toxic-comment data. It is a direct signal for S12
(profanity) and a weaker one for S10 (harassment) and S8 (hate): insults and slurs are usually profane, but so is
plenty of friendly banter, and hate can be written politely. Each category's score is P(offensive) through that
category's calibration map (``profanity_calibration``: Platt scaling fitted on the shared labelled sets, shipped with
its provenance), so each is an honest probability of its own category, never a fixed fraction known to be too low.

Imports only ``experts.base``, ``schemas``, the calibration, numpy and, lazily, ``profanity_check`` (its import
loads scikit-learn and the model: about 3 s, so it happens on first use, not on import).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aegis_online.experts.base import Expert, ExpertInput
from aegis_online.experts.cpu.profanity_calibration import PACKAGED_CALIBRATION, ProfanityCalibration
from aegis_online.schemas import ExpertOutput

__all__ = ["ProfanityExpert", "offensive_probability"]

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


def offensive_probability(texts: Sequence[str], batch_size: int = 1024) -> np.ndarray:
    """profanity-check's P(offensive) per text, shape ``(len(texts),)``, in batches of ``batch_size``."""
    predict_prob = _load_predict_prob()
    if not texts:
        return np.zeros(0, dtype=np.float64)
    parts = [
        np.asarray(predict_prob(list(texts[i : i + batch_size])), dtype=np.float64)
        for i in range(0, len(texts), batch_size)
    ]
    return np.clip(np.concatenate(parts), 0.0, 1.0)


class ProfanityExpert(Expert):
    """P(offensive language) from ``alt-profanity-check``, calibrated per category (S12, S10, S8).

    Parameters
    ----------
    name
        Expert name in outputs and learner state.
    calibration
        A ``ProfanityCalibration`` or the path of its JSON file; default: the fit shipped with the package. Its
        categories are the ones covered.
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
        calibration: ProfanityCalibration | str | os.PathLike[str] | None = None,
        batch_size: int = 1024,
    ) -> None:
        if not isinstance(calibration, ProfanityCalibration):
            calibration = ProfanityCalibration.load(PACKAGED_CALIBRATION if calibration is None else calibration)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.name = name
        self.calibration = calibration
        self.categories = calibration.categories
        self.batch_size = batch_size

    def offensive_probability(self, texts: Sequence[str]) -> np.ndarray:
        """P(offensive) per text, shape ``(len(texts),)`` (blocking; ``score`` runs it in a thread)."""
        return offensive_probability(texts, self.batch_size)

    def score_texts(self, texts: Sequence[str], categories: Sequence[str]) -> np.ndarray:
        """Calibrated probabilities, shape ``(len(texts), len(categories))``, of covered categories (blocking)."""
        p = self.offensive_probability(texts)
        columns = [self.calibration.apply(c, p) for c in categories]
        return np.stack(columns, axis=1) if columns else np.empty((len(texts), 0))

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        started = time.perf_counter()
        probs = await asyncio.to_thread(self.offensive_probability, [item.checked_text for item in batch])
        latency_ms = (time.perf_counter() - started) * 1000.0
        outputs = []
        for item, p in zip(batch, probs, strict=True):
            scores = {c.id: float(self.calibration.apply(c.id, p)) for c in item.categories if c.id in self.categories}
            outputs.append(ExpertOutput(expert=self.name, scores=scores, latency_ms=latency_ms))
        return outputs
