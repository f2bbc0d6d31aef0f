"""Per-category calibration of profanity-check's P(offensive): one logistic map per category, fitted on labelled data.

profanity-check gives one number, P(offensive), learned from toxic comments. What it means for profanity (S12),
harassment (S10) or hate (S8) differs: most hate is offensive, most offensive text is not hate. A fixed fraction per
category (the old 0.5 x P for S8) cannot be right for any of them and kept S8 below the 0.5 threshold for ever. Here
each category gets Platt scaling, ``p_c = sigmoid(slope_c * logit(P) + intercept_c)``, fitted by logistic regression
of the category label on ``logit(P)``: a monotone map, so it keeps the score's ranking (AUROC) and only makes the
number a probability of that category on the data it was fitted on.

The sets differ in size and prior by two orders of magnitude (24,783 tweets, 83% offensive, beside 450 XSTest
prompts): pooled rows would give Davidson's prior to every tenant. Each set's weight in the fit is therefore capped
at ``SET_WEIGHT_CAP`` rows (its rows share that weight); smaller sets count as their rows. (Equal weight per set was
tried and is worse: HarmBench's 25 harassment rows, all positive, then weigh as much as OpenAI's 1,586 and lift
every text's S10 to about 0.35. The same cap on the heads' training was tried too, and dropped: leave-one-dataset-out
it moved the ensemble's AUROC by -0.012 on OpenAI moderation and +0.010 on XSTest, no gain.)

The shipped fit (``profanity-calibration.json`` beside this module) records its sources, rows, per-category metrics
and the command that made it; the tenant's online calibration (``learn.calibration``) adapts it further.

Imports only ``datasets``, numpy and, lazily, scikit-learn.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aegis_online.datasets import LabelledText

__all__ = [
    "CALIBRATION_FORMAT",
    "PACKAGED_CALIBRATION",
    "CategoryMap",
    "ProfanityCalibration",
    "fit_profanity_calibration",
]

CALIBRATION_FORMAT = "aegis-online/profanity-calibration"
CALIBRATION_VERSION = 1
#: The fit that ships with the package (``make heads`` rewrites it).
PACKAGED_CALIBRATION = Path(__file__).with_name("profanity-calibration.json")
#: The most weight one set has in a fit, in rows: about the size of the largest set after Davidson.
SET_WEIGHT_CAP = 2000.0
#: P(offensive) is clipped away from 0 and 1 before the logit (the model says 0.0 and 1.0 on some texts).
_EPS = 1e-4


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(q / (1.0 - q))


@dataclass(frozen=True)
class CategoryMap:
    """``p_c = sigmoid(slope * logit(P(offensive)) + intercept)`` for one category."""

    slope: float
    intercept: float

    def __call__(self, p: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.slope * _logit(p) + self.intercept)))


@dataclass(frozen=True)
class ProfanityCalibration:
    """Category id -> its map from P(offensive), with the provenance of the fit.

    >>> cal = ProfanityCalibration({"S12": CategoryMap(slope=1.0, intercept=0.0)})
    >>> round(float(cal.apply("S12", np.array([0.8]))[0]), 6)
    0.8
    """

    maps: Mapping[str, CategoryMap]
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def categories(self) -> frozenset[str]:
        return frozenset(self.maps)

    def apply(self, category_id: str, p: np.ndarray) -> np.ndarray:
        """The calibrated probability of ``category_id`` for each P(offensive) in ``p``."""
        return self.maps[category_id](p)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": CALIBRATION_FORMAT,
            "version": CALIBRATION_VERSION,
            "categories": {c: {"slope": m.slope, "intercept": m.intercept} for c, m in sorted(self.maps.items())},
            "provenance": self.provenance,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        p.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n")
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str] = PACKAGED_CALIBRATION) -> ProfanityCalibration:
        """Read a file written by ``save``; ValueError naming the path if it is not one."""
        p = Path(path)
        try:
            data = json.loads(p.read_text())
            if data.get("format") != CALIBRATION_FORMAT or data.get("version") != CALIBRATION_VERSION:
                raise ValueError(f"format {data.get('format')!r} version {data.get('version')!r}")
            maps = {
                str(c): CategoryMap(slope=float(m["slope"]), intercept=float(m["intercept"]))
                for c, m in data["categories"].items()
            }
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: no such calibration file") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{p}: not a profanity-calibration file ({error})") from None
        if not maps:
            raise ValueError(f"{p}: the calibration file maps no category")
        return cls(maps=maps, provenance=dict(data.get("provenance", {})))


def fit_profanity_calibration(
    sets: Mapping[str, Sequence[LabelledText]],
    offensive: Mapping[str, np.ndarray],
    categories: Sequence[str] = ("S12", "S10", "S8"),
    *,
    min_class_rows: int = 20,
    command: str | None = None,
) -> ProfanityCalibration:
    """Fit one Platt map per category on every set's labelled rows, each set weighing at most ``SET_WEIGHT_CAP`` rows.

    ``offensive[name]`` is P(offensive) for the rows of ``sets[name]``, in order. A category needs at least
    ``min_class_rows`` rows of each class over all sets. Raises ValueError when no category can be fitted.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    maps: dict[str, CategoryMap] = {}
    report: dict[str, Any] = {}
    for cat in categories:
        xs, ys, ws, per_set = [], [], [], {}
        for name, rows in sets.items():
            labels = [r.label(cat) for r in rows]
            index = [i for i, y in enumerate(labels) if y is not None]
            if not index:
                continue
            xs.append(_logit(offensive[name][index]))
            ys.append(np.asarray([labels[i] for i in index], dtype=np.int64))
            ws.append(np.full(len(index), min(1.0, SET_WEIGHT_CAP / len(index))))
            per_set[name] = {"rows": len(index), "positives": int(ys[-1].sum())}
        if not xs:
            continue
        x, y, w = np.concatenate(xs), np.concatenate(ys), np.concatenate(ws)
        positives, negatives = int(y.sum()), int(len(y) - y.sum())
        if min(positives, negatives) < min_class_rows:
            report[cat] = {"skipped": f"{positives} positive and {negatives} negative rows; need {min_class_rows}"}
            continue
        model = LogisticRegression(C=1e4, max_iter=1000).fit(x[:, None], y, sample_weight=w)
        maps[cat] = CategoryMap(slope=float(model.coef_[0, 0]), intercept=float(model.intercept_[0]))
        calibrated = maps[cat](1.0 / (1.0 + np.exp(-x)))
        raw = 1.0 / (1.0 + np.exp(-x))
        report[cat] = {
            "positives": positives,
            "negatives": negatives,
            "sets": per_set,
            "auroc": float(roc_auc_score(y, x, sample_weight=w)),
            "weighted_log_loss_raw": float(log_loss(y, raw, sample_weight=w)),
            "weighted_log_loss_calibrated": float(log_loss(y, calibrated, sample_weight=w)),
        }
    if not maps:
        raise ValueError(f"no category of {list(categories)} had enough labelled rows to calibrate")
    import sklearn

    provenance: dict[str, Any] = {
        "method": f"Platt scaling of logit(P(offensive)) per category; each set weighs at most {SET_WEIGHT_CAP:g} rows",
        "sources": {name: len(rows) for name, rows in sets.items()},
        "sklearn": sklearn.__version__,
        "categories": report,
    }
    if command:
        provenance["command"] = command
    return ProfanityCalibration(maps=maps, provenance=provenance)


def main(argv: Sequence[str] | None = None) -> None:
    """Refit the shipped calibration on the shared sets (``make heads`` runs this)."""
    import argparse

    from aegis_online.datasets import SHARED_SETS, load_shared
    from aegis_online.experts.cpu.profanity import offensive_probability

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--out", type=Path, default=PACKAGED_CALIBRATION, help="Where to write the JSON.")
    parser.add_argument("--data-dir", type=Path, default=None, help="Folder of the shared sets.")
    args = parser.parse_args(argv)
    sets = {s.name: load_shared(s.name, args.data_dir) for s in SHARED_SETS}
    offensive = {name: offensive_probability([r.text for r in rows]) for name, rows in sets.items()}
    command = "python -m aegis_online.experts.cpu.profanity_calibration" + (
        f" --out {args.out}" if args.out != PACKAGED_CALIBRATION else ""
    )
    calibration = fit_profanity_calibration(sets, offensive, command=command)
    calibration.save(args.out)
    for cat, entry in calibration.provenance["categories"].items():
        print(cat, json.dumps(entry, sort_keys=True))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
