"""One persistent thread per loaded model, for its blocking calls.

Why not the event loop's default executor (``asyncio.to_thread``): a model's calls are serialised anyway (each local
backend holds a lock: one forward pass at a time on its device, and a fast tokenizer shared across threads can fail
with "Already borrowed"), so a pool only adds threads that wait on that lock. Worse on a GPU: a call lands on
whichever of the pool's up to ``min(32, CPUs + 4)`` threads is free, and a thread's first CUDA matrix product creates
its own cuBLAS handle and workspace. On an H200 a call on a thread the process had not used before took about 0.3 s
longer (docs/gpu.md), so a service paid it on its first few dozen batches. One thread that lives as long as the model
pays it once. Calls queue in arrival order, and a call whose caller gave up (a deadline) before it started is
dropped instead of run.

>>> import asyncio, threading
>>> worker = ModelThread("demo")
>>> async def main():
...     first = await worker.run(threading.get_ident)
...     return first == await worker.run(threading.get_ident) != threading.get_ident()
>>> asyncio.run(main())
True
>>> worker.close()
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["ModelThread"]

T = TypeVar("T")


class ModelThread:
    """Runs a model's blocking calls, one at a time, on one thread of its own (started on the first call)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None
        self._guard = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        with self._guard:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{self.name}")
            return self._executor

    async def run(self, fn: Callable[..., T], /, *args: object) -> T:
        """``fn(*args)`` on the model's thread, with the caller's context variables (as ``asyncio.to_thread``)."""
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pool(), call)

    def close(self) -> None:
        """Drop the calls not yet started and let the thread end after the running one; a later call starts a new
        thread."""
        with self._guard:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
