"""Logistic heads on MiniLM embeddings, one per category, and their file format (``.npz``, no pickle).

``train_heads`` (``training.py``) writes them; ``EmbeddingExpert`` reads them.

Imports only numpy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aegis_online.experts.cpu.minilm.model import EMBEDDER_NAME

__all__ = ["HEADS_FORMAT", "HEADS_VERSION", "EmbeddingHeads"]

HEADS_FORMAT = "aegis-online/embedding-heads"
HEADS_VERSION = 1


@dataclass
class EmbeddingHeads:
    """Logistic-regression heads on sentence embeddings, one per category: ``p = sigmoid(coef @ e + intercept)``."""

    categories: tuple[str, ...]
    coef: np.ndarray  # (k, dim)
    intercept: np.ndarray  # (k,)
    embedder: str = EMBEDDER_NAME
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.categories = tuple(self.categories)
        self.coef = np.asarray(self.coef, dtype=np.float64)
        self.intercept = np.asarray(self.intercept, dtype=np.float64).reshape(-1)
        k = len(self.categories)
        if self.coef.ndim != 2 or self.coef.shape[0] != k or self.intercept.shape != (k,):
            raise ValueError(
                f"heads need coef of shape ({k}, dim) and intercept of shape ({k},), "
                f"got {self.coef.shape} and {self.intercept.shape}"
            )
        if len(set(self.categories)) != k:
            raise ValueError("head categories must be unique")

    @property
    def dim(self) -> int:
        return int(self.coef.shape[1])

    def __contains__(self, category_id: object) -> bool:
        return category_id in self.categories

    def predict(self, embeddings: np.ndarray, categories: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities, shape ``(n, len(categories))`` (default: all heads, in ``self.categories`` order)."""
        cats = self.categories if categories is None else tuple(categories)
        rows = [self.categories.index(c) for c in cats]
        logits = np.asarray(embeddings, dtype=np.float64) @ self.coef[rows].T + self.intercept[rows]
        return 1.0 / (1.0 + np.exp(-logits))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an ``.npz`` (no pickle): categories, coef, intercept and the metadata as JSON."""
        p = Path(path)
        meta = {"format": HEADS_FORMAT, "version": HEADS_VERSION, "embedder": self.embedder, **self.metadata}
        with open(p, "wb") as handle:  # a file handle keeps numpy from appending ".npz" to the name
            np.savez(
                handle,
                categories=np.asarray(self.categories, dtype=str),
                coef=self.coef,
                intercept=self.intercept,
                metadata=np.asarray(json.dumps(meta, sort_keys=True)),
            )
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmbeddingHeads:
        """Read a file written by ``save``; ValueError naming the path if it is not one."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such heads file")
        try:
            with np.load(p, allow_pickle=False) as data:
                categories = tuple(str(c) for c in data["categories"])
                coef, intercept = data["coef"], data["intercept"]
                meta = json.loads(str(data["metadata"]))
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f"{p}: not an embedding-heads file ({error})") from None
        if meta.get("format") != HEADS_FORMAT:
            raise ValueError(f"{p}: not an embedding-heads file (format {meta.get('format')!r})")
        if meta.get("version") != HEADS_VERSION:
            raise ValueError(f"{p}: heads file version {meta.get('version')!r}; this code reads {HEADS_VERSION}")
        embedder = meta.pop("embedder")
        for key in ("format", "version"):
            meta.pop(key)
        return cls(categories=categories, coef=coef, intercept=intercept, embedder=embedder, metadata=meta)
