"""A CPU expert on sentence embeddings: all-MiniLM-L6-v2, zero-shot per category, or logistic heads trained here.

One job per module:

* ``prototypes``: the zero-shot prototype phrases per canonical category (``PROTOTYPES``, ``prototype_texts``).
* ``model``: loading the packaged model and caching embeddings (``MiniLMEmbedder``, ``get_embedder``,
  ``minilm_model_dir``).
* ``heads``: logistic heads per category and their ``.npz`` file format (``EmbeddingHeads``).
* ``training``: cross-validated training of the heads on labelled texts (``train_heads``, ``HeadReport``).
* ``expert``: the ``EmbeddingExpert`` and its fixed zero-shot squash (``ZERO_SHOT_SLOPE``, ``ZERO_SHOT_CENTRE``).

Heavy imports (scikit-learn, torch, sentence-transformers) happen on first use, not on import.
"""

from aegis_online.experts.cpu.minilm.expert import ZERO_SHOT_CENTRE, ZERO_SHOT_SLOPE, EmbeddingExpert
from aegis_online.experts.cpu.minilm.heads import EmbeddingHeads
from aegis_online.experts.cpu.minilm.model import MiniLMEmbedder, get_embedder, minilm_model_dir
from aegis_online.experts.cpu.minilm.prototypes import PROTOTYPES
from aegis_online.experts.cpu.minilm.training import HeadReport, train_heads

__all__ = [
    "PROTOTYPES",
    "ZERO_SHOT_CENTRE",
    "ZERO_SHOT_SLOPE",
    "EmbeddingExpert",
    "EmbeddingHeads",
    "HeadReport",
    "MiniLMEmbedder",
    "get_embedder",
    "minilm_model_dir",
    "train_heads",
]
