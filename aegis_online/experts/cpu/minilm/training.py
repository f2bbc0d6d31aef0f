"""Cross-validated training of the MiniLM expert's logistic heads on labelled texts (``train_heads``).

Imports only ``taxonomy``, numpy and, lazily, scikit-learn (and sentence-transformers through the embedder).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from aegis_online.experts.cpu.minilm.heads import EmbeddingHeads
from aegis_online.experts.cpu.minilm.model import MiniLMEmbedder, get_embedder
from aegis_online.schemas import OVERALL
from aegis_online.taxonomy import CANONICAL_IDS

__all__ = ["HeadReport", "LabelledRow", "row_target", "train_heads"]


class LabelledRow(Protocol):
    """What ``train_heads`` needs of a row (``datasets.LabelledText`` is one)."""

    text: str
    #: the whole-request verdict (True unsafe, False safe, None unknown): the target of the ``overall`` head
    unsafe: bool | None

    def label(self, category_id: str) -> int | None: ...


def row_target(row: LabelledRow, key: str) -> int | None:
    """A row's 0/1 target for a head: its category label (``row.label``), or its verdict for ``OVERALL``."""
    if key == OVERALL:
        return None if row.unsafe is None else int(row.unsafe)
    return row.label(key)


@dataclass(frozen=True)
class HeadReport:
    """How one category's head was trained, or why it was not."""

    category: str
    positives: int
    negatives: int
    cv_auroc: float | None = None
    skipped: str | None = None


def train_heads(
    rows: Iterable[LabelledRow],
    out: str | os.PathLike[str] | None = None,
    *,
    categories: Sequence[str] | None = None,
    embedder: MiniLMEmbedder | None = None,
    embeddings: np.ndarray | None = None,
    min_positives: int = 10,
    folds: int = 5,
    C: float = 4.0,
    sources: Sequence[str] = (),
    overall: bool = True,
    balanced: bool = True,
    command: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[EmbeddingHeads, list[HeadReport]]:
    """Fit one logistic-regression head per category, and one for the whole request, on MiniLM embeddings; write
    them to ``out`` if given.

    A row's target for a category is ``row.label(category)``: its label, 0 when the row is safe overall, else
    unknown (left out). The ``overall`` head (``schemas.OVERALL``) learns the verdict ``row.unsafe``, so data with
    safe/unsafe verdicts only still trains a head. Categories with fewer than ``min_positives`` positives or
    negatives (or fewer than ``folds`` of either) are skipped with a reason. Each trained head gets a stratified
    ``folds``-fold cross-validated AUROC, then is refit on all its rows.

    Parameters
    ----------
    rows
        Labelled texts (``datasets.LabelledText`` or anything with ``text`` and ``label(category_id)``).
    out
        Where to write the heads (``.npz``); None to only return them.
    categories
        Category ids to try (default: S1..S23).
    embedder, embeddings
        The embedder (default: the process-wide MiniLM), or the rows' embeddings already computed.
    min_positives
        Fewest positives (and negatives) a category needs.
    folds
        Cross-validation folds for the reported AUROC.
    C
        Inverse L2 strength of the logistic regression.
    sources
        Descriptions of the training files, kept in the metadata.
    overall
        Also train the whole-request head.
    balanced
        Weigh each class by the inverse of its frequency (scikit-learn's ``class_weight="balanced"``), so a head's
        score does not carry the base rate of the pooled training mix (see ``BALANCED_PRIOR``).
    command
        The command that trained them, kept in the metadata (provenance).
    progress
        ``progress(stage, done, total)``; stages "embed" and "fit".

    Returns
    -------
    The heads (possibly with no category) and one report per category tried.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rows = list(rows)
    cats = tuple(CANONICAL_IDS if categories is None else categories) + ((OVERALL,) if overall else ())
    embedder = embedder or get_embedder()
    if embeddings is None:
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress("embed", done, len(rows))

        embeddings = embedder.encode_batches([r.text for r in rows], progress=tick)
    X = np.asarray(embeddings, dtype=np.float64)
    if X.shape[0] != len(rows):
        raise ValueError(f"got {X.shape[0]} embeddings for {len(rows)} rows")

    reports: list[HeadReport] = []
    kept: list[str] = []
    coefs: list[np.ndarray] = []
    intercepts: list[float] = []
    for n, cat in enumerate(cats):
        labelled = [(i, y) for i, r in enumerate(rows) if (y := row_target(r, cat)) is not None]
        index = np.asarray([i for i, _ in labelled], dtype=np.int64)
        y = np.asarray([v for _, v in labelled], dtype=np.int64)
        pos, neg = int(y.sum()), int(len(y) - y.sum())
        need = max(min_positives, folds)
        if pos < need or neg < need:
            which = "positives" if pos < need else "negatives"
            reason = f"too few {which} ({pos} positive, {neg} negative; need {need} of each)"
            reports.append(HeadReport(cat, pos, neg, skipped=reason))
        else:
            model = LogisticRegression(C=C, max_iter=2000, class_weight="balanced" if balanced else None)
            cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
            oof = cross_val_predict(model, X[index], y, cv=cv, method="decision_function")
            auroc = float(roc_auc_score(y, oof))
            model.fit(X[index], y)
            kept.append(cat)
            coefs.append(model.coef_[0])
            intercepts.append(float(model.intercept_[0]))
            reports.append(HeadReport(cat, pos, neg, cv_auroc=auroc))
        if progress is not None:
            progress("fit", n + 1, len(cats))

    import sklearn

    metadata = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sklearn": sklearn.__version__,
        "training_rows": len(rows),
        "sources": list(sources),
        **({"command": command} if command else {}),
        "C": C,
        "class_weight": "balanced" if balanced else None,
        "folds": folds,
        "categories": {
            r.category: {"positives": r.positives, "negatives": r.negatives, "cv_auroc": r.cv_auroc}
            for r in reports
            if r.skipped is None
        },
        "skipped": {r.category: r.skipped for r in reports if r.skipped is not None},
    }
    heads = EmbeddingHeads(
        categories=tuple(kept),
        coef=np.asarray(coefs).reshape(len(kept), X.shape[1]),
        intercept=np.asarray(intercepts),
        embedder=embedder.name,
        metadata=metadata,
    )
    if out is not None:
        heads.save(out)
    return heads, reports
