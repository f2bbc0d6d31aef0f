"""``ReplicaBatcher``: how an expert replica batches concurrent calls (no Ray: Ray's path is in test_ray_serve.py)."""

from __future__ import annotations

import asyncio

import pytest

from aegis_online.rayserve.batching import BatchCost, ReplicaBatcher


class SlowModel:
    """Scores a batch in ``seconds`` plus ``extra_per_call`` for each call after the first, recording each batch;
    ``fail_on`` items make the whole batch raise."""

    def __init__(
        self, seconds: float = 0.05, fail_on: frozenset[int] = frozenset(), extra_per_call: float = 0.0
    ) -> None:
        self.seconds = seconds
        self.fail_on = fail_on
        self.extra_per_call = extra_per_call
        self.batches: list[list[int]] = []

    async def score(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.seconds + self.extra_per_call * (len(items) - 1))
        if self.fail_on & set(items):
            raise ValueError(f"cannot score {sorted(self.fail_on & set(items))}")
        return [10 * item for item in items]


def test_calls_that_queue_while_a_batch_runs_all_go_into_the_next_batch() -> None:
    """The property ``@serve.batch`` lacks: it froze the next batch as the previous one started."""
    model = SlowModel()

    async def main() -> list[int]:
        batcher = ReplicaBatcher(model.score, max_batch_size=64, batch_wait_s=0.0)
        first = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.01)  # the first batch, [0], is running
        later = []
        for i in range(1, 8):  # arrive one by one while it runs
            later.append(asyncio.ensure_future(batcher(i)))
            await asyncio.sleep(0.002)
        results = await asyncio.gather(first, *later)
        assert (batcher.batches, batcher.items) == (2, 8)
        return results

    assert asyncio.run(main()) == [10 * i for i in range(8)]
    assert model.batches == [[0], list(range(1, 8))]


def test_a_batch_holds_at_most_max_batch_size_calls_and_keeps_their_order() -> None:
    model = SlowModel(seconds=0.01)

    async def main() -> list[int]:
        batcher = ReplicaBatcher(model.score, max_batch_size=3, batch_wait_s=0.0)
        return await asyncio.gather(*(batcher(i) for i in range(7)))

    assert asyncio.run(main()) == [10 * i for i in range(7)]
    assert model.batches == [[0, 1, 2], [3, 4, 5], [6]]


def test_the_batch_wait_lets_calls_arriving_on_an_idle_replica_join_the_first_batch() -> None:
    model = SlowModel(seconds=0.01)

    async def main(wait_s: float) -> None:
        batcher = ReplicaBatcher(model.score, max_batch_size=8, batch_wait_s=wait_s)
        calls = [asyncio.ensure_future(batcher(0))]
        await asyncio.sleep(0.02)
        calls.append(asyncio.ensure_future(batcher(1)))
        await asyncio.gather(*calls)

    asyncio.run(main(0.2))
    assert model.batches == [[0, 1]]
    model.batches.clear()
    asyncio.run(main(0.0))
    assert model.batches == [[0], [1]]


def test_a_caller_that_gives_up_before_its_batch_is_not_scored() -> None:
    model = SlowModel()

    async def main() -> None:
        batcher = ReplicaBatcher(model.score, max_batch_size=8, batch_wait_s=0.0)
        running = asyncio.ensure_future(batcher(0))
        await asyncio.sleep(0.01)
        late = asyncio.ensure_future(asyncio.wait_for(batcher(1), timeout=0.005))  # its deadline passes in the queue
        kept = asyncio.ensure_future(batcher(2))
        with pytest.raises(TimeoutError):
            await late
        assert await running == 0 and await kept == 20

    asyncio.run(main())
    assert model.batches == [[0], [2]]


def test_a_failing_batch_fails_each_of_its_callers_and_the_next_batch_still_runs() -> None:
    model = SlowModel(seconds=0.01, fail_on=frozenset({1}))

    async def main() -> list[object]:
        batcher = ReplicaBatcher(model.score, max_batch_size=2, batch_wait_s=0.0)
        return await asyncio.gather(*(batcher(i) for i in range(4)), return_exceptions=True)

    first, second, third, fourth = asyncio.run(main())
    assert isinstance(first, ValueError) and first is second and "cannot score [1]" in str(first)
    assert (third, fourth) == (20, 30)


def test_a_score_that_answers_for_the_wrong_number_of_items_is_an_error_for_each_caller() -> None:
    async def short(items: list[int]) -> list[int]:
        return items[:-1]

    async def main() -> list[object]:
        batcher = ReplicaBatcher(short, max_batch_size=4, batch_wait_s=0.01)
        return await asyncio.gather(*(batcher(i) for i in range(3)), return_exceptions=True)

    errors = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) and "2 results for 3 items" in str(e) for e in errors), errors


def test_a_batcher_keeps_working_when_called_from_a_new_event_loop() -> None:
    model = SlowModel(seconds=0.001)
    batcher = ReplicaBatcher(model.score, max_batch_size=4, batch_wait_s=0.01)
    assert asyncio.run(batcher(1)) == 10
    # the first loop's worker died with it, and its event cannot be awaited from another loop
    assert asyncio.run(asyncio.wait_for(batcher(2), timeout=5)) == 20


@pytest.mark.parametrize(("size", "wait"), [(0, 0.0), (4, -1.0)])
def test_a_batcher_needs_a_positive_size_and_a_wait_of_zero_or_more(size: int, wait: float) -> None:
    async def score(items: list[int]) -> list[int]:
        return items

    with pytest.raises(ValueError, match="max_batch_size >= 1 and batch_wait_s >= 0"):
        ReplicaBatcher(score, max_batch_size=size, batch_wait_s=wait)


@pytest.mark.parametrize(
    ("extra_per_call", "batches_of_six"),
    [
        (0.0, [6]),  # a batch costs what one call does (a guard on a GPU): everything queued goes together
        (0.03, [1] * 6),  # each call after the first costs more than a call alone (MiniLM padding on a CPU)
    ],
)
def test_a_replica_batches_only_once_it_measured_that_a_batch_costs_less_than_its_calls_one_at_a_time(
    extra_per_call: float, batches_of_six: list[int]
) -> None:
    model = SlowModel(seconds=0.02, extra_per_call=extra_per_call)

    async def main() -> None:
        batcher = ReplicaBatcher(model.score, max_batch_size=16, batch_wait_s=0.05)
        sizes = ([1, 2, 4, 8] * BatchCost.MIN_BATCHES)[: BatchCost.MIN_BATCHES]
        for size in sizes:  # what the replica sees while it learns the cost: it batches meanwhile
            assert await asyncio.gather(*(batcher(i) for i in range(size))) == [10 * i for i in range(size)]
        assert [len(b) for b in model.batches] == sizes
        model.batches.clear()
        assert await asyncio.gather(*(batcher(i) for i in range(6))) == [10 * i for i in range(6)]
        fixed, per_call = batcher.cost.fit()
        assert (fixed > 0) == (batches_of_six == [6]), (fixed, per_call)

    asyncio.run(main())
    assert [len(b) for b in model.batches] == batches_of_six


def test_the_batch_cost_is_unknown_until_enough_batches_of_two_sizes() -> None:
    cost = BatchCost()
    cost.add(1, 0.02)
    for _ in range(BatchCost.MIN_BATCHES - 2):
        cost.add(2, 0.01)
    assert cost.fit() is None and cost.batch_pays()  # two sizes, one batch short: it batches meanwhile
    cost.add(2, 0.01)
    assert cost.fit() == (pytest.approx(0.03), pytest.approx(-0.01))
    same = BatchCost()
    for _ in range(3 * BatchCost.MIN_BATCHES):
        same.add(4, 0.01)
    assert same.fit() is None and same.batch_pays()  # one size only: no slope, so it keeps batching
    superlinear = BatchCost()
    for n in (1, 2, 4, 8) * 3:
        superlinear.add(n, 0.025 * n + 0.005 * (n - 1))
    fixed, per_call = superlinear.fit()
    assert fixed == pytest.approx(-0.005) and per_call == pytest.approx(0.030) and not superlinear.batch_pays()


def test_batches_the_caller_says_are_not_timed_stay_out_of_the_cost_fit() -> None:
    """A replica's batch of error outputs (a backend that is down fails fast) says nothing of what scoring costs."""
    model = SlowModel(seconds=0.0)

    async def main() -> BatchCost:
        batcher = ReplicaBatcher(
            model.score, max_batch_size=8, batch_wait_s=0.0, timed=lambda results: 0 not in results
        )
        for size in (1, 2, 3):
            await asyncio.gather(*(batcher(i) for i in range(size)))  # each batch holds item 0, scored 0: not timed
            await asyncio.gather(*(batcher(i) for i in range(1, size + 1)))
        return batcher.cost

    cost = asyncio.run(main())
    assert cost.count == 3 and len(model.batches) == 6
