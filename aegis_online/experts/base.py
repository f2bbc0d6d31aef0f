"""The expert interface: score a batch of conversations per category, asynchronously, under a deadline.

Like LlamaFirewall's scanners, every expert hides behind one async method; unlike them, an expert never decides:
it returns probabilities in the canonical taxonomy and the ensemble weighs them. An expert that fails or misses
its deadline yields an output carrying the error, never a failed request.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from aegis_online.language import UNDETERMINED
from aegis_online.schemas import Check, ExpertOutput, Message
from aegis_online.taxonomy import Category


@dataclass(frozen=True)
class ExpertInput:
    """One conversation and the categories to score in it (custom ones carry their description as policy)."""

    messages: tuple[Message, ...]
    check: Check
    categories: tuple[Category, ...]

    @property
    def checked_text(self) -> str:
        """The turn under check: the last user message (prompt) or the last assistant message (response)."""
        role = "user" if self.check == "prompt" else "assistant"
        return next(m.content for m in reversed(self.messages) if m.role == role)


class Expert(abc.ABC):
    """A content-safety expert.

    ``categories`` are the canonical ids it can score; ``free_form`` experts also score custom categories from
    their descriptions. ``languages`` are the ISO 639-1 codes of the languages it reads (None: any); the request
    path does not call it on a text in another language. ``score`` returns one output per input, in order.
    """

    name: str
    categories: frozenset[str]
    free_form: bool = False
    languages: frozenset[str] | None = None
    #: The labelled data files it was fitted on (``datasets.data_file_id``), each with whether it saw the file's
    #: held-out rows (``datasets.held_out``) too: ``eval`` calls its figures on those rows in-sample. Empty for an
    #: expert nobody fitted on labelled files here.
    trained_on: Mapping[str, bool] = MappingProxyType({})

    def covers(self, category: Category) -> bool:
        return category.id in self.categories or (category.custom and self.free_form)

    def reads(self, language: str) -> bool:
        """Whether it reads ``language`` (an ISO 639-1 code from ``language.identify``). An undetermined language
        is read by every expert: an expert is never put to sleep on a guess."""
        return self.languages is None or language == UNDETERMINED or language in self.languages

    @abc.abstractmethod
    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        """Probabilities per covered category for each input of the batch."""


async def score_with_deadline(expert: Expert, batch: Sequence[ExpertInput], deadline_s: float) -> list[ExpertOutput]:
    """Run ``expert.score`` under a deadline; a timeout or an exception becomes a per-expert error output.

    When a batch of several inputs raises (not a timeout), each input is scored again alone, in what is left of the
    deadline: one input that breaks the model (a prompt longer than a vLLM engine's ``max_model_len``, one that runs
    the GPU out of memory) then fails only its own output, not those batched beside it, which in an expert replica
    are other requests, often other tenants'."""
    started = time.perf_counter()
    kind: Literal["timeout", "error"] = "error"
    try:
        outputs = await asyncio.wait_for(expert.score(batch), timeout=deadline_s)
        if len(outputs) != len(batch):
            raise RuntimeError(f"returned {len(outputs)} outputs for {len(batch)} inputs")
        return outputs
    except asyncio.TimeoutError:
        error, kind = f"timed out after {deadline_s * 1000:.0f} ms", "timeout"
    except Exception as exc:  # an expert's failure must never fail the request
        error = f"{type(exc).__name__}: {exc}"
        left = deadline_s - (time.perf_counter() - started)
        if len(batch) > 1 and left > 0:
            alone = await asyncio.gather(*(score_with_deadline(expert, [item], left) for item in batch))
            return [only for (only,) in alone]
    elapsed = (time.perf_counter() - started) * 1000.0
    return [ExpertOutput(expert=expert.name, latency_ms=elapsed, error=error, error_kind=kind) for _ in batch]
