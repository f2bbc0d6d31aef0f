"""Embedded, in-process stores: what ``make demo`` and the tests run on with no servers."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

from aegis_online.policy import TenantPolicy
from aegis_online.state.base import (
    LearnerRecord,
    LearnerStore,
    PolicyStore,
    PredictionLog,
    PredictionRecord,
    RecordsUpdate,
)


class MemoryLearnerStore(LearnerStore):
    """Learner records in a dict, applied under a lock; applied event ids are remembered (bounded, oldest out)."""

    def __init__(self, max_remembered_events: int = 1_000_000) -> None:
        self._records: dict[str, LearnerRecord] = {}
        self._applied: OrderedDict[str, None] = OrderedDict()
        self._max_events = max_remembered_events
        self._lock = threading.Lock()

    def load(self, keys: Sequence[str]) -> list[LearnerRecord | None]:
        records = self._records
        return [records.get(k) for k in keys]

    def apply(self, event_id: str, keys: Sequence[str], update: RecordsUpdate) -> bool:
        with self._lock:
            if event_id in self._applied:
                return False
            new = update([self._records.get(k) for k in keys])
            if len(new) != len(keys):
                raise ValueError(f"update returned {len(new)} records for {len(keys)} keys")
            self._records.update(zip(keys, new, strict=True))
            self._applied[event_id] = None
            if len(self._applied) > self._max_events:
                self._applied.popitem(last=False)
            return True

    def keys(self) -> list[str]:
        return list(self._records)


class MemoryPredictionLog(PredictionLog):
    """Prediction records with a time-to-live and a size cap (oldest evicted first)."""

    def __init__(self, ttl_s: float = 7 * 24 * 3600, max_records: int = 1_000_000) -> None:
        self.ttl_s = ttl_s
        self.max_records = max_records
        self._records: OrderedDict[str, PredictionRecord] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, record: PredictionRecord) -> None:
        with self._lock:
            self._records[record.request_id] = record
            self._records.move_to_end(record.request_id)
            while len(self._records) > self.max_records:
                self._records.popitem(last=False)

    def get(self, request_id: str) -> PredictionRecord | None:
        record = self._records.get(request_id)
        if record is None or time.time() - record.created > self.ttl_s:
            return None
        return record


class MemoryPolicyStore(PolicyStore):
    def __init__(self, policies: Sequence[TenantPolicy] = ()) -> None:
        self._policies = {p.tenant: p for p in policies}

    def get(self, tenant: str) -> TenantPolicy | None:
        return self._policies.get(tenant)

    def put(self, policy: TenantPolicy) -> None:
        self._policies[policy.tenant] = policy
