"""Online learners that weight experts per (scope, category), with no-regret guarantees.

Pure numpy: the same code runs in the engine, the feedback worker, the simulator and the benchmarks. It must not
import anything from the project above ``learn`` and does no I/O.
"""

from __future__ import annotations

from typing import Any

from aegis_online.learn.ada_hedge import AdaHedge
from aegis_online.learn.ada_normal_hedge import AdaNormalHedge
from aegis_online.learn.base import Learner
from aegis_online.learn.batch import apply_events
from aegis_online.learn.exp3ix import Exp3IX
from aegis_online.learn.fixed_share import FixedShare
from aegis_online.learn.fixed_share_grid import FixedShareGrid
from aegis_online.learn.hedge import Hedge

LEARNERS: dict[str, type[Learner]] = {
    cls.name: cls for cls in (FixedShareGrid, Hedge, FixedShare, AdaHedge, AdaNormalHedge, Exp3IX)
}
DEFAULT_LEARNER = FixedShareGrid.name


def make_learner(name: str, n_experts: int, **params: Any) -> Learner:
    """Build a learner by its configuration name (``default``, ``hedge``, ``fixed-share``, ...)."""
    try:
        cls = LEARNERS[name]
    except KeyError:
        raise ValueError(f"unknown learner {name!r}; choose one of {sorted(LEARNERS)}") from None
    return cls(n_experts, **params)


__all__ = [
    "DEFAULT_LEARNER",
    "LEARNERS",
    "AdaHedge",
    "AdaNormalHedge",
    "Exp3IX",
    "FixedShare",
    "FixedShareGrid",
    "Hedge",
    "Learner",
    "apply_events",
    "make_learner",
]
