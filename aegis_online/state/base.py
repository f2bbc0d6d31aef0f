"""Interfaces of the stores the engine and the feedback API need. Implementations: ``memory`` (in-process only),
``sqlite`` (embedded and persistent: the default of a single-process service), Redis (production).

The learner store keeps records and writes them by compare-and-set, nothing more: which records to write, and how
feedback is applied exactly once, is decided in one place above it (``weights.updates``), whatever the backend.

Writes are atomic per *group* of keys: keys sharing a ``{hash tag}`` (one Redis Cluster slot). One event touches
the global group and its tenant's group; because the watermarks live in each key (and the direct path's event
markers in each group), an event applied to one group before a crash is completed, not repeated, when it is
redelivered.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from aegis_online.policy import TenantPolicy


@dataclass(frozen=True, eq=False)
class LearnerRecord:
    """Learner state of one (scope, category) key, how many feedback events shaped it, and its watermarks.

    ``marks[stream]`` is the offset of the last entry from ``stream`` applied to this key (the stream path of
    ``weights.updates``).
    """

    state: np.ndarray
    updates: int = 0
    marks: Mapping[str, int] = field(default_factory=dict)


#: What ``compare_and_set`` says of one group: written; lost a race (a key's version changed: re-read and recompute);
#: or, with an event id, already applied to this group (nothing written).
WRITTEN, CONFLICT, SEEN = "written", "conflict", "seen"


@dataclass(frozen=True, eq=False)
class GroupWrite:
    """New records for keys of one hash-tag group, to be written only if each key is still at ``expected``: its
    record's ``updates`` count (its version), None for a key never written."""

    keys: tuple[str, ...]
    expected: tuple[int | None, ...]
    records: tuple[LearnerRecord, ...]


def hash_tag(key: str) -> str:
    """The part of ``key`` that Redis Cluster hashes: the first non-empty ``{...}``, else the whole key.

    >>> hash_tag("default:1a2b3c4d:{acme}:S1")
    'acme'
    >>> hash_tag("plain-key")
    'plain-key'
    """
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


class LearnerStore(abc.ABC):
    @abc.abstractmethod
    def load(self, keys: Sequence[str]) -> list[LearnerRecord | None]:
        """Current records of ``keys`` (None for a key never written)."""

    @abc.abstractmethod
    def compare_and_set(self, writes: Sequence[GroupWrite], event_id: str | None = None) -> list[str]:
        """Write each group atomically if its keys are still at their expected versions; per group, ``WRITTEN``,
        ``CONFLICT`` or ``SEEN``.

        With ``event_id`` (the direct, per-event path), a written group remembers it and a group that remembers it
        is ``SEEN``. Raises ``StoreUnavailableError`` when the backend cannot be reached (some groups may have been
        written: the caller's retry finds them at their new versions or ``SEEN``).
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

    def effective(self, tenant: str) -> TenantPolicy:
        """The policy a tenant's requests and feedback follow: its own, else the ``default`` tenant's (under its
        name), else the built-in default."""
        found = self.get(tenant) or self.get("default")
        if found is None:
            return TenantPolicy(tenant=tenant)
        return found if found.tenant == tenant else found.model_copy(update={"tenant": tenant})


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
