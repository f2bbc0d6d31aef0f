"""Interfaces of the three stores the engine needs. Implementations: ``memory`` (embedded), Redis (production).

The learner store's one write operation is ``apply``: atomic over the keys of one feedback event and idempotent
per event id, so that a redelivered event changes nothing. The learner's math stays in Python (``learn/``) and is
passed in as a function of the current records: it exists once, whatever the backend.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from aegis_online.policy import TenantPolicy


@dataclass(frozen=True)
class LearnerRecord:
    """Learner state of one (scope, category) key and how many feedback events shaped it."""

    state: np.ndarray
    updates: int = 0


RecordsUpdate = Callable[[list["LearnerRecord | None"]], list[LearnerRecord]]


class LearnerStore(abc.ABC):
    @abc.abstractmethod
    def load(self, keys: Sequence[str]) -> list[LearnerRecord | None]:
        """Current records of ``keys`` (None for a key never written)."""

    @abc.abstractmethod
    def apply(self, event_id: str, keys: Sequence[str], update: RecordsUpdate) -> bool:
        """Atomically replace the records of ``keys`` by ``update(current records)``, once per ``event_id``.

        Returns False, writing nothing, when ``event_id`` was applied before.
        """


@dataclass(frozen=True)
class PredictionRecord:
    """What the engine saw when it decided: the join key between the request and the feedback paths.

    ``outputs[c, i]`` is expert ``i``'s probability for ``categories[c]`` (NaN: asleep); ``propensities[i]`` the
    probability that expert ``i`` was queried (bandit mode; None when every expert was queried).
    """

    request_id: str
    tenant: str
    check: str
    created: float
    experts: tuple[str, ...]
    categories: tuple[str, ...]
    outputs: np.ndarray
    scores: np.ndarray
    flagged: tuple[str, ...] = ()
    propensities: np.ndarray | None = field(default=None)

    def to_dict(self) -> dict:
        """A JSON-safe form (NaN becomes None) for stores that serialise."""
        return {
            "request_id": self.request_id,
            "tenant": self.tenant,
            "check": self.check,
            "created": self.created,
            "experts": list(self.experts),
            "categories": list(self.categories),
            "outputs": [[None if np.isnan(v) else float(v) for v in row] for row in self.outputs],
            "scores": [None if np.isnan(v) else float(v) for v in self.scores],
            "flagged": list(self.flagged),
            "propensities": None if self.propensities is None else self.propensities.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PredictionRecord:
        props = data.get("propensities")
        return cls(
            request_id=data["request_id"],
            tenant=data["tenant"],
            check=data["check"],
            created=float(data["created"]),
            experts=tuple(data["experts"]),
            categories=tuple(data["categories"]),
            outputs=np.array(data["outputs"], dtype=np.float64).reshape(len(data["categories"]), len(data["experts"])),
            scores=np.array(data["scores"], dtype=np.float64),
            flagged=tuple(data.get("flagged", ())),
            propensities=None if props is None else np.array(props, dtype=np.float64),
        )


class PredictionLog(abc.ABC):
    @abc.abstractmethod
    def put(self, record: PredictionRecord) -> None:
        """Log a decision's inputs under its request id (kept for a bounded time)."""

    @abc.abstractmethod
    def get(self, request_id: str) -> PredictionRecord | None:
        """The logged record, or None when unknown or expired."""


class PolicyStore(abc.ABC):
    @abc.abstractmethod
    def get(self, tenant: str) -> TenantPolicy | None:
        """The tenant's policy, or None when it has none of its own."""

    @abc.abstractmethod
    def put(self, policy: TenantPolicy) -> None:
        """Create or replace the policy of ``policy.tenant``."""
