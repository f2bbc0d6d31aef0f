"""Redis backends of the three stores: learner state, prediction log, tenant policies.

Learner state: one string per (scope, category) key, holding the record bytes of ``codec`` (raw float64 state, update
count, per-stream watermarks). The learner's math stays in Python; Redis only guarantees that a write lands on the
version it was computed from, with a small compare-and-set script per group of keys sharing a ``{hash tag}``
(one Cluster slot): check each key's 8-byte version prefix, then SET every key. A lost race is re-read and
recomputed by the caller (``weights.updates``). docs/feedback.md gives the measurements behind this choice
(against the math in Lua and against WATCH/MULTI).

Every key the scripts touch is passed in KEYS and shares one hash tag, reads use per-key GETs on a Cluster, and the
script cache is reloaded on NOSCRIPT (after a restart or a failover), so the same code runs on one node or a
Cluster. Redis errors that a retry can cure surface as ``StoreUnavailableError``.

Imports ``redis`` (the ``redis`` extra) when a store is built, never at package import.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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
    StoreUnavailableError,
    hash_tag,
)
from aegis_online.state.codec import (
    decode_learner,
    decode_prediction,
    encode_learner,
    encode_prediction,
    version_bytes,
)

if TYPE_CHECKING:
    import redis

DEFAULT_PREFIX = "aegis:"

#: KEYS: n learner keys of one hash slot [+ the event marker]. ARGV: n, marker TTL in ms (0: no marker),
#: n expected 8-byte versions ('' for a key that must not exist), n new records.
#: Returns 0 (written), i > 0 (key i moved on: recompute), -1 (the marker exists: this event was applied here).
CAS_SCRIPT = """
local n = tonumber(ARGV[1])
local ttl = ARGV[2]
if ttl ~= '0' and redis.call('EXISTS', KEYS[n + 1]) == 1 then return -1 end
for i = 1, n do
  if redis.call('GETRANGE', KEYS[i], 0, 7) ~= ARGV[2 + i] then return i end
end
for i = 1, n do redis.call('SET', KEYS[i], ARGV[2 + n + i]) end
if ttl ~= '0' then redis.call('SET', KEYS[n + 1], '1', 'PX', ttl) end
return 0
"""


# A ledger value is '<status>:<content digest>' ('pending' or 'queued'; keys written before digests existed hold the
# bare status, read as an unknown digest). ARGV[1]: the claim's TTL in ms; ARGV[1 + i]: key i's digest ('': unknown).
# Claim each event key unless it is held; the reply is each key's status before the call, or 'conflict' when it is
# held with another digest.
RESERVE_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
  local digest = ARGV[1 + i] or ''
  if redis.call('SET', key, 'pending:' .. digest, 'NX', 'PX', ARGV[1]) then
    out[i] = 'new'
  else
    local held = redis.call('GET', key) or 'new'
    local status, held_digest = string.match(held, '^(%a+):?(.*)$')
    if digest ~= '' and held_digest ~= '' and held_digest ~= digest then
      out[i] = 'conflict'
    else
      out[i] = status
    end
  end
end
return out
"""

# Mark each event key queued for ARGV[1] ms, keeping the digest it was claimed with.
CONFIRM_SCRIPT = """
for _, key in ipairs(KEYS) do
  local held = redis.call('GET', key) or ''
  redis.call('SET', key, 'queued:' .. (string.match(held, '^%a+:(.*)$') or ''), 'PX', ARGV[1])
end
return 0
"""


def redis_errors() -> tuple[type[BaseException], ...]:
    """Errors after which a retry may succeed: connection lost, timeout, server loading its AOF, failover, busy."""
    from redis import exceptions as e

    return (
        e.ConnectionError,
        e.TimeoutError,
        e.BusyLoadingError,
        e.ReadOnlyError,
        e.ClusterDownError,
        e.TryAgainError,
        e.MasterDownError,
    )


def connect(url: str, *, cluster: bool = False, timeout_s: float = 5.0, **options: Any) -> redis.Redis:
    """A client for ``url`` (``redis://`` or ``rediss://``) that raises at once instead of retrying for long.

    Callers own the retry policy (the feedback worker backs off and keeps its offsets uncommitted); hiredis, when
    installed, parses replies.
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    kwargs = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": min(timeout_s, 2.0),
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    } | options
    if cluster:
        return redis.RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


class _Script:
    """A Lua script run with EVALSHA, loaded again when the server answers NOSCRIPT (its cache is empty after a
    restart or on a new primary)."""

    def __init__(self, client: Any, source: str, wait: tuple[int, int] | None = None) -> None:
        self.client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self.wait = wait

    def run_many(self, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run the script once per ``(keys, args)``, pipelined; one reply per call, in order.

        With ``wait=(replicas, timeout_ms)`` each pipeline ends with WAIT, on the connection that wrote (WAIT counts
        that connection's writes), and fewer acknowledging replicas raise ``StoreUnavailableError``."""
        if type(self.client).__name__ != "RedisCluster":
            return self._run_on(self.client, calls)
        # redis-py refuses EVALSHA in cluster pipelines: pipeline per primary, on that node's own connection.
        by_node: dict[str, tuple[Any, list[int]]] = {}
        for i, (keys, _) in enumerate(calls):
            node = self.client.get_node_from_key(keys[0])
            by_node.setdefault(node.name, (node.redis_connection, []))[1].append(i)
        results: list[Any] = [None] * len(calls)
        for connection, indices in by_node.values():
            try:
                replies = self._run_on(connection, [calls[i] for i in indices])
            except StoreUnavailableError:
                self.client.nodes_manager.initialize()  # a slot moved: learn the new layout, let the caller retry
                raise
            for i, reply in zip(indices, replies, strict=True):
                results[i] = reply
        return results

    def _run_on(self, client: Any, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        from redis.exceptions import NoScriptError, ResponseError

        results: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for _ in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                keys, args = calls[i]
                pipe.evalsha(self.sha, len(keys), *keys, *args)
            if self.wait is not None:
                pipe.execute_command("WAIT", *self.wait)
            replies = pipe.execute(raise_on_error=False)
            if self.wait is not None:
                acked = replies.pop()
                if isinstance(acked, Exception) or acked < self.wait[0]:
                    raise StoreUnavailableError(f"{acked} of {self.wait[0]} replicas acknowledged the write")
            missing = []
            for i, reply in zip(todo, replies, strict=True):
                if isinstance(reply, NoScriptError):
                    missing.append(i)
                elif isinstance(reply, ResponseError):
                    if str(reply).startswith(("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")):
                        raise StoreUnavailableError(f"redis cluster: {reply}")
                    raise reply
                else:
                    results[i] = reply
            if not missing:
                return results
            client.script_load(self.source)
            todo = missing
        raise StoreUnavailableError("the server keeps answering NOSCRIPT")


class _RedisBase:
    def __init__(self, client: Any, prefix: str) -> None:
        if "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must not contain braces (they would become the hash tag): {prefix!r}")
        self.client = client
        self.prefix = prefix
        self._cluster = type(client).__name__ == "RedisCluster"
        self._errors = redis_errors()

    def _get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        if not self._cluster:
            out: list[bytes | None] = []
            for start in range(0, len(keys), 10_000):
                out += self.client.mget(keys[start : start + 10_000])
            return out
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return pipe.execute()


class RedisLearnerStore(_RedisBase, LearnerStore):
    """Learner records in Redis, written by a compare-and-set script per hash-tag group.

    ``marker_ttl_s`` bounds how long the direct, per-event path remembers an event id: one marker key per event and
    group. The stream path (the feedback worker's) needs no marker: its watermarks live in the records.
    ``wait_replicas`` > 0 makes every write wait until that many replicas acknowledged it (WAIT, on the
    connection that wrote), so an offset committed after it survives a failover.
    """

    def __init__(
        self,
        client: Any,
        prefix: str = DEFAULT_PREFIX,
        *,
        marker_ttl_s: float = 24 * 3600,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        super().__init__(client, prefix)
        self.marker_ttl_ms = max(1, int(marker_ttl_s * 1000))
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._cas = _Script(client, CAS_SCRIPT, wait=(wait_replicas, wait_timeout_ms) if wait_replicas > 0 else None)

    def key(self, name: str) -> str:
        return self.prefix + name

    # -- reads ---------------------------------------------------------------------------------------------------
    def load(self, keys: Sequence[str]) -> list[LearnerRecord | None]:
        try:
            blobs = self._get_many([self.prefix + k for k in keys])
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error
        return [None if b is None else decode_learner(b) for b in blobs]

    # -- writes --------------------------------------------------------------------------------------------------
    def compare_and_set(self, writes: Sequence[GroupWrite], event_id: str | None = None) -> list[str]:
        """One compare-and-set script call per group, pipelined; with ``event_id``, each group's marker key
        (``<prefix>{<tag>}:event:<id>``, kept ``marker_ttl_s``) says it was applied."""
        calls = []
        for write in writes:
            call = self._cas_call(write.keys, write.expected, write.records)
            if event_id is not None:
                call[0].append(f"{self.prefix}{{{hash_tag(write.keys[0])}}}:event:{event_id}")
                call[1][1] = self.marker_ttl_ms
            calls.append(call)
        try:
            results = self._cas.run_many(calls)
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error
        return [WRITTEN if r == 0 else SEEN if r == -1 else CONFLICT for r in results]

    def _cas_call(
        self, keys: Sequence[str], expected: Sequence[int | None], new: Sequence[LearnerRecord]
    ) -> tuple[list[Any], list[Any]]:
        versions = [b"" if v is None else version_bytes(v) for v in expected]
        blobs = [encode_learner(r) for r in new]
        return [self.prefix + k for k in keys], [len(keys), 0, *versions, *blobs]

    def close(self) -> None:
        self.client.close()


class RedisPredictionLog(_RedisBase, PredictionLog):
    """Prediction records as ``codec`` bytes under ``<prefix>pred:<request id>``, expiring after ``ttl_s``.

    Keyed by request id alone (no tenant in the key), so feedback that names the wrong tenant is found and refused
    as ``wrong_tenant`` rather than looking unknown.
    """

    def __init__(self, client: Any, prefix: str = DEFAULT_PREFIX, *, ttl_s: float = 7 * 24 * 3600) -> None:
        super().__init__(client, prefix)
        self.ttl_ms = max(1, int(ttl_s * 1000))

    def key(self, request_id: str) -> str:
        return f"{self.prefix}pred:{request_id}"

    def put(self, record: PredictionRecord) -> None:
        try:
            self.client.set(self.key(record.request_id), encode_prediction(record), px=self.ttl_ms)
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error

    def put_many(self, records: Sequence[PredictionRecord]) -> None:
        """Log several records in one round trip (replays, benchmarks)."""
        try:
            pipe = self.client.pipeline(transaction=False)
            for record in records:
                pipe.set(self.key(record.request_id), encode_prediction(record), px=self.ttl_ms)
            pipe.execute()
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error

    def get(self, request_id: str) -> PredictionRecord | None:
        return self.get_many([request_id])[0]

    def get_many(self, request_ids: Sequence[str]) -> list[PredictionRecord | None]:
        try:
            blobs = self._get_many([self.key(r) for r in request_ids])
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error
        return [None if b is None else decode_prediction(b) for b in blobs]  # CodecError: see the worker


class RedisPolicyStore(_RedisBase, PolicyStore):
    """Tenant policies as JSON under ``<prefix>policy:{<tenant>}``."""

    def key(self, tenant: str) -> str:
        return f"{self.prefix}policy:{{{tenant}}}"

    def get(self, tenant: str) -> TenantPolicy | None:
        try:
            raw = self.client.get(self.key(tenant))
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error
        return None if raw is None else TenantPolicy.model_validate_json(raw)

    def put(self, policy: TenantPolicy) -> None:
        try:
            self.client.set(self.key(policy.tenant), policy.model_dump_json())
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error


class RedisFeedbackLedger(_RedisBase, FeedbackLedger):
    """The feedback ledger in Redis: one small key per queued event, ``<prefix>fb:{<tenant>}:<event key>``, that
    lives as long as a prediction can be joined (``ttl_s``). A tenant's keys share its hash tag, so one script call
    per tenant claims them atomically, on Redis Cluster too."""

    def __init__(self, client: Any, prefix: str = DEFAULT_PREFIX, *, ttl_s: float, pending_ttl_s: float = 30.0) -> None:
        super().__init__(client, prefix)
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.pending_ms = max(1, int(pending_ttl_s * 1000))
        self._reserve = _Script(client, RESERVE_SCRIPT)
        self._confirm = _Script(client, CONFIRM_SCRIPT)

    def key(self, event: EventKey) -> str:
        tenant, event_key = event
        return f"{self.prefix}fb:{{{tenant}}}:{event_key}"

    def reserve(self, keys: Sequence[EventKey], digests: Sequence[str] | None = None) -> list[str]:
        groups = self._by_tenant(keys)
        digests = [""] * len(keys) if digests is None else digests
        calls = [([self.key(keys[i]) for i in g], [self.pending_ms, *(digests[i] for i in g)]) for g in groups]
        out = [self.NEW] * len(keys)
        for group, reply in zip(groups, self._run(self._reserve, calls), strict=True):
            for i, status in zip(group, reply, strict=True):
                out[i] = status.decode() if isinstance(status, bytes) else str(status)
        return out

    def confirm(self, keys: Sequence[EventKey]) -> None:
        self._run(self._confirm, [([self.key(keys[i]) for i in g], [self.ttl_ms]) for g in self._by_tenant(keys)])

    def release(self, keys: Sequence[EventKey]) -> None:
        if not keys:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.delete(self.key(key))
            pipe.execute()
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error

    @staticmethod
    def _by_tenant(keys: Sequence[EventKey]) -> list[list[int]]:
        """Indices of ``keys`` per tenant: one script call each, its keys in one hash slot."""
        groups: dict[str, list[int]] = {}
        for i, (tenant, _) in enumerate(keys):
            groups.setdefault(tenant, []).append(i)
        return list(groups.values())

    def _run(self, script: _Script, calls: list[tuple[list[Any], list[Any]]]) -> list[Any]:
        if not calls:
            return []
        try:
            return script.run_many(calls)
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error
