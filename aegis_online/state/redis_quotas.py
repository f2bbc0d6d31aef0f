"""Redis versions of ``state.quotas``: rate-limit buckets and global-update shares that every ingress replica sees.

Each call is one Lua script over keys that share the tenant's ``{hash tag}`` (one Cluster slot), reading the
server's clock (``TIME``), so replicas on different machines agree and a check-then-take race cannot let two calls
spend the same tokens. Numbers cross the Lua boundary as strings formatted with ``%.17g`` (Lua would truncate numbers
returned to the client to integers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from aegis_online.state.base import StoreUnavailableError
from aegis_online.state.quotas import Bucket, ContributionCounter, RateLimiter, ShareCap
from aegis_online.state.redis_store import DEFAULT_PREFIX, _Script, redis_errors

#: KEYS: one hash per bucket. ARGV: cost, then per bucket its rate per millisecond and its burst.
#: Takes cost tokens from every bucket or from none; returns the milliseconds to wait ('0': taken).
TAKE_SCRIPT = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
local cost = tonumber(ARGV[1])
local wait = 0
local tokens = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local held = redis.call('HMGET', key, 't', 'at')
  local t = tonumber(held[1]) or burst
  local at = tonumber(held[2]) or now
  t = math.min(burst, t + math.max(0, now - at) * rate)
  tokens[i] = t
  if t < cost then wait = math.max(wait, (cost - t) / rate) end
end
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[2 * i])
  local burst = tonumber(ARGV[2 * i + 1])
  local t = tokens[i]
  if wait == 0 then t = t - cost end
  redis.call('HSET', key, 't', string.format('%.17g', t), 'at', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil(burst / rate) + 1000)
end
return string.format('%.17g', wait)
"""

#: KEYS: the window's total, the tenant's count. ARGV: capped, trusted, max_share, min_events, ttl ms.
#: Returns how many of the capped events were admitted.
ADMIT_SCRIPT = """
local total = tonumber(redis.call('GET', KEYS[1]) or '0') + tonumber(ARGV[2])
local own = tonumber(redis.call('GET', KEYS[2]) or '0')
local share, floor = tonumber(ARGV[3]), tonumber(ARGV[4])
local admitted = 0
while admitted < tonumber(ARGV[1]) and own + 1 <= math.max(floor, share * (total + 1)) do
  own = own + 1
  total = total + 1
  admitted = admitted + 1
end
redis.call('SET', KEYS[1], total, 'PX', ARGV[5])
if admitted > 0 then redis.call('SET', KEYS[2], own, 'PX', ARGV[5]) end
return admitted
"""


class RedisRateLimiter(RateLimiter):
    """Buckets as hashes ``<prefix>rate:{<tenant>}:<class>:<i>``; ``key`` is ``<tenant>:<class>``."""

    def __init__(self, client: Any, prefix: str = DEFAULT_PREFIX) -> None:
        self.prefix = prefix
        self._errors = redis_errors()
        self._take = _Script(client, TAKE_SCRIPT)

    def take(self, key: str, buckets: Sequence[Bucket], cost: float) -> float:
        if any(cost > b.burst for b in buckets):
            return math.inf
        tenant, _, kind = key.partition(":")
        keys = [f"{self.prefix}rate:{{{tenant}}}:{kind}:{i}" for i in range(len(buckets))]
        args: list[Any] = [repr(float(cost))]
        for bucket in buckets:
            args += [repr(bucket.rate_per_s / 1000.0), repr(float(bucket.burst))]
        try:
            (reply,) = self._take.run_many([(keys, args)])
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error
        return float(reply) / 1000.0


class RedisContributionCounter(ContributionCounter):
    """Counts of the window as ``<prefix>gl:{global}:<window>:total`` and the tenants' beside it.

    The window's keys share one hash tag: the total and every tenant's count move together atomically (one slot;
    feedback volume is modest, so one slot is no hot spot)."""

    def __init__(self, client: Any, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix
        self._errors = redis_errors()
        self._admit = _Script(client, ADMIT_SCRIPT)

    def admit(self, tenant: str, capped: int, trusted: int, cap: ShareCap) -> int:
        try:
            seconds, _ = self.client.time()
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error
        window = int(seconds // cap.window_s)
        base = f"{self.prefix}gl:{{global}}:{window}"
        ttl_ms = int(cap.window_s * 2000) + 1000
        args = [capped, trusted, repr(cap.max_share), cap.min_events, ttl_ms]
        try:
            (admitted,) = self._admit.run_many([([f"{base}:total", f"{base}:t:{tenant}"], args)])
        except self._errors as error:
            raise StoreUnavailableError(f"redis: {error}") from error
        return int(admitted)
