"""The lexical heads and their file format: TF-IDF features, one logistic head per category and one ``overall``.

``train_lexical`` (``training.py``) writes the file; ``LexicalExpert`` (``expert.py``) reads it. The file is an
``.npz`` read with ``allow_pickle=False``: per feature block its vocabulary (a string array, column order) and idf,
then the heads' names, coefficients and intercepts, and the metadata as JSON (format, version, feature settings,
provenance). Nothing in it is code, and the probabilities are a function of those arrays alone (``features.py``
recomputes sklearn's TF-IDF from them), so a file predicts the same wherever and whenever it is loaded.

Coefficients are stored as float32 (half the size; a rounding of 1e-7 relative, far below what a probability
carries) and the in-memory model holds them rounded the same way, so ``load(save(m))`` predicts bit for bit as
``m``. The arrays are compressed: in the shipped file the padded string arrays of the vocabularies shrink from
2.8 MB to 0.16 MB, and the float32 coefficients (1.9 MB) are most of its 2.2 MB.

Imports only ``schemas``, numpy and ``features`` (which imports scikit-learn lazily).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aegis_online.experts.cpu.lexical.features import LexicalFeatures, TfidfBlock
from aegis_online.schemas import OVERALL

__all__ = ["LEXICAL_FORMAT", "LEXICAL_VERSION", "LexicalHeads", "shipped_model_path"]

LEXICAL_FORMAT = "aegis-online/lexical-heads"
LEXICAL_VERSION = 1
_BLOCK_KEYS = ("word", "char")


def shipped_model_path() -> Path:
    """The artifact shipped in the package (trained on the shared sets; see its ``.provenance.json``)."""
    return Path(__file__).resolve().parent / "lexical-heads.npz"


@dataclass
class LexicalHeads:
    """Logistic heads on TF-IDF features: ``p = sigmoid(coef @ x + intercept)`` per head.

    ``heads`` names the rows of ``coef``: canonical category ids and, usually, ``OVERALL`` (the overall verdict).
    ``features`` has two blocks, word n-grams then character n-grams.
    """

    features: LexicalFeatures
    heads: tuple[str, ...]
    coef: np.ndarray  # (h, features.size), float32 values
    intercept: np.ndarray  # (h,)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.heads = tuple(self.heads)
        self.coef = np.asarray(self.coef, dtype=np.float32).astype(np.float64)
        self.intercept = np.asarray(self.intercept, dtype=np.float64).reshape(-1)
        h = len(self.heads)
        if len(self.features.blocks) != len(_BLOCK_KEYS):
            raise ValueError(f"lexical heads need {len(_BLOCK_KEYS)} feature blocks (word, char)")
        if self.coef.shape != (h, self.features.size) or self.intercept.shape != (h,):
            raise ValueError(
                f"heads need coef of shape ({h}, {self.features.size}) and intercept of shape ({h},), "
                f"got {self.coef.shape} and {self.intercept.shape}"
            )
        if len(set(self.heads)) != h:
            raise ValueError("head names must be unique")
        self._coef_t = np.ascontiguousarray(self.coef.T)  # (features, heads): what the products read

    @property
    def categories(self) -> tuple[str, ...]:
        """The category ids with a head (``OVERALL`` excluded)."""
        return tuple(h for h in self.heads if h != OVERALL)

    def __contains__(self, head: object) -> bool:
        return head in self.heads

    def logits(self, texts: Sequence[str], heads: Sequence[str] | None = None) -> np.ndarray:
        """Log-odds, shape ``(len(texts), len(heads))`` (default: every head, in ``self.heads`` order)."""
        names = self.heads if heads is None else tuple(heads)
        missing = [h for h in names if h not in self.heads]
        if missing:
            raise KeyError(f"no head for {missing}; heads: {list(self.heads)}")
        if not texts:
            return np.zeros((0, len(names)), dtype=np.float64)
        rows = [self.heads.index(h) for h in names]
        logits = np.tile(self.intercept, (len(texts), 1))
        start = 0
        for block in self.features.blocks:  # block by block: no stacked matrix, every head in one product
            logits += block.transform(texts) @ self._coef_t[start : start + block.size]
            start += block.size
        return logits[:, rows]

    def predict(self, texts: Sequence[str], heads: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities, shape ``(len(texts), len(heads))`` (default: every head, in ``self.heads`` order)."""
        return 1.0 / (1.0 + np.exp(-self.logits(texts, heads)))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write a compressed ``.npz`` (no pickle): vocabularies, idf, heads, coef, intercept, metadata as JSON."""
        p = Path(path)
        settings = {key: block.settings() for key, block in zip(_BLOCK_KEYS, self.features.blocks, strict=True)}
        meta = {"format": LEXICAL_FORMAT, "version": LEXICAL_VERSION, "features": settings, **self.metadata}
        arrays: dict[str, np.ndarray] = {}
        for key, block in zip(_BLOCK_KEYS, self.features.blocks, strict=True):
            arrays[f"{key}_vocabulary"] = np.asarray(block.vocabulary, dtype=str)
            arrays[f"{key}_idf"] = block.idf
        with open(p, "wb") as handle:  # a file handle keeps numpy from appending ".npz" to the name
            np.savez_compressed(
                handle,
                heads=np.asarray(self.heads, dtype=str),
                coef=self.coef.astype(np.float32),
                intercept=self.intercept,
                metadata=np.asarray(json.dumps(meta, sort_keys=True)),
                **arrays,
            )
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> LexicalHeads:
        """Read a file written by ``save``; ValueError naming the path if it is not one."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such lexical-heads file")
        try:
            with np.load(p, allow_pickle=False) as data:
                meta = json.loads(str(data["metadata"]))
                if not isinstance(meta, dict) or meta.get("format") != LEXICAL_FORMAT:
                    found = meta.get("format") if isinstance(meta, dict) else None
                    raise ValueError(f"format {found!r}")
                if meta.get("version") != LEXICAL_VERSION:
                    raise ValueError(f"version {meta.get('version')!r}; this code reads {LEXICAL_VERSION}")
                settings = meta.pop("features")
                blocks = tuple(
                    TfidfBlock(
                        analyzer=settings[key]["analyzer"],
                        ngram_range=tuple(settings[key]["ngram_range"]),
                        vocabulary=tuple(str(t) for t in data[f"{key}_vocabulary"]),
                        idf=data[f"{key}_idf"],
                    )
                    for key in _BLOCK_KEYS
                )
                heads = tuple(str(h) for h in data["heads"])
                coef, intercept = data["coef"], data["intercept"]
            for key in ("format", "version"):
                meta.pop(key)
            return cls(LexicalFeatures(blocks), heads, coef, intercept, metadata=meta)
        except (OSError, EOFError, KeyError, IndexError, ValueError, TypeError, zipfile.BadZipFile) as error:
            raise ValueError(f"{p}: not a lexical-heads file ({error})") from None
