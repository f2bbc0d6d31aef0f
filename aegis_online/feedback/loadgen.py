"""Synthetic predictions and feedback events for tests, benchmarks and load tests of the feedback path.

Predictions look like the engine's: every category of the default taxonomy evaluated by N experts (a few asleep),
so a logged record has a production size. Feedback labels one category or a few, as a moderator does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from aegis_online.schemas import FeedbackEvent
from aegis_online.state import PredictionRecord
from aegis_online.taxonomy import CANONICAL_IDS


def predictions(
    n: int,
    tenants: Sequence[str],
    experts: Sequence[str],
    rng: np.random.Generator,
    *,
    categories: Sequence[str] = CANONICAL_IDS,
    asleep: float = 0.02,
    prefix: str = "req",
) -> list[PredictionRecord]:
    """``n`` records of random tenants; expert outputs are noisy copies of a latent risk per category."""
    cats = tuple(categories)
    now = time.time()
    out = []
    for i in range(n):
        risk = rng.beta(1.0, 6.0, len(cats))
        outputs = np.clip(risk[:, None] + rng.normal(0.0, 0.15, (len(cats), len(experts))), 0.0, 1.0)
        outputs[rng.random(outputs.shape) < asleep] = np.nan
        scores = np.nanmean(np.where(np.isnan(outputs), np.nan, outputs), axis=1)
        flagged = tuple(c for c, s in zip(cats, scores, strict=True) if s >= 0.5)
        out.append(
            PredictionRecord(
                request_id=f"{prefix}-{i:08d}",
                tenant=str(tenants[int(rng.integers(len(tenants)))]),
                check="prompt",
                created=now,
                experts=tuple(experts),
                categories=cats,
                outputs=outputs,
                scores=scores,
                flagged=flagged,
            )
        )
    return out


def feedback(
    records: Sequence[PredictionRecord],
    rng: np.random.Generator,
    *,
    labels_per_event: int = 1,
    categories: Sequence[str] | None = None,
    first_id: int = 0,
) -> list[FeedbackEvent]:
    """One event per record, labelling ``labels_per_event`` of its categories (from ``categories`` if given) with
    0 or 1 drawn from the record's own risk, so the experts closest to it earn weight."""
    events = []
    for i, record in enumerate(records):
        allowed = [c for c in record.categories if categories is None or c in categories]
        chosen = rng.choice(len(allowed), size=min(labels_per_event, len(allowed)), replace=False)
        labels = {}
        for j in chosen:
            c = record.categories.index(allowed[int(j)])
            risk = float(np.nanmean(record.outputs[c])) if not np.isnan(record.outputs[c]).all() else 0.5
            labels[allowed[int(j)]] = float(rng.random() < risk)
        events.append(
            FeedbackEvent(
                request_id=record.request_id,
                tenant=record.tenant,
                labels=labels,
                event_id=f"fb-{first_id + i:08d}",
                trusted=True,
            )
        )
    return events
