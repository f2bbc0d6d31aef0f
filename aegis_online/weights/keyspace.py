"""Where learner state lives: one key per (scope, category), namespaced by the learner and the expert list.

State written for one (learner, ordered expert list) must never be read by another (the weight vectors would be
misaligned), so both name the keys. The scope is a tenant or ``global``; it is the key's Redis Cluster hash tag,
so that one tenant's keys are written atomically together. ``global`` is therefore not a tenant id
(``schemas.TenantId`` refuses it).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aegis_online.learn import Learner
from aegis_online.state import LearnerRecord, LearnerStore

GLOBAL_SCOPE = "global"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KeySpace:
    """The key format, in one place.

    >>> space = KeySpace("default", ("llama-guard", "minilm"))
    >>> space.key("acme", "S1")
    'default:c76b99d7:{acme}:S1'
    >>> space.key(GLOBAL_SCOPE, "S1")
    'default:c76b99d7:{global}:S1'
    """

    learner: str
    experts: tuple[str, ...]
    namespace: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "experts", tuple(self.experts))
        digest = hashlib.sha1("\x1f".join(self.experts).encode()).hexdigest()[:8]
        object.__setattr__(self, "namespace", f"{self.learner}:{digest}")

    def key(self, scope: str, category: str) -> str:
        """Store key of one (scope, category); a scope's keys share the ``{scope}`` hash tag (Redis Cluster)."""
        return f"{self.namespace}:{{{scope}}}:{category}"

    def keys(self, scope: str, categories: Sequence[str]) -> list[str]:
        return [self.key(scope, c) for c in categories]


def personalised_states(
    store: LearnerStore,
    space: KeySpace,
    learner: Learner,
    tenant: str,
    categories: Sequence[str],
    personalise_after: int,
) -> tuple[np.ndarray, list[str]]:
    """Learner states a tenant's requests predict with, per category, and the scope each came from.

    A tenant's own state is used once it has ``personalise_after`` updates; before that, the global state (or the
    learner's initial state when there is none yet).
    """
    keys = space.keys(GLOBAL_SCOPE, categories) + space.keys(tenant, categories)
    records = [readable(record, learner) for record in store.load(keys)]
    n = len(categories)
    states = learner.init_states(n)
    scopes = [GLOBAL_SCOPE] * n
    for i in range(n):
        own, shared = records[n + i], records[i]
        if own is not None and own.updates >= personalise_after:
            states[i], scopes[i] = own.state, "tenant"
        elif shared is not None:
            states[i] = shared.state
    return states, scopes


def readable(record: LearnerRecord | None, learner: Learner) -> LearnerRecord | None:
    """``record`` if its state has ``learner``'s layout, else None (as if the key had no state yet).

    Why: a learner's state can gain statistics from one version to the next under the same name (the cascade's
    per-key disagreement of its expensive experts did). Such a state cannot be read into the new layout; treating
    it as absent lets requests use the global or initial state and the next feedback write a new one, instead of
    failing every request and event on the key. Logged once per process and stored size, so the reset is not
    silent and a busy key does not flood the log.
    """
    if record is None or record.state.shape == (learner.state_size,):
        return record
    if (learner.name, record.state.size) not in _warned:
        _warned.add((learner.name, record.state.size))
        log.warning(
            "learner state of %d values does not fit %s's layout of %d: read as no state yet, replaced on its next "
            "update",
            record.state.size,
            learner.name,
            learner.state_size,
        )
    return None


#: (learner, stored size) pairs ``readable`` has warned of in this process
_warned: set[tuple[str, int]] = set()
