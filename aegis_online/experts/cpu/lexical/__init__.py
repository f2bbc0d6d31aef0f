"""A CPU expert on wording: TF-IDF word and character n-grams, one logistic head per category and one overall.

One job per module:

* ``features``: TF-IDF features recomputed from stored vocabularies and idf (``TfidfBlock``, ``LexicalFeatures``).
* ``model``: the heads and their ``.npz`` file format, no pickle (``LexicalHeads``, ``shipped_model_path``).
* ``training``: cross-validated training (``train_lexical``; ``aegis-online experts train-head --kind lexical``, and
  ``make heads`` for the shipped ``lexical-heads.npz`` and its ``lexical-heads.provenance.json``).
* ``expert``: the ``LexicalExpert`` (catalog entry ``lexical-heads``).

scikit-learn and scipy are imported on first use, not on import.
"""

from __future__ import annotations

from aegis_online.experts.cpu.lexical.expert import LexicalExpert
from aegis_online.experts.cpu.lexical.features import LexicalFeatures, TfidfBlock
from aegis_online.experts.cpu.lexical.model import LexicalHeads, shipped_model_path
from aegis_online.experts.cpu.lexical.training import train_lexical

__all__ = ["LexicalExpert", "LexicalFeatures", "LexicalHeads", "TfidfBlock", "shipped_model_path", "train_lexical"]
