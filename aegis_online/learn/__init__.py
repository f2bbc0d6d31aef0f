"""Online learners that weight experts per (scope, category), with no-regret guarantees.

Pure numpy: the same code runs in the engine, the feedback worker, the simulator and the benchmarks. It must not
import anything from the project above ``learn`` and does no I/O.
"""

from __future__ import annotations

from typing import Any

from aegis_online.learn.ada_hedge import AdaHedge
from aegis_online.learn.ada_normal_hedge import AdaNormalHedge
from aegis_online.learn.adaptive import Adaptive
from aegis_online.learn.base import Learner
from aegis_online.learn.batch import apply_events
from aegis_online.learn.escalation import CASCADE_MARK, CheapTierLoss, cascade_learner_name
from aegis_online.learn.exp3ix import Exp3IX
from aegis_online.learn.fixed_share import FixedShare
from aegis_online.learn.fixed_share_grid import FixedShareGrid
from aegis_online.learn.hedge import Hedge

LEARNERS: dict[str, type[Learner]] = {
    cls.name: cls for cls in (FixedShareGrid, Hedge, FixedShare, AdaHedge, AdaNormalHedge, Exp3IX)
}
#: A learner name with this suffix is that learner wrapped in ``Adaptive`` (calibration and learned thresholds).
ADAPTIVE_SUFFIX = "+adaptive"
#: The service's learner: the tuning-free Fixed-Share grid over calibrated experts, with learned thresholds.
DEFAULT_LEARNER = FixedShareGrid.name + ADAPTIVE_SUFFIX


def known_learner(name: str) -> bool:
    """Whether ``make_learner`` builds ``name``."""
    base, _, expensive = name.removesuffix(ADAPTIVE_SUFFIX).partition(CASCADE_MARK)
    indices_ok = not expensive or all(i.isdigit() for i in expensive.split("-"))
    return base in LEARNERS and not (name != base and LEARNERS[base].bandit) and indices_ok


def make_learner(name: str, n_experts: int, **params: Any) -> Learner:
    """Build a learner by its configuration name (``default``, ``hedge``, ``fixed-share``, ...; with
    ``+adaptive``, wrapped in ``Adaptive``: per-expert calibration and learned thresholds; with
    ``+cascade-<indices>`` (``cascade_learner_name``), in ``CheapTierLoss``: a cascade's loss regression)."""
    plain = name.removesuffix(ADAPTIVE_SUFFIX)
    base, mark, expensive = plain.partition(CASCADE_MARK)
    try:
        cls = LEARNERS[base]
        indices = [int(i) for i in expensive.split("-")] if mark else []
    except (KeyError, ValueError):
        raise ValueError(f"unknown learner {name!r}; choose one of {sorted(LEARNERS)}, optionally +adaptive") from None
    learner: Learner = cls(n_experts, **params)
    if mark:
        learner = CheapTierLoss(learner, indices)
    return Adaptive(learner) if plain != name else learner


__all__ = [
    "ADAPTIVE_SUFFIX",
    "DEFAULT_LEARNER",
    "LEARNERS",
    "AdaHedge",
    "AdaNormalHedge",
    "Adaptive",
    "CheapTierLoss",
    "Exp3IX",
    "FixedShare",
    "FixedShareGrid",
    "Hedge",
    "Learner",
    "apply_events",
    "cascade_learner_name",
    "known_learner",
    "make_learner",
]
