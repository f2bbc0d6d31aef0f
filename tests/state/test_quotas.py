"""The counters behind rate limits and global-learning shares, in process and in a real Redis: all-or-nothing
takes, refill over time, the share cap, and atomicity under concurrent callers."""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import pytest

from aegis_online.state.quotas import Bucket, MemoryContributionCounter, MemoryRateLimiter, ShareCap
from aegis_online.state.redis_quotas import RedisContributionCounter, RedisRateLimiter

PER_SECOND = [Bucket(rate_per_s=10.0, burst=5.0)]


def test_memory_buckets_take_all_or_nothing_and_refill() -> None:
    now = [0.0]
    limiter = MemoryRateLimiter(clock=lambda: now[0])
    two = [Bucket(rate_per_s=10.0, burst=5.0), Bucket(rate_per_s=1.0, burst=3.0)]
    assert limiter.take("t:moderate", two, 3) == 0.0
    assert limiter.take("t:moderate", two, 1) == pytest.approx(1.0)  # the second bucket has 0 left: 1 s
    now[0] = 1.0
    assert limiter.take("t:moderate", two, 1) == 0.0  # nothing was taken from the first bucket by the refusal
    assert math.isinf(limiter.take("t:moderate", two, 4))  # more than a burst can never pass


def test_memory_contribution_counter_starts_a_new_window() -> None:
    now = [0.0]
    counter = MemoryContributionCounter(clock=lambda: now[0])
    cap = ShareCap(max_share=0.5, window_s=10, min_events=2)
    assert counter.admit("acme", 5, 0, cap) == 2
    now[0] = 10.0
    assert counter.admit("acme", 5, 0, cap) == 2


def test_redis_buckets_refill_on_the_servers_clock(redis_client: Any, prefix: str) -> None:
    limiter = RedisRateLimiter(redis_client, prefix)
    assert [limiter.take("acme:moderate", PER_SECOND, 1) for _ in range(5)] == [0.0] * 5
    wait = limiter.take("acme:moderate", PER_SECOND, 1)
    assert 0.0 < wait <= 0.1 + 1e-6
    time.sleep(wait + 0.02)
    assert limiter.take("acme:moderate", PER_SECOND, 1) == 0.0
    assert limiter.take("globex:moderate", PER_SECOND, 5) == 0.0  # another tenant's bucket
    assert math.isinf(limiter.take("acme:moderate", PER_SECOND, 6))
    assert all(k.startswith(prefix.encode()) and b"{acme}" in k for k in redis_client.keys(prefix + "rate:{acme}*"))


def test_redis_buckets_never_hand_out_more_than_the_burst_to_racing_callers(redis_client: Any, prefix: str) -> None:
    limiter = RedisRateLimiter(redis_client, prefix)
    slow = [Bucket(rate_per_s=0.001, burst=20.0)]
    taken: list[float] = []

    def call() -> None:
        for _ in range(10):
            taken.append(limiter.take("acme:feedback", slow, 1))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(w == 0.0 for w in taken) == 20


def test_redis_contribution_counter_caps_a_tenants_share(redis_client: Any, prefix: str) -> None:
    counter = RedisContributionCounter(redis_client, prefix)
    cap = ShareCap(max_share=0.25, window_s=30 * 86400, min_events=3)
    assert counter.admit("acme", 6, 0, cap) == 3
    assert counter.admit("ops", 0, 12, cap) == 0  # trusted updates: 15 in the window
    assert counter.admit("acme", 2, 0, cap) == 1  # 4 <= 0.25 x 16
    assert MemoryContributionCounter().admit("acme", 6, 0, cap) == 3  # the same rule in process
