"""Offline evaluation: how well each expert, and the ensemble the service would run, separates safe from unsafe on
labelled data sets, per category and for the whole request.

A replay asks how the learners *adapt* along a stream; ``eval`` asks the prior question, how good the raw material
is: per data set, per predictor, AUROC and AUPRC (ranking, threshold-free) and F1 / precision / recall / FPR at the
policy's thresholds (what a tenant with that policy would see before any feedback). Everything goes through the
service's own code, so the numbers are the service's:

- an expert's whole-request score is ``weights.updates.overall_outputs`` (its highest score over the categories the
  policy acts on), decided against ``policy.overall_threshold()``; a category score against
  ``policy.threshold_for(category)``;
- ``ensemble`` is ``ensemble.combine`` under the configured learner's initial state (uniform weights, no
  calibration yet): categories and the whole-request row at once, exactly as ``Moderator.decide`` stacks them;
- ``ensemble_weights`` (with a weights snapshot) is the same ``combine`` under the snapshot's weights.

A predictor is left out of a category it does not cover (no placeholder score); a metric the rows cannot define
(one class only) is None in the JSON. ``error_correlation`` is the Pearson correlation of the experts' whole-request
residuals ``score - label``: experts that err together add little to an ensemble.

``evaluate_outputs`` works on precomputed score matrices, so a benchmark (leave one data set out, other heads) can
reuse the metrics without the data readers or the cache; ``run_eval`` reads the files, scores them through the
replay cache and calls it once per data set.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aegis_online.datasets import LabelledText
from aegis_online.ensemble import combine
from aegis_online.experts import Expert
from aegis_online.learn import DEFAULT_LEARNER, Learner, known_learner, make_learner
from aegis_online.learn.base import normalise_log
from aegis_online.policy import TenantPolicy
from aegis_online.schemas import OVERALL
from aegis_online.simulate.cache import ReplayCache
from aegis_online.simulate.expert_outputs import output_matrix, score_texts
from aegis_online.simulate.predictor_metrics import binary_metrics
from aegis_online.simulate.traffic import DataSpec, chain, fitted_on
from aegis_online.taxonomy import CANONICAL_IDS

#: Predictor names of the combined scores.
ENSEMBLE, ENSEMBLE_WEIGHTS = "ensemble", "ensemble_weights"
EVAL_VERSION = 1
#: Log-weight (relative to the snapshot's smallest) of an expert a snapshot gives no weight for a category it now
#: covers: next to nothing beside weighted experts, the whole ensemble when it answers alone (never a silent 0).
ABSENT_LOG_WEIGHT = -30.0

Progress = Callable[[str, int, int], None]


class SnapshotLearner(Learner):
    """A learner frozen at given weights: its state is the log-weight vector itself, so ``ensemble.combine`` weighs
    the experts by a snapshot with the service's own rule (awake experts renormalised). It has no calibration (a
    weights export holds none) and never learns."""

    name = "snapshot"

    @property
    def state_size(self) -> int:
        return self.n_experts

    def _initial_state(self) -> np.ndarray:
        return np.zeros(self.n_experts)

    def _log_weights(self, states: np.ndarray) -> np.ndarray:
        return normalise_log(states)

    def _update(self, states: np.ndarray, losses: np.ndarray) -> np.ndarray:
        raise NotImplementedError("a weights snapshot does not learn")


@dataclass(frozen=True)
class WeightsSnapshot:
    """Expert weights per category, in the JSON the service exports them as (``TenantWeights``:
    ``GET /v1/tenants/{tenant}/weights`` and ``GET /v1/weights/global``, ``AegisClient.weights``)::

        {"tenant": "global", "learner": "...", "experts": ["a", "b"],
         "categories": {"S8": {"scope": "global", "weights": {"a": 0.7, "b": 0.3}}, ...}}

    The export leaves out experts that do not score a category; a category (or ``overall``) it lacks is weighed
    uniformly (``fallback`` in the report says which).
    """

    tenant: str
    learner: str
    experts: tuple[str, ...]
    categories: Mapping[str, Mapping[str, float]]
    path: str = ""

    @classmethod
    def load(cls, path: Path) -> WeightsSnapshot:
        """Read and validate a snapshot file; ValueError naming the file and the field otherwise."""
        from pydantic import ValidationError

        from aegis_online.api_models.native import TenantWeights

        try:
            body = TenantWeights.model_validate(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"--weights: {path}: {error}") from None
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "(snapshot)"
            raise ValueError(
                f"--weights: {path}: {where}: {first['msg']} (expected the JSON of GET /v1/tenants/<tenant>/weights)"
            ) from None
        categories = {c: dict(w.weights) for c, w in body.categories.items()}
        return cls(body.tenant, body.learner, tuple(body.experts), categories, str(path))

    def states(self, experts: Sequence[str], keys: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Log-weight states ``(K, N)`` of ``SnapshotLearner`` for ``keys`` (categories, ``overall``), and the keys
        the snapshot has no weights for (uniform)."""
        unknown = [e for e in experts if e not in self.experts]
        if unknown:
            raise ValueError(
                f"--weights: {self.path or 'snapshot'}: no weights for expert(s) {unknown}; it holds "
                f"{', '.join(self.experts)} (choose those with --experts)"
            )
        states = np.zeros((len(keys), len(experts)))
        fallback = []
        for k, key in enumerate(keys):
            weights = self.categories.get(key)
            positive = {e: w for e, w in (weights or {}).items() if w > 0}
            if not positive:
                fallback.append(key)
                continue
            logs = {e: math.log(w) for e, w in positive.items()}
            floor = min(logs.values()) + ABSENT_LOG_WEIGHT
            states[k] = [logs.get(e, floor) for e in experts]
        return states, fallback


def expert_overall(outputs: np.ndarray, acted: np.ndarray | None = None) -> np.ndarray:
    """Each expert's whole-request score per row ``(T, N)`` from ``(T, C, N)``: ``overall_outputs`` row by row,
    the service's definition (highest score over the acted-on categories; NaN where it scored none)."""
    from aegis_online.weights.updates import overall_outputs

    if len(outputs) == 0:
        return np.zeros((0, outputs.shape[2]))
    return np.stack([overall_outputs(o, acted) for o in outputs])


def ensemble_scores(learner: Learner, states: np.ndarray, outputs: np.ndarray, overall: np.ndarray) -> np.ndarray:
    """``ensemble.combine`` of every row's categories and whole-request row, ``(T, C + 1)``, under ``states``
    ``(C + 1, S)``: one batched call, the same rows ``Moderator.decide`` combines per request."""
    full = np.concatenate([outputs, overall[:, None, :]], axis=1)
    rows, keys, n = full.shape
    if rows == 0:
        return np.zeros((0, keys))
    combination = combine(learner, np.tile(states, (rows, 1)), full.reshape(rows * keys, n))
    return combination.scores.reshape(rows, keys)


def _none(value: Any) -> Any:
    """NaN as None, recursively: undefined metrics are null in the JSON, never NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _none(v) for k, v in value.items()}
    return value


def error_correlation(residuals: np.ndarray, experts: Sequence[str]) -> dict[str, dict[str, float | None]]:
    """Pearson correlation of each pair of experts' residuals ``(T, N)`` over the rows both scored; None where it is
    undefined (fewer than two rows, or an expert whose error does not vary).

    >>> r = np.array([[0.1, 0.2, -0.1], [0.3, 0.6, 0.3], [-0.2, -0.4, 0.0]])
    >>> c = error_correlation(r, ["a", "b", "c"])
    >>> c["a"]["b"], c["a"]["a"]
    (1.0, 1.0)
    """
    out: dict[str, dict[str, float | None]] = {a: {} for a in experts}
    for i, a in enumerate(experts):
        for j, b in enumerate(experts):
            if j < i:
                out[a][b] = out[b][a]
                continue
            both = np.isfinite(residuals[:, i]) & np.isfinite(residuals[:, j])
            x, y = residuals[both, i], residuals[both, j]
            if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
                out[a][b] = None
            else:
                out[a][b] = round(float(np.corrcoef(x, y)[0, 1]), 12)
    return out


def _predictor_entry(
    scores: np.ndarray,
    overall: np.ndarray,
    truth: np.ndarray,
    unsafe: np.ndarray,
    categories: Sequence[str],
    thresholds: np.ndarray,
    overall_threshold: float,
    labelled: np.ndarray,
) -> dict[str, Any]:
    entry: dict[str, Any] = {"overall": _none(binary_metrics(unsafe, overall, overall_threshold)), "categories": {}}
    for c, cat in enumerate(categories):
        covered = np.isfinite(scores[:, c]).any()
        if labelled[c] and covered:
            entry["categories"][cat] = _none(binary_metrics(truth[:, c], scores[:, c], float(thresholds[c])))
    return entry


def evaluate_outputs(
    outputs: np.ndarray,
    truth: np.ndarray,
    unsafe: np.ndarray,
    *,
    experts: Sequence[str],
    categories: Sequence[str],
    policy: TenantPolicy | None = None,
    learner: str = DEFAULT_LEARNER,
    weights: WeightsSnapshot | None = None,
) -> dict[str, Any]:
    """Metrics of each expert and of the ensemble(s) on one data set, from precomputed scores.

    ``outputs`` ``(T, C, N)``: expert ``n``'s probability for category ``c`` of row ``t`` (NaN: it does not cover
    ``c``, or failed); ``truth`` ``(T, C)``: the 0/1 label (NaN: the data set does not label it; a category whose
    column is all NaN gets no metrics); ``unsafe`` ``(T,)``: the whole-request verdict (NaN: unknown). Give
    ``categories`` every category the experts cover, labelled or not: the whole-request score is the highest over
    them all, as the service computes it. Returns the data set's JSON entry: ``rows``, ``unsafe_rows``,
    ``safe_rows``, ``categories`` (the labelled ones), ``predictors``, then per predictor ``overall`` and
    ``categories.<id>`` (``auroc``, ``auprc``, ``f1``, ``precision``, ``recall``, ``fpr``, ``rows``,
    ``positives``; None where undefined), and ``error_correlation``.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    unsafe = np.asarray(unsafe, dtype=np.float64)
    rows, n_cats, n_experts = outputs.shape
    if (n_cats, n_experts) != (len(categories), len(experts)):
        raise ValueError(f"outputs {outputs.shape} do not match {len(categories)} categories x {len(experts)} experts")
    if truth.shape != (rows, n_cats) or unsafe.shape != (rows,):
        raise ValueError(f"truth must be {(rows, n_cats)} and unsafe {(rows,)}, got {truth.shape} and {unsafe.shape}")
    policy = policy or TenantPolicy(tenant="default")
    thresholds = np.array([policy.threshold_for(c) for c in categories])
    overall_threshold = policy.overall_threshold()
    acted = np.array([policy.action_for(c) != "allow" for c in categories], dtype=bool)
    labelled = np.isfinite(truth).any(axis=0)
    overall = expert_overall(outputs, acted)

    def entry(scores: np.ndarray, whole: np.ndarray) -> dict[str, Any]:
        return _predictor_entry(scores, whole, truth, unsafe, categories, thresholds, overall_threshold, labelled)

    result: dict[str, Any] = {
        "rows": rows,
        "unsafe_rows": int(np.sum(unsafe == 1)),
        "safe_rows": int(np.sum(unsafe == 0)),
        "categories": [c for c, known in zip(categories, labelled, strict=True) if known],
    }
    predictors: dict[str, Any] = {name: entry(outputs[:, :, i], overall[:, i]) for i, name in enumerate(experts)}
    real = make_learner(learner, n_experts)
    combined = ensemble_scores(real, real.init_states(n_cats + 1), outputs, overall)
    predictors[ENSEMBLE] = entry(combined[:, :-1], combined[:, -1])
    if weights is not None:
        states, fallback = weights.states(experts, [*categories, OVERALL])
        snapshot = ensemble_scores(SnapshotLearner(n_experts), states, outputs, overall)
        predictors[ENSEMBLE_WEIGHTS] = entry(snapshot[:, :-1], snapshot[:, -1])
        predictors[ENSEMBLE_WEIGHTS]["uniform_fallback"] = [
            k for k in fallback if k == OVERALL or k in predictors[ENSEMBLE_WEIGHTS]["categories"]
        ]
    result["predictors"] = list(predictors)
    result.update(predictors)
    result["error_correlation"] = error_correlation(overall - unsafe[:, None], experts)
    return result


# -- from files ----------------------------------------------------------------------------------------------------
@dataclass
class EvalConfig:
    """What ``run_eval`` reads and how it decides: the data files, the policy, the learner, an optional snapshot."""

    data: Sequence[DataSpec]
    policy: TenantPolicy = field(default_factory=lambda: TenantPolicy(tenant="default"))
    learner: str = DEFAULT_LEARNER
    weights: WeightsSnapshot | None = None
    #: Seed of the shuffle before ``--limit`` cuts a file (the same sample as ``replay``'s).
    seed: int = 0


def truth_matrix(rows: Sequence[LabelledText], categories: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(T, C)`` labels of the categories the rows label explicitly (a safe row is 0 for each of those; NaN
    elsewhere: a data set that only gives verdicts labels no category) and the ``(T,)`` verdicts (NaN: unknown)."""
    labelled = {c for r in rows for c in r.labels}
    truth = np.full((len(rows), len(categories)), np.nan)
    for c, cat in enumerate(categories):
        if cat in labelled:
            truth[:, c] = [np.nan if (v := r.label(cat)) is None else float(v) for r in rows]
    unsafe = np.array([np.nan if r.unsafe is None else float(r.unsafe) for r in rows])
    return truth, unsafe


def in_sample(experts: Sequence[Expert], spec: DataSpec, entry: Mapping[str, Any]) -> list[str]:
    """The predictors whose figures on ``spec``'s rows are in-sample: the experts fitted on them (``fitted_on``), and
    then the ensembles, which combine them."""
    fitted = fitted_on(experts, spec)
    names = {e.name for e in experts}
    return fitted + [p for p in entry["predictors"] if p not in names] if fitted else []


def run_eval(
    config: EvalConfig,
    experts: Sequence[Expert],
    cache: ReplayCache,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Read each data file, score its texts with ``experts`` through the replay cache (misses only), and evaluate;
    the ``eval.json`` document (``datasets.<name>`` from ``evaluate_outputs``)."""
    if not known_learner(config.learner):
        raise ValueError(f"--learner: unknown learner {config.learner!r}")
    if not experts:
        raise ValueError("--experts: no experts to evaluate")
    traffic = chain(config.data, shuffle=True, seed=config.seed)
    if not traffic.rows:
        raise ValueError("--data: the data files hold no rows")
    names = [e.name for e in experts]
    if config.weights is not None:
        config.weights.states(names, [])  # an expert the snapshot lacks: say so before scoring anything
    texts = [r.text for r in traffic.rows]
    failures = score_texts(experts, texts, cache, progress=progress)
    covered = {c for e in experts for c in e.categories}
    categories = [c for c in CANONICAL_IDS if c in covered]
    outputs = output_matrix(experts, texts, categories, cache)
    datasets = {}
    for segment, spec in zip(traffic.segments, traffic.sources, strict=True):
        rows = traffic.rows[segment.start : segment.end]
        truth, unsafe = truth_matrix(rows, categories)
        entry = evaluate_outputs(
            outputs[segment.start : segment.end],
            truth,
            unsafe,
            experts=names,
            categories=categories,
            policy=config.policy,
            learner=config.learner,
            weights=config.weights,
        )
        datasets[segment.name] = {"path": str(spec.path), "in_sample": in_sample(experts, spec, entry), **entry}
    notes = {
        "overall": "the whole-request verdict (row.unsafe) against each predictor's whole-request score: an expert's "
        "highest category score over the categories the policy acts on (weights.updates.overall_outputs), the "
        "ensemble's combined whole-request row; decided at the policy's overall threshold",
        "categories": "only categories the data set labels and the predictor covers; decided at the policy's "
        "threshold for the category",
        ENSEMBLE: f"ensemble.combine under the initial state of learner {config.learner} (uniform weights)",
        "null": "a metric the rows cannot define (one class only, no flag)",
        "error_correlation": "Pearson correlation of the experts' whole-request residuals (score - verdict)",
        "in_sample": "predictors fitted on this data set's rows (experts whose training provenance names the file; "
        "then the ensembles, which combine them): their figures here say how well they remember, not how well they "
        "generalise (--held-out-rows reads only the rows the shipped heads left out)",
    }
    if config.weights is not None:
        notes[ENSEMBLE_WEIGHTS] = (
            "ensemble.combine under the --weights snapshot's weights (no calibration); uniform_fallback names the "
            "keys the snapshot has no weights for"
        )
    return {
        "version": EVAL_VERSION,
        "kind": "eval",
        "experts": names,
        "expert_categories": {e.name: [c for c in CANONICAL_IDS if c in e.categories] for e in experts},
        "expert_failures": failures,
        "learner": config.learner,
        "policy": {
            "tenant": config.policy.tenant,
            "overall_threshold": config.policy.overall_threshold(),
            "thresholds": {c: config.policy.threshold_for(c) for c in categories},
        },
        "weights": None if config.weights is None else config.weights.path,
        "datasets": datasets,
        "notes": notes,
    }
