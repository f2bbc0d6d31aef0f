"""Admission control (issue 11, item 5): beyond capacity the service refuses at once with 503 and ``Retry-After``,
and no admitted request outlives its deadline, queueing included. Over real HTTP (uvicorn), no Ray."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import httpx
import pytest

from aegis_online.config import AdmissionSection
from aegis_online.experts import Expert, ExpertInput
from aegis_online.schemas import ExpertOutput
from aegis_online.serve.admission import AdmissionControl, AimdLimit, LatencyEstimate
from aegis_online.serve.app import create_app
from aegis_online.serve.errors import ApiError

from .helpers import ACME_KEY, bearer, conversation, make_service, uvicorn_server


class BoundedExpert(Expert):
    """Takes ``service_s`` per call and serves ``slots`` calls at once: a replica with finite capacity, whose queue
    (like Ray's) knows nothing of deadlines."""

    def __init__(self, name: str, slots: int, service_s: float) -> None:
        self.name = name
        self.categories = frozenset({"S1", "S12"})
        self.slots = slots
        self.service_s = service_s
        self._semaphore: asyncio.Semaphore | None = None

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.slots)
        async with self._semaphore:
            await asyncio.sleep(self.service_s)
        return [
            ExpertOutput(expert=self.name, scores={c.id: 0.1 for c in item.categories if self.covers(c)})
            for item in batch
        ]


async def _timed_post(client: httpx.AsyncClient, path: str, body: object) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = await client.post(path, json=body)
    return response, time.perf_counter() - started


def test_a_burst_beyond_capacity_is_refused_at_once_and_admitted_requests_meet_the_deadline() -> None:
    # Capacity: 2 calls of 200 ms at once, i.e. 10 requests/s; 60 arrive together with a 2 s deadline. (At 100 ms
    # and 1 s, the client's own scheduling of 60 requests on 2 loaded cores once took 0.61 s to see an at-once
    # refusal: the times are scaled so that this slack, which does not scale, stays well inside the bounds.)
    deadline_s = 2.0
    service = make_service(
        [BoundedExpert("bounded", slots=2, service_s=0.2)],
        limits={
            "deadline_ms": int(deadline_s * 1000),
            "admission": {"initial_limit": 2, "max_limit": 2},
        },
    )

    async def burst(url: str) -> list[tuple[httpx.Response, float]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(base_url=url, headers=bearer(ACME_KEY), timeout=30, limits=limits) as client:
            for i in range(5):  # connections, caches and the latency estimate; not measured
                await client.post("/v1/moderate", json=conversation(f"warm-up {i}"))
            bodies = [conversation(f"message {i}") for i in range(60)]
            return await asyncio.gather(*(_timed_post(client, "/v1/moderate", b) for b in bodies))

    with uvicorn_server(create_app(service)) as url:
        results = asyncio.run(burst(url))
    answered = [(r, s) for r, s in results if r.status_code == 200]
    refused = [(r, s) for r, s in results if r.status_code == 503]
    assert len(answered) + len(refused) == len(results), {r.status_code for r, _ in results}
    assert len(answered) >= 6 and len(refused) >= 20, (len(answered), len(refused))
    # End to end as the client saw it; the slack is the client's own scheduling of 60 requests on 2 shared cores
    # (before admission control the same burst, at 1 s, had 40 degraded answers, checked below, and took up to 1.14 s).
    assert max(s for _, s in answered) <= 1.25 * deadline_s
    # Most are refused at once. A few may have been queued on the latency of the warm-up and then refused when their
    # latest start passed (the burst's own scheduling on 2 cores slows every request): those say so, and were still
    # refused before the deadline, not after it.
    at_once = [(r, s) for r, s in refused if "could not start in time" in r.json()["error"]["message"]]
    after_wait = [(r, s) for r, s in refused if "did not start in time" in r.json()["error"]["message"]]
    assert len(at_once) + len(after_wait) == len(refused)
    assert len(at_once) >= 20, (len(at_once), len(after_wait))
    assert max(s for _, s in at_once) < 0.5 * deadline_s  # at once, not when the deadline ran out
    assert all(s <= 1.25 * deadline_s for _, s in after_wait)
    for response, _ in refused:
        assert int(response.headers["Retry-After"]) >= 1
        error = response.json()["error"]
        assert error["code"] == "overloaded" and error["type"] == "unavailable"
    assert not any(r.json()["degraded"] for r, _ in answered)  # what started had the time it needed
    metrics = service.metrics.render()[0].decode()
    assert f'aegis_admission_total{{outcome="refused"}} {float(len(at_once))}' in metrics
    if after_wait:
        assert f'aegis_admission_total{{outcome="refused_after_wait"}} {float(len(after_wait))}' in metrics
    assert "aegis_admission_limit 2.0" in metrics


def test_openai_moderations_inputs_count_each_and_a_refusal_is_in_openais_shape() -> None:
    service = make_service(
        [BoundedExpert("bounded", slots=8, service_s=0.3)],
        limits={"deadline_ms": 2000, "admission": {"initial_limit": 3, "max_limit": 3, "max_queue": 0}},
    )

    async def run(url: str) -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(base_url=url, headers=bearer(ACME_KEY), timeout=30) as client:
            two = asyncio.create_task(client.post("/v1/moderations", json={"input": ["a", "b"]}))
            await asyncio.sleep(0.1)  # two of the three units are taken
            second = await client.post("/v1/moderations", json={"input": ["c", "d"]})
            single = await client.post("/v1/moderate", json=conversation("e"))
            return await two, second, single

    with uvicorn_server(create_app(service)) as url:
        first, second, single = asyncio.run(run(url))
    assert first.status_code == 200 and len(first.json()["results"]) == 2
    assert second.status_code == 503 and second.headers["Retry-After"]
    error = second.json()["error"]
    assert error["code"] == "overloaded" and "param" in error
    assert single.status_code == 200  # one unit still fitted beside the two


# -- the controller as a unit ------------------------------------------------------------------------------------------


def test_the_limit_grows_while_latency_is_under_target_and_shrinks_once_per_round_trip_above() -> None:
    limit = AimdLimit(initial=4, minimum=2, maximum=40, target_s=0.5, backoff=0.9)
    for _ in range(4):  # slow start: +1 per fast request while the limit is used
        limit.update(0.1, in_flight=limit.limit, now=0.0)
    assert limit.limit == 8 and limit.slow_start
    limit.update(0.8, in_flight=8, now=1.0)
    assert limit.limit == pytest.approx(7.2) and not limit.slow_start
    limit.update(0.9, in_flight=7, now=1.5)  # started under the old limit: no second decrease in the round trip
    assert limit.limit == pytest.approx(7.2)
    limit.update(0.9, in_flight=7, now=1.9)
    assert limit.limit == pytest.approx(6.48)
    limit.update(0.1, in_flight=7, now=2.0)  # congestion avoidance: +1/limit per fast request
    assert limit.limit == pytest.approx(6.48 + 1 / 6.48)


def test_the_limit_stays_within_its_bounds_and_does_not_grow_when_idle() -> None:
    limit = AimdLimit(initial=3, minimum=2, maximum=5, target_s=0.5, backoff=0.5)
    for _ in range(10):
        limit.update(0.1, in_flight=limit.limit, now=0.0)
    assert limit.limit == 5
    for t in range(10):
        limit.update(1.0, in_flight=5, now=10.0 * t)
    assert limit.limit == 2
    for _ in range(10):
        limit.update(0.1, in_flight=0, now=100.0)  # idle: nothing learnt about capacity
    assert limit.limit == 2


def _settings(**values: object) -> AdmissionSection:
    return AdmissionSection.model_validate(values)


def test_a_request_that_cannot_start_in_time_is_refused_without_waiting() -> None:
    async def run() -> None:
        control = AdmissionControl(_settings(initial_limit=1, max_limit=1), deadline_s=1.0)
        control.latency.mean_s = 0.4  # measured: each start frees a slot every 0.4 s
        now = time.monotonic()
        async with control.slot(now) as budget_s:
            assert 0.85 < budget_s <= 0.9  # the deadline less the reserve (10%)
            waiting = asyncio.create_task(control.slot(now).__aenter__())  # starts in ~0.4 s: in time
            await asyncio.sleep(0.01)
            assert control.queued == 1
            started = time.monotonic()
            with pytest.raises(ApiError) as refused:  # would start in ~0.8 s, leaving 0.15 s for 0.4 s of work
                async with control.slot(now):
                    pass
            assert time.monotonic() - started < 0.05
            # Retry-After: the one in progress, the one queued and this one, 0.4 s each
            assert refused.value.status == 503 and refused.value.headers == {"Retry-After": "2"}
        budget = await waiting
        assert 0 < budget < 0.95
        assert control.in_flight == 1 and control.queued == 0

    asyncio.run(run())


def test_a_standing_queue_admits_only_what_starts_within_the_queueing_target() -> None:
    async def run() -> None:
        # deadline 10 s: the latency target (a round trip) is 5 s, the queueing target 1 s
        control = AdmissionControl(_settings(initial_limit=1, max_limit=1), deadline_s=10.0)
        control.latency.mean_s = 0.6
        now = time.monotonic()
        async with control.slot(now):
            queued = asyncio.create_task(control.slot(now).__aenter__())  # starts in ~0.6 s: fine either way
            await asyncio.sleep(0.01)
            assert control.queued == 1
            # two more would start in ~1.2 s, well within the deadline: a burst, queued
            burst = asyncio.create_task(control.slot(now).__aenter__())
            await asyncio.sleep(0.01)
            assert control.queued == 2
            # the queue has stood for a round trip: everything that left it waited longer than the 1 s target
            control.standing.left(1.5, now - 6.0)
            with pytest.raises(ApiError) as refused:  # would start in ~1.8 s: within the deadline, not the target
                async with control.slot(now):
                    pass
            assert refused.value.status == 503
        for task in (queued, burst):
            task.cancel()
        await asyncio.gather(queued, burst, return_exceptions=True)

    asyncio.run(run())


def test_the_latency_estimate_is_tcps_smoothed_mean_and_deviation() -> None:
    estimate = LatencyEstimate()
    assert estimate.upper_s == 0.0  # before any sample: no guess
    estimate.add(0.2)
    assert (estimate.mean_s, estimate.deviation_s) == (0.2, 0.1)
    estimate.add(0.6)
    assert estimate.deviation_s == pytest.approx(0.175) and estimate.mean_s == pytest.approx(0.25)
    assert estimate.high_s == pytest.approx(0.25 + 0.175) and estimate.upper_s == pytest.approx(0.25 + 2 * 0.175)


def test_a_queued_request_whose_caller_leaves_gives_its_place_up() -> None:
    async def run() -> None:
        control = AdmissionControl(_settings(initial_limit=2, max_limit=2), deadline_s=5.0)
        now = time.monotonic()
        async with control.slot(now, cost=2):
            gone = asyncio.create_task(control.slot(now, cost=1).__aenter__())
            await asyncio.sleep(0.01)
            assert control.queued == 1
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)
            assert control.queued == 0
        assert control.in_flight == 0
        async with control.slot(time.monotonic(), cost=2):
            assert control.in_flight == 2

    asyncio.run(run())


def test_with_admission_off_every_request_starts_with_what_is_left_of_its_deadline() -> None:
    async def run() -> None:
        control = AdmissionControl(_settings(enabled=False, initial_limit=1, max_limit=1), deadline_s=2.0)
        arrived = time.monotonic() - 0.5  # it waited 0.5 s before reaching the app
        async with control.slot(arrived, cost=10) as first, control.slot(arrived, cost=10) as second:
            assert 1.25 < first <= 1.3 and 1.25 < second <= 1.3  # 2 s less 10% less the 0.5 s already gone

    asyncio.run(run())
