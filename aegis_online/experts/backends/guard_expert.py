"""A guard-model family on a backend, as an ``Expert``: the family says what to ask and how to read it.

A batch costs one backend call, whatever the number of queries per item (ShieldGemma asks one per harm), so the
backend can batch them on the accelerator or send them concurrently. A malformed answer spoils only its own item.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Sequence
from typing import Protocol

from pydantic import ValidationError

from aegis_online.experts.backends.model_thread import ModelThread
from aegis_online.experts.base import Expert, ExpertInput
from aegis_online.experts.guards.base import GuardAnswer, GuardFamily, GuardParseError, GuardQuery
from aegis_online.schemas import ExpertOutput

__all__ = ["GuardBackend", "GuardExpert"]


class GuardBackend(Protocol):
    """Runs guard queries: ``answer`` is a coroutine (HTTP) or a blocking call (local engines)."""

    def answer(self, queries: Sequence[GuardQuery]) -> list[GuardAnswer] | Awaitable[list[GuardAnswer]]: ...


class GuardExpert(Expert):
    """``family`` prompts and parses; ``backend`` generates. ``name`` defaults to the family's."""

    def __init__(self, family: GuardFamily, backend: GuardBackend, name: str | None = None) -> None:
        self.family = family
        self.backend = backend
        self.name = name or family.name
        self.categories = frozenset(family.categories)
        self.free_form = family.free_form
        #: where a blocking backend (a local model) runs: one thread of its own, not the loop's shared pool
        self.thread = ModelThread(self.name)

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        started = time.perf_counter()
        per_item = [self.family.queries(item) for item in batch]
        queries = [q for item_queries in per_item for q in item_queries]
        answers = await self._answer(queries) if queries else []
        if len(answers) != len(queries):
            raise RuntimeError(f"backend returned {len(answers)} answers for {len(queries)} queries")
        latency_ms = (time.perf_counter() - started) * 1000.0
        outputs = []
        offset = 0
        for item, item_queries in zip(batch, per_item, strict=True):
            item_answers = answers[offset : offset + len(item_queries)]
            offset += len(item_queries)
            outputs.append(self._output(item, item_queries, item_answers, latency_ms))
        return outputs

    async def _answer(self, queries: list[GuardQuery]) -> list[GuardAnswer]:
        if inspect.iscoroutinefunction(self.backend.answer):
            return list(await self.backend.answer(queries))
        # A blocking engine call must not stall the event loop that serves other requests.
        result = await self.thread.run(self.backend.answer, queries)
        return list(await result) if inspect.isawaitable(result) else list(result)

    async def aclose(self) -> None:
        """Release the backend's resources (pooled connections) if it holds any, and the model's thread."""
        self.thread.close()
        close = getattr(self.backend, "aclose", None)
        if close is not None:
            await close()

    def _output(
        self, item: ExpertInput, queries: Sequence[GuardQuery], answers: Sequence[GuardAnswer], latency_ms: float
    ) -> ExpertOutput:
        try:
            scores = self.family.parse(item, queries, answers)
        except GuardParseError as exc:
            return ExpertOutput(expert=self.name, latency_ms=latency_ms, error=f"parse: {exc}")
        try:
            return ExpertOutput(expert=self.name, scores=scores, latency_ms=latency_ms)
        except ValidationError as exc:  # e.g. a probability outside [0, 1]: this item's fault, not the batch's
            detail = exc.errors()[0]
            return ExpertOutput(expert=self.name, latency_ms=latency_ms, error=f"invalid scores: {detail['msg']}")
