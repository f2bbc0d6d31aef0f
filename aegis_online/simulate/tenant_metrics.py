"""Whole-request metrics of one tenant's decisions: F1, precision, recall, FPR, AUPRC, loss and cost, rolling F1, how
many labels a predictor needs to come within a point of its final F1, the best fixed threshold in hindsight, and a
logistic combination of the experts fitted in hindsight (the ceiling of what a combiner of those experts could reach).

Everything here reads one tenant's labelled requests in replay order: ``labels`` (0/1, the tenant's overall verdict
on the request), ``flagged`` (the decision taken) and ``scores`` (the probability behind it). Pure numpy.

Convergence is measured on a trailing window of ``window`` labels: ``rolling_f1[n]`` is the F1 of the decisions on
the tenant's labels ``n - window + 1 .. n`` (1-based; a full window only). A span's *final* F1 is the F1 of its last
quarter of labels (at least one window). *Labels to within 1 point* is the first ``n >= window`` whose rolling F1
is at least the final F1 minus ``tolerance`` (0.01): a first crossing, so on a noisy window it is an optimistic
reading; the window and the final value are reported beside it.

*Cost* is the tenant's own measure, not F1's: with ``c`` the cost ratio of a missed harm to a false alarm of the policy
in force at the request, a request costs ``(c * [missed] + [false alarm]) / max(c, 1)``, so the costlier error costs 1
and the other ``min(c, 1 / c)``; ``cost`` is the mean over the labelled requests. A threshold learned toward the
policy's cost ratio minimises exactly this, which F1 does not.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from aegis_online.simulate.predictor_metrics import average_precision, f1_score

#: Labels in the trailing window of the rolling F1.
DEFAULT_WINDOW = 100
#: "Within 1 F1 point".
TOLERANCE = 0.01
#: Share of a span's labels (its end) whose F1 is the span's final value.
FINAL_SHARE = 0.25


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def decision_cost(labels: np.ndarray, flagged: np.ndarray, cost_ratios: np.ndarray) -> float:
    """Mean cost-weighted decision loss per labelled request at each request's cost ratio (module docstring).

    >>> decision_cost(np.array([1, 1, 0, 0]), np.array([0, 1, 1, 0]), np.array([3.0, 3.0, 3.0, 0.5]))
    0.3333333333333333
    """
    y = np.asarray(labels, dtype=bool)
    f = np.asarray(flagged, dtype=bool)
    c = np.asarray(cost_ratios, dtype=np.float64)
    if not len(y):
        return math.nan
    per_request = (c * (y & ~f) + (~y & f)) / np.maximum(c, 1.0)
    return float(per_request.mean())


def decision_metrics(
    labels: np.ndarray, flagged: np.ndarray, scores: np.ndarray, cost_ratios: np.ndarray | None = None
) -> dict[str, Any]:
    """F1, precision, recall and false-positive rate of ``flagged``; AUPRC and mean squared loss of ``scores``; and
    ``cost`` at ``cost_ratios`` (one per request) when given.

    A request without a score (NaN: no expert answered) counts for the decision metrics, not for AUPRC and loss.
    """
    y = np.asarray(labels, dtype=bool)
    f = np.asarray(flagged, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    tp, fp = int(np.sum(y & f)), int(np.sum(~y & f))
    scored = np.isfinite(s)
    out = {
        "f1": f1_score(y, f),
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, int(y.sum())),
        "fpr": _ratio(fp, int((~y).sum())),
        "auprc": average_precision(y[scored], s[scored]) if scored.any() else math.nan,
        "loss": float(np.mean((s[scored] - y[scored]) ** 2)) if scored.any() else math.nan,
        "labels": len(y),
        "positives": int(y.sum()),
    }
    if cost_ratios is not None:
        out["cost"] = decision_cost(y, f, cost_ratios)
    return out


def rolling_f1(labels: np.ndarray, flagged: np.ndarray, window: int) -> np.ndarray:
    """F1 over the trailing ``window`` labels at each label (index ``n - 1`` for label ``n``); NaN before a full window.

    >>> rolling_f1(np.array([1, 0, 1, 1]), np.array([1, 1, 1, 0]), 2).round(3).tolist()
    [nan, 0.667, 0.667, 0.667]
    """
    y = np.asarray(labels, dtype=np.int64)
    f = np.asarray(flagged, dtype=np.int64)
    out = np.full(len(y), np.nan)
    if window < 1 or len(y) < window:
        return out
    tp = np.convolve(y * f, np.ones(window, dtype=np.int64), mode="valid")
    fp = np.convolve((1 - y) * f, np.ones(window, dtype=np.int64), mode="valid")
    fn = np.convolve(y * (1 - f), np.ones(window, dtype=np.int64), mode="valid")
    den = 2 * tp + fp + fn
    out[window - 1 :] = np.divide(2 * tp, den, out=np.full(len(den), np.nan), where=den > 0)
    return out


def convergence(labels: np.ndarray, flagged: np.ndarray, window: int, tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Labels of this span until the rolling F1 first reaches the span's final F1 minus ``tolerance``.

    ``labels`` is None when it never does (or the span is shorter than a window).
    """
    y = np.asarray(labels, dtype=bool)
    f = np.asarray(flagged, dtype=bool)
    tail = max(window, math.ceil(FINAL_SHARE * len(y)))
    final = f1_score(y[-tail:], f[-tail:]) if len(y) else math.nan
    curve = rolling_f1(y, f, window)
    hits = np.flatnonzero(np.isfinite(curve) & (curve >= final - tolerance - 1e-12)) if math.isfinite(final) else []
    return {
        "labels": int(hits[0]) + 1 if len(hits) else None,
        "final_f1": final,
        "window": window,
        "span_labels": len(y),
    }


def best_threshold(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The threshold ``t`` (one of the scores) for which flagging ``score >= t`` has the highest F1, and that F1.

    NaN scores are never flagged. Ties keep the highest threshold (the fewest flags).

    >>> best_threshold(np.array([0, 1, 1, 0]), np.array([0.1, 0.7, 0.6, 0.65]))
    (0.6, 0.8)
    """
    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    positives = int(y.sum())
    finite = np.isfinite(s)
    if not finite.any() or positives == 0:
        return math.nan, math.nan
    order = np.argsort(-s[finite], kind="mergesort")
    ranked, hits = s[finite][order], y[finite][order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]
    tp = np.cumsum(hits)[last_of_tie]
    flagged = last_of_tie + 1
    f1 = 2 * tp / (flagged + positives)
    best = int(np.argmax(f1))
    return float(ranked[last_of_tie[best]]), float(f1[best])


def _logits(scores: np.ndarray) -> np.ndarray:
    """Experts' probabilities as clipped logits; a missing score (NaN) is 0, no evidence either way."""
    p = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.5), 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def _penalised_log_loss(x: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float) -> float:
    z = x @ w
    return float(np.sum(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * np.sum(w[:-1] ** 2))


def hindsight_combiner(labels: np.ndarray, scores: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """The probabilities of a logistic regression over the experts' logits (``scores``: ``(n, experts)``, with an
    intercept), fitted on these same labels: an oracle in hindsight, the best any fixed combiner of these experts'
    logits could have separated the classes, like ``best_threshold`` is for one expert.

    Penalised log loss (``l2 / 2`` times the squared weights, the intercept free: scikit-learn's default at
    ``C = 1 / l2``), minimised by Newton's method with step halving. Pure numpy. A single class gives its rate.
    """
    y = np.asarray(labels, dtype=np.float64)
    x = np.c_[_logits(np.asarray(scores).reshape(len(y), -1)), np.ones(len(y))]
    if not len(y) or y.min() == y.max():
        return np.full(len(y), y.mean() if len(y) else math.nan)
    penalty = np.r_[np.full(x.shape[1] - 1, l2), 0.0]
    w = np.zeros(x.shape[1])
    loss = _penalised_log_loss(x, y, w, l2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) + penalty * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while (new := _penalised_log_loss(x, y, w - scale * step, l2)) > loss and scale > 1e-6:
            scale /= 2
        w, loss = w - scale * step, new
        if np.max(np.abs(scale * step)) < 1e-10:
            break
    return 1.0 / (1.0 + np.exp(-(x @ w)))
