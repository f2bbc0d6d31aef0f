"""In-process stores: what the tests, the simulator and ``store.persist: false`` run on. Nothing survives the
process; the embedded service persists with the SQLite stores (``state.sqlite``), which build on these.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

from aegis_online.policy import TenantPolicy
from aegis_online.state.base import (
    CONFLICT,
    SEEN,
    WRITTEN,
    EventKey,
    FeedbackLedger,
    GroupWrite,
    LearnerRecord,
    LearnerStore,
    PolicyStore,
    PredictionLog,
    PredictionRecord,
    hash_tag,
)


class MemoryLearnerStore(LearnerStore):
    """Learner records in a dict, written under a lock; the direct path's event markers are remembered per group
    (bounded, oldest out).

    Reads take no lock (one dict look-up per key: the request path reads records on every call). Every write goes
    through ``_save``, which a persistent subclass extends to write the records first (``SqliteLearnerStore``).
    """

    def __init__(self, max_remembered_events: int = 1_000_000) -> None:
        self._records: dict[str, LearnerRecord] = {}
        self._applied: OrderedDict[str, None] = OrderedDict()
        self._max_events = max_remembered_events
        self._lock = threading.Lock()

    def load(self, keys: Sequence[str]) -> list[LearnerRecord | None]:
        records = self._records
        return [records.get(k) for k in keys]

    def compare_and_set(self, writes: Sequence[GroupWrite], event_id: str | None = None) -> list[str]:
        results: list[str] = []
        staged: dict[str, LearnerRecord] = {}
        markers: list[str] = []
        with self._lock:
            for write in writes:
                marker = None if event_id is None else f"{{{hash_tag(write.keys[0])}}}:{event_id}"
                if marker is not None and self._was_applied(marker):
                    results.append(SEEN)
                    continue
                current = [self._records.get(k) for k in write.keys]
                if any((None if r is None else r.updates) != v for r, v in zip(current, write.expected, strict=True)):
                    results.append(CONFLICT)
                    continue
                staged.update(zip(write.keys, write.records, strict=True))
                if marker is not None:
                    markers.append(marker)
                results.append(WRITTEN)
            if staged:
                self._save(staged, markers)
        return results

    def keys(self) -> list[str]:
        return list(self._records)

    def _was_applied(self, marker: str) -> bool:
        return marker in self._applied

    def _save(self, records: Mapping[str, LearnerRecord], markers: Sequence[str]) -> None:
        """Make ``records`` current and remember ``markers`` (the direct path's); called under the lock, all or
        nothing."""
        self._records.update(records)
        for marker in markers:
            self._applied[marker] = None
        while len(self._applied) > self._max_events:
            self._applied.popitem(last=False)


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

    def get_many(self, request_ids: Sequence[str]) -> list[PredictionRecord | None]:
        return [self.get(r) for r in request_ids]


class MemoryPolicyStore(PolicyStore):
    def __init__(self, policies: Sequence[TenantPolicy] = ()) -> None:
        self._policies = {p.tenant: p for p in policies}

    def get(self, tenant: str) -> TenantPolicy | None:
        return self._policies.get(tenant)

    def put(self, policy: TenantPolicy) -> None:
        self._policies[policy.tenant] = policy


class MemoryFeedbackLedger(FeedbackLedger):
    """The ledger of one process: the embedded service, or an ingress replica while Redis is unreachable.

    Bounded: past ``capacity`` keys the oldest are forgotten (so only a retry of an event that old can be queued
    twice). ``clock`` is injectable for tests.

    >>> ledger = MemoryFeedbackLedger()
    >>> key = ("acme", "e1")
    >>> ledger.reserve([key], ["d1"]), ledger.reserve([key], ["d1"])
    (['new'], ['pending'])
    >>> ledger.confirm([key]); ledger.reserve([key], ["d1"]), ledger.reserve([key], ["other content"])
    (['queued'], ['conflict'])
    """

    def __init__(
        self,
        ttl_s: float = 7 * 24 * 3600,
        pending_ttl_s: float = 30.0,
        capacity: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.pending_ttl_s = pending_ttl_s
        self.capacity = capacity
        self.clock = clock
        #: key -> (status, expires, digest of the content it was claimed with; None: unknown)
        self._entries: OrderedDict[EventKey, tuple[str, float, str | None]] = OrderedDict()
        self._lock = threading.Lock()

    def reserve(self, keys: Sequence[EventKey], digests: Sequence[str] | None = None) -> list[str]:
        now = self.clock()
        out = []
        with self._lock:
            for i, key in enumerate(keys):
                digest = None if digests is None else digests[i]
                status, expires, held = self._entries.get(key, (self.NEW, 0.0, None))
                if status == self.NEW or expires <= now:
                    self._set(key, self.PENDING, now + self.pending_ttl_s, digest)
                    out.append(self.NEW)
                else:
                    out.append(self.CONFLICT if digest and held and digest != held else status)
        return out

    def confirm(self, keys: Sequence[EventKey]) -> None:
        expires = self.clock() + self.ttl_s
        with self._lock:
            for key in keys:
                held = self._entries.get(key)
                self._set(key, self.QUEUED, expires, None if held is None else held[2])

    def release(self, keys: Sequence[EventKey]) -> None:
        with self._lock:
            for key in keys:
                self._entries.pop(key, None)

    def _set(self, key: EventKey, status: str, expires: float, digest: str | None) -> None:
        self._entries[key] = (status, expires, digest)
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
