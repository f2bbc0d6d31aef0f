"""How well a predictor did on a stream: loss, F1 and AUPRC per category (whole run and per window), false-positive
rate on benign requests, recall, per tenant and per segment, and how fast it recovered after each drift.

A *predictor* is anything that gave a probability per (request, category): a learner's ensemble, one expert, or the
plain average of the experts. Loss is the squared loss of ``learn.losses`` against the true label (the one definition
used everywhere); decisions are ``score >= the tenant's threshold``, as the policy decides. Values are computed per
replica and averaged. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aegis_online.learn.losses import squared_loss
from aegis_online.simulate.stream import Stream


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as a step sum (scikit-learn's ``average_precision_score``).

    NaN when there is no positive.

    >>> round(average_precision(np.array([0, 1, 1, 0]), np.array([0.1, 0.4, 0.35, 0.8])), 4)
    0.5833
    """
    labels = np.asarray(labels, dtype=bool)
    positives = int(labels.sum())
    if positives == 0:
        return math.nan
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    hits = labels[order]
    ranked = np.asarray(scores)[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    tp = np.cumsum(hits)[last_of_tie]
    fp = last_of_tie + 1 - tp
    precision = tp / (tp + fp)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def f1_score(labels: np.ndarray, flagged: np.ndarray) -> float:
    """``2 TP / (2 TP + FP + FN)``; NaN when there is neither a positive nor a flag."""
    labels = np.asarray(labels, dtype=bool)
    flagged = np.asarray(flagged, dtype=bool)
    tp = int(np.sum(labels & flagged))
    denominator = 2 * tp + int(np.sum(flagged & ~labels)) + int(np.sum(labels & ~flagged))
    return 2 * tp / denominator if denominator else math.nan


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _share(mask: np.ndarray, of: np.ndarray) -> float:
    total = int(of.sum())
    return float(np.sum(mask & of) / total) if total else math.nan


@dataclass(frozen=True)
class Windows:
    """Consecutive request windows ``[starts[k], starts[k] + size)`` for windowed metrics."""

    size: int
    starts: np.ndarray

    @classmethod
    def over(cls, steps: int, count: int = 20) -> Windows:
        size = max(steps // max(count, 1), 1)
        return cls(size=size, starts=np.arange(0, steps - size + 1, size))


class PredictorMetrics:
    """Metrics of one predictor's probabilities ``(R, T, C)`` on ``stream``."""

    def __init__(
        self, stream: Stream, predictions: np.ndarray, windows: Windows, flagged: np.ndarray | None = None
    ) -> None:
        """``flagged`` overrides the threshold rule with the decisions a service actually took (replay)."""
        self.stream = stream
        self.predictions = predictions
        self.windows = windows
        self.mask = stream.evaluated & np.isfinite(predictions)
        self.loss = np.where(self.mask, squared_loss(np.nan_to_num(predictions), np.nan_to_num(stream.truth)), 0.0)
        if flagged is None:
            scores = np.nan_to_num(predictions, nan=-1.0)
            flagged = np.isfinite(predictions) & (scores >= stream.request_thresholds())
        self.flagged = flagged
        self.request_flagged = self.flagged.any(axis=2)

    # -- loss ------------------------------------------------------------------------------------------------------
    def cumulative_loss(self) -> float:
        """Sum of squared losses over the (request, category) pairs with a truth, per replica, averaged."""
        return float(self.loss.sum() / self.stream.replicas)

    def observed_loss(self) -> float:
        """The same against the labels the learners were fed (noisy, and only where feedback came)."""
        fed = np.isfinite(self.stream.feedback) & np.isfinite(self.predictions)
        loss = squared_loss(np.nan_to_num(self.predictions), np.nan_to_num(self.stream.feedback))
        return float(np.where(fed, loss, 0.0).sum() / self.stream.replicas)

    def rows(self) -> float:
        return float(self.mask.sum() / self.stream.replicas)

    # -- decisions -------------------------------------------------------------------------------------------------
    def _category_scores(self, span: slice, tenant: int | None = None) -> dict[str, dict[str, float]]:
        out = {}
        for c, cat in enumerate(self.stream.categories):
            f1s, aps, losses = [], [], []
            for r in range(self.stream.replicas):
                keep = self.mask[r, span, c]
                if tenant is not None:
                    keep = keep & (self.stream.tenant[r, span] == tenant)
                if not keep.any():
                    continue
                y = self.stream.truth[r, span, c][keep] > 0.5
                f1s.append(f1_score(y, self.flagged[r, span, c][keep]))
                aps.append(average_precision(y, self.predictions[r, span, c][keep]))
                losses.append(float(self.loss[r, span, c][keep].mean()))
            if losses:
                out[cat] = {"f1": _mean(f1s), "auprc": _mean(aps), "mean_loss": _mean(losses)}
        return out

    def _request_rates(self, span: slice, tenant: int | None = None) -> dict[str, float]:
        unsafe = self.stream.unsafe[:, span]
        chosen = np.ones(unsafe.shape, dtype=bool) if tenant is None else self.stream.tenant[:, span] == tenant
        flagged = self.request_flagged[:, span]
        return {
            "false_positive_rate": _mean(
                [_share(flagged[r], (unsafe[r] == 0) & chosen[r]) for r in range(len(unsafe))]
            ),
            "recall": _mean([_share(flagged[r], (unsafe[r] == 1) & chosen[r]) for r in range(len(unsafe))]),
            "benign_requests": float(np.sum((unsafe == 0) & chosen) / len(unsafe)),
            "unsafe_requests": float(np.sum((unsafe == 1) & chosen) / len(unsafe)),
        }

    def summary(self, span: slice = slice(None), tenant: int | None = None) -> dict:
        """Loss, per-category F1/AUPRC, false-positive rate and recall over ``span`` (and one tenant)."""
        keep = self.mask[:, span]
        if tenant is not None:
            keep = keep & (self.stream.tenant[:, span, None] == tenant)
        per_category = self._category_scores(span, tenant)
        return {
            "cumulative_loss": float(np.where(keep, self.loss[:, span], 0.0).sum() / self.stream.replicas),
            "rows": float(keep.sum() / self.stream.replicas),
            "f1_macro": _mean([v["f1"] for v in per_category.values()]),
            "auprc_macro": _mean([v["auprc"] for v in per_category.values()]),
            **self._request_rates(span, tenant),
            "categories": per_category,
        }

    def windowed(self) -> dict:
        """Mean loss, and F1 and AUPRC per category, in each window (replica-averaged)."""
        size = self.windows.size
        loss, f1, auprc = [], {c: [] for c in self.stream.categories}, {c: [] for c in self.stream.categories}
        for start in self.windows.starts:
            span = slice(int(start), int(start) + size)
            keep = self.mask[:, span]
            loss.append(float(self.loss[:, span].sum() / keep.sum()) if keep.any() else math.nan)
            scores = self._category_scores(span)
            for cat in self.stream.categories:
                f1[cat].append(scores.get(cat, {}).get("f1", math.nan))
                auprc[cat].append(scores.get(cat, {}).get("auprc", math.nan))
        return {"mean_loss": loss, "f1": f1, "auprc": auprc}

    def jailbreak_recall(self) -> float | None:
        """Share of jailbreak requests flagged (None when the stream has none)."""
        if self.stream.jailbreak is None or not self.stream.jailbreak.any():
            return None
        return _mean([_share(self.request_flagged[r], self.stream.jailbreak[r]) for r in range(self.stream.replicas)])

    def request_losses(self) -> np.ndarray:
        """Loss per request summed over categories, ``(R, T)``."""
        return self.loss.sum(axis=2)


def segment_oracle_losses(stream: Stream, expert_loss: np.ndarray, start: int, end: int) -> np.ndarray:
    """Per request in ``[start, end)``: the loss of each stream's best expert *of that span*, summed over categories.

    The reference a learner should reach after a drift: the expert that is best once the world has changed.
    """
    R, _, C, _ = expert_loss.shape
    out = np.zeros((R, end - start))
    for r in range(R):
        for j in range(len(stream.tenants)):
            rows = stream.tenant[r, start:end] == j
            for c in range(C):
                losses = expert_loss[r, start:end, c]
                valid = rows & np.isfinite(losses).any(axis=1) & stream.evaluated[r, start:end, c]
                if not valid.any():
                    continue
                totals = np.where(np.isfinite(losses[valid]), losses[valid], np.inf).sum(axis=0)
                best = int(np.argmin(totals))
                out[r, valid] += np.nan_to_num(losses[valid, best])
    return out


def recovery_steps(
    learner_loss: np.ndarray,
    oracle_loss: np.ndarray,
    window: int,
    tolerance: float = 0.1,
) -> float | None:
    """Requests after a drift until the learner's mean loss over ``window`` requests comes within ``tolerance``
    (relative) of the segment oracle's mean loss, averaged over replicas; None if a replica never gets there.

    ``learner_loss`` and ``oracle_loss`` are ``(R, L)`` per-request losses from the drift to the next one.
    """
    found = []
    for learner, oracle in zip(learner_loss, oracle_loss, strict=True):
        if len(learner) < window:
            return None
        kernel = np.ones(window)
        excess = np.convolve(learner - oracle, kernel, mode="valid") / window
        allowed = tolerance * max(float(oracle.mean()), 1e-9)
        hits = np.flatnonzero(excess <= allowed)
        if len(hits) == 0:
            return None
        found.append(int(hits[0]))
    return float(np.mean(found))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance a random positive outscores a random negative (ties count half).

    The Mann-Whitney statistic over average ranks, equal to scikit-learn's ``roc_auc_score``; NaN when either class
    is absent (a set of unsafe prompts only has no false-positive axis).

    >>> auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    >>> auroc(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9]))
    0.75
    """
    labels = np.asarray(labels, dtype=bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return math.nan
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    ranked = scores[order]
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # ties share the average of their ranks
    starts = np.r_[0, np.flatnonzero(np.diff(ranked)) + 1]
    ends = np.r_[starts[1:], len(ranked)]
    for a, b in zip(starts, ends, strict=True):
        if b - a > 1:
            ranks[order[a:b]] = (a + 1 + b) / 2
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | int]:
    """AUROC, AUPRC, and F1 / precision / recall / false-positive rate of ``score >= threshold`` (as the policy
    decides), over the rows with a label and a score; ``rows`` and ``positives`` say how many there were.

    A metric the rows cannot define is NaN (one class only: no AUROC; no flag: no precision), never a guess, so a
    report can print it as missing.

    >>> m = binary_metrics(np.array([1.0, 0.0, np.nan, 1.0]), np.array([0.9, 0.6, 0.2, np.nan]), 0.5)
    >>> m["rows"], m["positives"], m["precision"], m["recall"], m["fpr"], round(m["f1"], 3)
    (2, 1, 0.5, 1.0, 1.0, 0.667)
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    keep = np.isfinite(labels) & np.isfinite(scores)
    y, s = labels[keep] > 0.5, scores[keep]
    flagged = s >= threshold
    tp, fp = int(np.sum(y & flagged)), int(np.sum(~y & flagged))
    positives, negatives = int(y.sum()), int((~y).sum())
    return {
        "auroc": auroc(y, s),
        "auprc": average_precision(y, s),
        "f1": f1_score(y, flagged),
        "precision": tp / (tp + fp) if tp + fp else math.nan,
        "recall": tp / positives if positives else math.nan,
        "fpr": fp / negatives if negatives else math.nan,
        "rows": int(keep.sum()),
        "positives": positives,
    }
