"""Batching in an expert replica: each batch takes every call that queued while the previous one ran.

Why not ``@serve.batch``: since ray-project/ray#53096 (2025; Ray 2.60 here) its queue forms the next batch as soon
as the previous one *starts*, then holds it until a slot frees (``max_concurrent_batches``, 1 by default). Under load
each batch is what arrived within ``batch_wait_timeout_s`` of its first call, frozen while the model is busy. With a
2 ms wait, a replica's batches held 1.3-1.8 calls with 8 in flight on the 2-core development machine, and 2.6-3.0 with
64 in flight on an H200 (docs/gpu.md), where a guard then served a tenth of what it serves batched in process. Here
the batch is formed when the model is free to run it, so everything that waited during the previous batch goes into
the next, up to ``max_batch_size``; ``batch_wait_s`` still lets a batch wait briefly for company, as
``@serve.batch``'s does.

A caller that gives up (Ray cancels a request whose deadline passed) is dropped from the queue, not scored.

**Batching only where it pays.** Each batch's duration is fitted, by least squares over every batch the replica ran,
as ``a + b n`` for n calls (``BatchCost``). A batch of the q queued calls takes ``a + b q``, one call at a time
``q (a + b)``: batching saves ``(q - 1) a`` of the model's time. So while the fitted ``a`` is positive (a guard on a
GPU, where a batch costs little more than one call) the batcher takes everything queued. Where it is zero or below (a
batch costs at least its calls one by one: MiniLM on a CPU pads every text to the batch's longest, and measured 25
ms a text alone against 42-90 ms a text in batches of 8-16 on two cores), it scores one call at a time, with no wait:
the first callers no longer wait for the whole batch, and the model does no more work. Until the fit has seen
``BatchCost.MIN_BATCHES`` batches of at least two sizes, it batches. A batch that failed is not timed.

>>> import asyncio
>>> async def main():
...     sizes = []
...     async def score(items):
...         sizes.append(len(items))
...         await asyncio.sleep(0.01)  # the model at work: the other calls queue meanwhile
...         return [item * 2 for item in items]
...     batcher = ReplicaBatcher(score, max_batch_size=8, batch_wait_s=0.0)
...     results = await asyncio.gather(*(batcher(i) for i in range(5)))
...     return results, sizes
>>> asyncio.run(main())
([0, 2, 4, 6, 8], [5])
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["BatchCost", "ReplicaBatcher"]

T = TypeVar("T")
R = TypeVar("R")


class BatchCost:
    """A batch's duration as ``a + b n`` seconds for n calls: ordinary least squares over every batch recorded.

    No forgetting: what a batch costs is the model's and the hardware's, which a replica keeps for its life.

    >>> cost = BatchCost()
    >>> for n in (1, 4, 8) * 4:
    ...     cost.add(n, 0.040 + 0.002 * n)  # a GPU-like model: a fixed cost, and a little more per call
    >>> [round(x, 4) for x in cost.fit()], cost.batch_pays()
    ([0.04, 0.002], True)
    """

    #: batches recorded before the fit is trusted (and until then, batching goes on)
    MIN_BATCHES = 10

    def __init__(self) -> None:
        self.count = 0
        self._n = self._nn = self._d = self._nd = 0.0

    def add(self, size: int, seconds: float) -> None:
        self.count += 1
        self._n += size
        self._nn += size * size
        self._d += seconds
        self._nd += size * seconds

    def fit(self) -> tuple[float, float] | None:
        """``(a, b)`` in seconds, or None before ``MIN_BATCHES`` batches of at least two sizes."""
        if self.count < self.MIN_BATCHES:
            return None
        mean_n, mean_d = self._n / self.count, self._d / self.count
        spread = self._nn / self.count - mean_n * mean_n
        if spread < 1e-9 * max(1.0, mean_n * mean_n):  # one size so far: no slope to fit
            return None
        slope = (self._nd / self.count - mean_n * mean_d) / spread
        return mean_d - slope * mean_n, slope

    def batch_pays(self) -> bool:
        """Whether a batch is fitted to cost less than its calls one at a time (True while not yet known)."""
        fitted = self.fit()
        return fitted is None or fitted[0] > 0


class ReplicaBatcher(Generic[T, R]):
    """Calls ``score`` on batches of the items passed to it concurrently; one batch at a time."""

    def __init__(
        self,
        score: Callable[[list[T]], Awaitable[Sequence[R]]],
        max_batch_size: int,
        batch_wait_s: float,
        timed: Callable[[Sequence[R]], bool] = lambda results: True,
    ) -> None:
        """``timed(results)``: whether a batch's duration goes into ``cost`` (an expert's batch whose outputs are
        errors says nothing of what scoring costs: a backend that is down fails fast)."""
        if max_batch_size < 1 or batch_wait_s < 0:
            raise ValueError("need max_batch_size >= 1 and batch_wait_s >= 0")
        self.score = score
        self.timed = timed
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        #: batches scored and the items in them, since the start (their ratio: the mean batch)
        self.batches = 0
        self.items = 0
        self.cost = BatchCost()

    async def __call__(self, item: T) -> R:
        """``item``'s result, scored with whatever else is queued when the model is next free."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first call, or a new event loop (the old one's worker is gone with it)
            self._loop, self._arrived, self._worker = loop, asyncio.Event(), None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run())
        future: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, future))
        self._arrived.set()
        return await future  # cancelled with the caller: the worker then skips it

    def _live(self) -> int:
        while self._queue and self._queue[0][1].done():  # callers that gave up before their batch
            self._queue.popleft()
        return sum(not future.done() for _, future in self._queue)

    async def _wait_for_arrivals(self, timeout: float | None) -> None:
        assert self._arrived is not None
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._live():
                await self._wait_for_arrivals(None)
            size = self.max_batch_size if self.cost.batch_pays() else 1
            deadline = loop.time() + self.batch_wait_s
            while self._live() < size and (left := deadline - loop.time()) > 0:
                await self._wait_for_arrivals(left)
            batch: list[tuple[T, asyncio.Future[R]]] = []
            while self._queue and len(batch) < size:
                item, future = self._queue.popleft()
                if not future.done():
                    batch.append((item, future))
            if not batch:
                continue
            self.batches += 1
            self.items += len(batch)
            try:
                started = loop.time()
                results = list(await self.score([item for item, _ in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"score returned {len(results)} results for {len(batch)} items")
                if self.timed(results):
                    self.cost.add(len(batch), loop.time() - started)
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
            except Exception as exc:  # every caller of the batch gets the error; the next batch runs
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            finally:  # cancelled (the replica stopping): no caller is left waiting
                for _, future in batch:
                    if not future.done():
                        future.cancel()
