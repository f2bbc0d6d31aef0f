"""Interfaces of the stores the engine and the feedback API need. Implementations: ``memory`` (in-process only),
``sqlite`` (embedded and persistent: the default of a single-process service), Redis (production).

The learner store has two write operations, both idempotent, and in both the learner's math stays in Python
(``learn/``), passed in as a function of the current records: it exists once, whatever the backend.

* ``apply``: one feedback event, remembered by its event id (the direct, unqueued path).
* ``apply_batch``: many events read from ordered streams (Kafka partitions, the in-process queue). Each key keeps a
  watermark per stream, the offset of the last entry applied to it, and an entry at or below it is skipped: a
  redelivered event changes nothing, at O(keys x streams) memory instead of one remembered id per event.

Writes are atomic per *group* of keys: keys sharing a ``{hash tag}`` (one Redis Cluster slot). One event touches
the global group and its tenant's group; because the watermarks live in each key, an event applied to one group
before a crash is completed, not repeated, when it is redelivered.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from aegis_online.policy import TenantPolicy


@dataclass(frozen=True, eq=False)
class LearnerRecord:
    """Learner state of one (scope, category) key, how many feedback events shaped it, and its watermarks.

    ``marks[stream]`` is the offset of the last entry from ``stream`` applied to this key (``apply_batch``).
    """

    state: np.ndarray
    updates: int = 0
    marks: Mapping[str, int] = field(default_factory=dict)


RecordsUpdate = Callable[[list["LearnerRecord | None"]], list[LearnerRecord]]


@dataclass(frozen=True, eq=False)
class UpdateBatch:
    """Key updates of a batch of stream events, in stream order: entry ``e`` updates ``keys[entry_key[e]]`` with the
    event at ``entry_offset[e]`` of ``streams[entry_stream[e]]``.

    Per key, entries of one stream must come in increasing offset order. ``phases`` lists key indices in the order
    their writes must become visible: a later phase is written only once every group of the earlier ones is (the
    engine writes tenant keys, which may start from a global key's state, before that global key).
    """

    keys: tuple[str, ...]
    streams: tuple[str, ...]
    entry_key: np.ndarray
    entry_stream: np.ndarray
    entry_offset: np.ndarray
    phases: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        n = len(self.entry_key)
        if not len(self.entry_stream) == len(self.entry_offset) == n:
            raise ValueError("entry_key, entry_stream and entry_offset must have one value per entry")
        if not self.phases:
            object.__setattr__(self, "phases", (tuple(range(len(self.keys))),))


#: ``compute(records, pending, wanted)``: new states of the ``wanted`` key indices (and any others it likes) after
#: applying, in order, the entries where ``pending`` is True, starting from ``records`` (one per key, None: fresh).
BatchCompute = Callable[[Sequence["LearnerRecord | None"], np.ndarray, frozenset[int]], dict[int, np.ndarray]]


@dataclass(frozen=True, eq=False)
class BatchOutcome:
    """What ``apply_batch`` did: ``applied[e]`` is True for the entries applied by this call (False: applied before)."""

    applied: np.ndarray
    conflicts: int = 0


class LearnerStore(abc.ABC):
    @abc.abstractmethod
    def load(self, keys: Sequence[str]) -> list[LearnerRecord | None]:
        """Current records of ``keys`` (None for a key never written)."""

    @abc.abstractmethod
    def apply(self, event_id: str, keys: Sequence[str], update: RecordsUpdate) -> bool:
        """Replace the records of ``keys`` by ``update(current records)``, once per ``event_id``.

        Atomic per group of keys sharing a hash tag; groups are written in reverse order of their first key in
        ``keys`` (list the keys others start from first). Returns False, writing nothing, when ``event_id`` was
        applied before.
        """

    @abc.abstractmethod
    def apply_batch(self, batch: UpdateBatch, compute: BatchCompute) -> BatchOutcome:
        """Apply the entries of ``batch`` above each key's watermark for their stream, and advance the watermarks.

        Atomic per group of keys sharing a hash tag, phase by phase; safe against concurrent writers of the same
        keys (a lost race is re-read and recomputed). Raises ``StoreUnavailableError`` when the backend cannot be
        reached: nothing or part of the batch may have been written, and calling again with the same batch
        completes it exactly once.
        """

    def close(self) -> None:
        """Release connections."""
        return None


class StoreUnavailableError(RuntimeError):
    """The store could not be reached or did not confirm a write; retrying later is safe."""


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
    #: digest of what was checked (messages, check, categories): a caller reusing its request id for other content
    #: is refused instead of overwriting this record ("" when unknown).
    input_digest: str = ""

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
            "input_digest": self.input_digest,
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
            input_digest=data.get("input_digest", ""),
        )


class PredictionLog(abc.ABC):
    @abc.abstractmethod
    def put(self, record: PredictionRecord) -> None:
        """Log a decision's inputs under its request id (kept for a bounded time)."""

    @abc.abstractmethod
    def get(self, request_id: str) -> PredictionRecord | None:
        """The logged record, or None when unknown or expired."""

    def get_many(self, request_ids: Sequence[str]) -> list[PredictionRecord | None]:
        """Records of several requests in one round trip where the backend allows it."""
        return [self.get(r) for r in request_ids]


class PolicyStore(abc.ABC):
    @abc.abstractmethod
    def get(self, tenant: str) -> TenantPolicy | None:
        """The tenant's policy, or None when it has none of its own."""

    @abc.abstractmethod
    def put(self, policy: TenantPolicy) -> None:
        """Create or replace the policy of ``policy.tenant``."""


#: An event as the feedback API knows it: (tenant, idempotency key).
EventKey = tuple[str, str]


class FeedbackLedger(abc.ABC):
    """The feedback events the API has queued, shared by every ingress replica on the same store.

    Kafka applies each *delivery* once (offset watermarks); this makes each *event* one delivery: a client that
    retries a call (on any replica) gets ``duplicate`` for what was already queued. Three steps so that neither a
    bus failure nor a crash loses an event: ``reserve`` claims keys atomically (two calls racing on one event get one
    ``NEW`` and one ``PENDING``), ``confirm`` marks them ``QUEUED`` for ``ttl_s`` (as long as the prediction they
    join is kept: later feedback is refused anyway), ``release`` frees them when the bus refused them. A reservation
    lapses by itself after ``pending_ttl_s``, so a replica that dies between reserve and confirm blocks no one.

    A claim keeps the digest of the event's content it was made with: the same key with other content (a client
    reusing an event id for other labels) is ``CONFLICT``, not a duplicate.
    """

    NEW, PENDING, QUEUED, CONFLICT = "new", "pending", "queued", "conflict"

    @abc.abstractmethod
    def reserve(self, keys: Sequence[EventKey], digests: Sequence[str] | None = None) -> list[str]:
        """Claim each key; its status before the call: ``NEW`` (now claimed by this call), ``PENDING`` or ``QUEUED``,
        or ``CONFLICT`` when it is held with a digest other than ``digests[i]`` (a claim without digest, or a call
        without digests, never conflicts)."""

    @abc.abstractmethod
    def confirm(self, keys: Sequence[EventKey]) -> None:
        """The claimed events are on the bus: remember them as queued."""

    @abc.abstractmethod
    def release(self, keys: Sequence[EventKey]) -> None:
        """The claimed events did not reach the bus: forget the claims, so a retry queues them."""


@dataclass(frozen=True)
class JournalEntry:
    """One queued entry of an in-process queue partition, as the journal keeps it."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class QueueJournal(abc.ABC):
    """What makes the in-process feedback queue durable: every published entry until it is committed, and the next
    offset of every partition, which never goes back (the learner records' watermarks remember offsets, so an
    offset issued twice would be skipped as already applied)."""

    @abc.abstractmethod
    def load(self, topic: str) -> tuple[dict[int, int], list[JournalEntry]]:
        """Next offset per partition, and the entries not committed yet in (partition, offset) order."""

    @abc.abstractmethod
    def append(self, topic: str, entry: JournalEntry, queued: EventKey | None = None) -> int:
        """Keep ``entry`` (surviving a crash of the process once this returns) and mark ``queued`` queued in the
        feedback ledger in the same transaction; returns a ticket for ``sync``."""

    @abc.abstractmethod
    def sync(self, ticket: int) -> None:
        """Block until the entry of ``ticket`` (and every one before it) survives a power loss too."""

    @abc.abstractmethod
    def commit(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Forget the entries below ``offsets[partition]``: they were applied."""
