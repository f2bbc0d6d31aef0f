"""Readiness of the service: started, experts answering, store and bus reachable.

``/readyz`` answers 200 with ``ready`` or ``degraded`` and 503 only with ``not_ready`` (before start-up finished).
A degraded service still answers every request correctly, from cached weights or without a failing expert; taking
it out of a load balancer would not help when its peers share the same store, so degraded stays in service and says
why (``?strict=true`` turns degraded into 503 for probes that want that).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from aegis_online.api_models.native import ComponentCheck, Readiness
from aegis_online.schemas import Decision
from aegis_online.serve.resilience import DependencyHealth

#: Missing-expert kinds that are failures of the expert itself (not_queried, not_covered and language are choices).
EXPERT_FAILURES = frozenset({"timeout", "error"})


class ExpertHealth:
    """Consecutive failures (errors, missed deadlines) per expert; ``threshold`` of them in a row make it failing."""

    def __init__(self, names: Sequence[str], threshold: int = 5) -> None:
        self.threshold = threshold
        self._failures = dict.fromkeys(names, 0)
        self._last_error: dict[str, str] = {}
        self._lock = threading.Lock()

    def record(self, decision: Decision) -> None:
        with self._lock:
            for contribution in decision.experts:
                self._failures[contribution.expert] = 0
            for missing in decision.missing_experts:
                if missing.kind in EXPERT_FAILURES:
                    self._failures[missing.expert] = self._failures.get(missing.expert, 0) + 1
                    self._last_error[missing.expert] = missing.reason

    def __len__(self) -> int:
        return len(self._failures)

    def failing(self) -> dict[str, str]:
        """Experts failing now, with their last error."""
        with self._lock:
            return {n: self._last_error.get(n, "") for n, f in self._failures.items() if f >= self.threshold}


class ServiceHealth:
    """What ``/readyz`` reports."""

    def __init__(
        self,
        experts: ExpertHealth,
        store: DependencyHealth | None,
        bus: DependencyHealth,
        *,
        store_kind: str,
        bus_kind: str,
        bus_backlog: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.experts = experts
        self.store = store
        self.bus = bus
        self.store_kind = store_kind
        self.bus_kind = bus_kind
        self.bus_backlog = bus_backlog
        self.started = False

    def readiness(self) -> Readiness:
        checks: dict[str, ComponentCheck] = {}
        failing = self.experts.failing()
        if failing:
            detail = "; ".join(f"{name}: {error}" for name, error in sorted(failing.items()))
            checks["experts"] = ComponentCheck(status="degraded", detail=f"failing: {detail}")
        else:
            checks["experts"] = ComponentCheck(status="ok", detail=f"{len(self.experts)} experts answering")
        if self.store is None or not self.store.degraded:
            checks["store"] = ComponentCheck(status="ok", detail=self.store_kind)
        else:
            detail = f"{self.store_kind} {self.store.describe()}; answering from cached weights"
            checks["store"] = ComponentCheck(status="degraded", detail=detail)
        checks["feedback_bus"] = self._bus_check()
        if not self.started:
            status = "not_ready"
        elif any(c.status != "ok" for c in checks.values()):
            status = "degraded"
        else:
            status = "ready"
        return Readiness(status=status, checks=checks)  # type: ignore[arg-type]

    def _bus_check(self) -> ComponentCheck:
        if self.bus.degraded:
            return ComponentCheck(status="degraded", detail=f"{self.bus_kind} {self.bus.describe()}")
        if self.bus_backlog is not None:
            pending, capacity = self.bus_backlog()
            if pending >= 0.9 * capacity:
                return ComponentCheck(status="degraded", detail=f"{self.bus_kind}: {pending} of {capacity} events wait")
            return ComponentCheck(status="ok", detail=f"{self.bus_kind}: {pending} events waiting")
        return ComponentCheck(status="ok", detail=self.bus_kind)
