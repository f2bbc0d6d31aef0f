"""Cross-validated training of the lexical heads (``train_lexical``).

``aegis-online experts train-head --kind lexical`` runs it; ``make heads`` trains the shipped ``lexical-heads.npz``
on every shared set (less the rows ``datasets.held_out`` keeps for the demo) and writes its provenance beside it
(the data sets, rows, cross-validated AUROC per head, the command).

Cross-validation refits the vocabularies inside each fold (a test fold's texts never choose terms or idf), so the
reported AUROCs are out-of-sample for the whole pipeline. To afford that, the folds are shared by all heads: one
stratified split of the rows on a key that spreads each head's positives evenly (the row's rarest positive head),
then per fold one vocabulary fit and one logistic regression per head.

Imports ``datasets``, ``schemas``, ``taxonomy``, ``minilm.training`` (for ``HeadReport``), numpy and, lazily,
scipy and scikit-learn.
"""

from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from aegis_online.datasets import LabelledText, binary_targets
from aegis_online.experts.cpu.lexical.features import LexicalFeatures, fit_block
from aegis_online.experts.cpu.lexical.model import LexicalHeads
from aegis_online.experts.cpu.minilm.training import HeadReport
from aegis_online.schemas import OVERALL
from aegis_online.taxonomy import CANONICAL_IDS

__all__ = [
    "CHAR_FEATURES",
    "CHAR_NGRAMS",
    "DEFAULT_C",
    "MIN_DF",
    "WORD_FEATURES",
    "WORD_NGRAMS",
    "train_lexical",
]

#: Inverse L2 strength. Chosen once on a stratified 75/25 split of all shared rows (lbfgs): C = 1 / 4 / 16 gave
#: overall AUROC .978 / .979 / .978, S8 .870 / .860 / .845, S1 .938 / .942 / .937, S11 .961 / .981 / .983.
DEFAULT_C = 4.0
#: Vocabulary caps. 20k + 20k terms and 14 heads make a file of 2.2 MB (float32 coefficients, compressed; under
#: the 3 MB we allow a shipped artifact).
WORD_FEATURES = 20_000
CHAR_FEATURES = 20_000
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (2, 5)
MIN_DF = 2


def _fit_features(texts: Sequence[str], word_features: int, char_features: int, min_df: int) -> tuple[Any, Any]:
    """Vocabularies and idf fitted on ``texts``, and the texts' features."""
    from scipy import sparse

    word, Xw = fit_block(texts, "word", WORD_NGRAMS, max_features=word_features, min_df=min_df)
    char, Xc = fit_block(texts, "char_wb", CHAR_NGRAMS, max_features=char_features, min_df=min_df)
    return LexicalFeatures((word, char)), sparse.hstack([Xw, Xc], format="csr")


def _fold_ids(targets: dict[str, tuple[np.ndarray, np.ndarray]], n_rows: int, folds: int) -> np.ndarray:
    """A fold per row, stratified on the row's rarest positive head (else whether it is a negative somewhere).

    Keys held by fewer than ``folds`` rows are pooled (StratifiedKFold needs ``folds`` of each).
    """
    from sklearn.model_selection import StratifiedKFold

    positives = {name: int(y.sum()) for name, (_, y) in targets.items()}
    key = ["unlabelled"] * n_rows
    rarity = [0] * n_rows
    for name, (index, y) in targets.items():
        for i, v in zip(index.tolist(), y.tolist(), strict=True):
            if v == 1 and (rarity[i] == 0 or positives[name] < rarity[i]):
                key[i], rarity[i] = name, positives[name]
            elif v == 0 and rarity[i] == 0:
                key[i] = "negative"
    counts = Counter(key)
    key = [k if counts[k] >= folds else "pooled" for k in key]
    counts = Counter(key)
    if 0 < counts["pooled"] < folds:
        biggest = max((k for k in counts if k != "pooled"), key=lambda k: counts[k])
        key = [biggest if k == "pooled" else k for k in key]
    fold = np.zeros(n_rows, dtype=np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
    for f, (_, test) in enumerate(splitter.split(np.zeros(n_rows), key)):
        fold[test] = f
    return fold


def _auroc(y: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    ok = ~np.isnan(scores)
    if len(set(y[ok].tolist())) < 2:
        return None
    return float(roc_auc_score(y[ok], scores[ok]))


def train_lexical(
    rows: Iterable[LabelledText],
    out: str | os.PathLike[str] | None = None,
    *,
    categories: Sequence[str] | None = None,
    min_positives: int = 10,
    folds: int = 5,
    C: float = DEFAULT_C,
    sources: Sequence[str] = (),
    progress: Callable[[str, int, int], None] | None = None,
    command: str | None = None,
    overall: bool = True,
    balanced: bool = True,
    word_features: int = WORD_FEATURES,
    char_features: int = CHAR_FEATURES,
    min_df: int = MIN_DF,
) -> tuple[LexicalHeads, list[HeadReport]]:
    """Fit TF-IDF vocabularies and one logistic head per category and for ``OVERALL``; write to ``out`` if given.

    Same contract as ``minilm.train_heads``: a row's target for a category is ``row.label(category)`` (its label, 0
    when the row is safe overall, else unknown: left out); for the ``OVERALL`` head it is ``row.unsafe`` (rows
    where it is None left out). A head with fewer than ``max(min_positives, folds)`` positives or negatives is
    skipped with a reason. Each trained head gets a ``folds``-fold cross-validated AUROC (vocabularies refitted
    in each fold; see the module docstring), then everything is refit on all rows.

    Parameters
    ----------
    rows
        Labelled texts.
    out
        Where to write the model (``.npz``); None to only return it.
    categories
        Category ids to try (default: S1..S23); the overall head is always tried.
    min_positives
        Fewest positives (and negatives) a head needs.
    folds
        Cross-validation folds for the reported AUROC (at least 2).
    C
        Inverse L2 strength of the logistic regressions.
    sources
        Descriptions of the training data, kept in the metadata.
    progress
        ``progress(stage, done, total)``; stages "cv" (folds) and "fit" (heads of the final refit).
    command
        The command that produced the model, kept in the metadata.
    overall
        Also train the whole-request head.
    balanced
        Weigh each class by the inverse of its frequency, as ``minilm.train_heads`` does.
    word_features, char_features, min_df
        Vocabulary caps and the fewest texts a term must occur in.

    Returns
    -------
    The model (possibly with no head) and one report per head tried, ``OVERALL`` first.

    Examples
    --------
    >>> rows = [LabelledText(f"you are a {w} {n}", unsafe=True) for w in ("vile", "rotten") for n in range(6)]
    >>> rows += [LabelledText(f"have a {w} day {n}", unsafe=False) for w in ("lovely", "sunny") for n in range(6)]
    >>> model, reports = train_lexical(rows, categories=(), min_positives=5, folds=3)
    >>> model.heads, round(reports[0].cv_auroc, 3)
    (('overall',), 1.0)
    """
    import sklearn
    from sklearn.linear_model import LogisticRegression

    if folds < 2:
        raise ValueError(f"folds must be >= 2, got {folds}")
    rows = list(rows)
    cats = tuple(CANONICAL_IDS if categories is None else categories)
    texts = [r.text for r in rows]
    names = (OVERALL, *cats) if overall else cats
    need = max(min_positives, folds)
    reports: dict[str, HeadReport] = {}
    targets: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name in names:
        index, y = binary_targets(rows, None if name == OVERALL else name)
        pos, neg = int(y.sum()), int(len(y) - y.sum())
        if pos < need or neg < need:
            which = "positives" if pos < need else "negatives"
            reason = f"too few {which} ({pos} positive, {neg} negative; need {need} of each)"
            reports[name] = HeadReport(name, pos, neg, skipped=reason)
        else:
            targets[name] = (index, y)

    def fit(X: Any, y: np.ndarray) -> Any:
        return LogisticRegression(C=C, max_iter=2000, class_weight="balanced" if balanced else None).fit(X, y)

    oof = {name: np.full(len(index), np.nan) for name, (index, _) in targets.items()}
    if targets:
        fold = _fold_ids(targets, len(rows), folds)
        for f in range(folds):
            train = np.flatnonzero(fold != f)
            features, X_train = _fit_features([texts[i] for i in train], word_features, char_features, min_df)
            position = np.full(len(rows), -1, dtype=np.int64)
            position[train] = np.arange(len(train))
            test_rows = np.flatnonzero(fold == f)
            X_test = features.transform([texts[i] for i in test_rows])
            position[test_rows] = np.arange(len(test_rows))
            for name, (index, y) in targets.items():
                in_train = fold[index] != f
                if len(set(y[in_train].tolist())) < 2 or in_train.all():
                    continue  # this fold's training part has one class: its test rows stay unscored
                model = fit(X_train[position[index[in_train]]], y[in_train])
                oof[name][~in_train] = model.decision_function(X_test[position[index[~in_train]]])
            if progress is not None:
                progress("cv", f + 1, folds)

    features, X = _fit_features(texts, word_features, char_features, min_df)
    kept: list[str] = []
    coefs: list[np.ndarray] = []
    intercepts: list[float] = []
    by_source: dict[str, dict[str, float]] = {}
    source = np.asarray([r.source for r in rows], dtype=object)
    for n, (name, (index, y)) in enumerate(targets.items()):
        model = fit(X[index], y)
        kept.append(name)
        coefs.append(model.coef_[0])
        intercepts.append(float(model.intercept_[0]))
        reports[name] = HeadReport(name, int(y.sum()), int(len(y) - y.sum()), cv_auroc=_auroc(y, oof[name]))
        per_source = {}
        for s in sorted(set(source[index].tolist())):
            mask = source[index] == s
            auroc = _auroc(y[mask], oof[name][mask])
            if auroc is not None and s:
                per_source[s] = auroc
        by_source[name] = per_source
        if progress is not None:
            progress("fit", n + 1, len(targets))

    ordered = [reports[name] for name in names]
    metadata = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "training_rows": len(rows),
        "sources": list(sources),
        "command": command,
        "C": C,
        "class_weight": "balanced" if balanced else None,
        "folds": folds,
        "min_positives": min_positives,
        "min_df": min_df,
        "heads": {
            r.category: {
                "positives": r.positives,
                "negatives": r.negatives,
                "cv_auroc": r.cv_auroc,
                "cv_auroc_by_source": by_source[r.category],
            }
            for r in ordered
            if r.skipped is None
        },
        "skipped": {r.category: r.skipped for r in ordered if r.skipped is not None},
    }
    heads = LexicalHeads(
        features=features,
        heads=tuple(kept),
        coef=np.asarray(coefs).reshape(len(kept), features.size),
        intercept=np.asarray(intercepts),
        metadata=metadata,
    )
    if out is not None:
        heads.save(out)
    return heads, ordered
