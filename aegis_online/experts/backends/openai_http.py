"""Experts behind an OpenAI-compatible HTTP API: a served guard model, and a moderation endpoint.

``OpenAIChatGuardBackend`` asks a guard model served by vLLM, TGI, a NIM or any OpenAI-compatible server for a
greedy answer with top logprobs, and reads the verdict with the same rule as the local backends. Chat queries go to
``/chat/completions`` (the server applies the chat template); raw prompts to ``/completions``.
``OpenAIModerationsExpert`` is a whole expert: ``/moderations`` scores every OpenAI category at once, which the
declared ``openai_omni`` map projects onto the canonical ids.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aegis_online.experts.backends.http_client import GuardHTTPError, RetryingJSONClient
from aegis_online.experts.backends.verdict_logprobs import Step, read_verdict
from aegis_online.experts.base import Expert, ExpertInput
from aegis_online.experts.guards.base import GuardAnswer, GuardQuery
from aegis_online.schemas import ExpertOutput
from aegis_online.taxonomy import EXTERNAL, ExternalTaxonomy

__all__ = [
    "OpenAIChatGuardBackend",
    "OpenAIModerationsExpert",
    "answer_from_chat_completion",
    "answer_from_completion",
]

logger = logging.getLogger(__name__)

TOP_LOGPROBS = 20
"""The OpenAI API's maximum ``top_logprobs``; vLLM's server caps at the same value by default."""


class OpenAIChatGuardBackend:
    """A guard model behind an OpenAI-compatible server; ``answer`` sends one request per query, concurrently.

    Parameters
    ----------
    base_url
        Server root including the version, e.g. ``http://guard:8000/v1``.
    model
        The served model name sent in every request.
    timeout_s, max_retries, max_connections
        Per-attempt limit, retries on retryable failures, and the size of the shared connection pool.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 2,
        max_connections: int = 32,
        backoff_s: float = 0.2,
    ) -> None:
        self.model = model
        self._http = RetryingJSONClient(
            base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            max_retries=max_retries,
            max_connections=max_connections,
            backoff_s=backoff_s,
        )

    async def answer(self, queries: Sequence[GuardQuery]) -> list[GuardAnswer]:
        """Greedy text and P(positive verdict) per query, in order; the first failure raises."""
        tasks = [asyncio.ensure_future(self._answer_one(q)) for q in queries]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            # The batch has failed: the other requests would only hold connections another batch could use.
            for task in tasks:
                task.cancel()
            raise

    async def _answer_one(self, query: GuardQuery) -> GuardAnswer:
        common = {"model": self.model, "temperature": 0, "max_tokens": query.max_new_tokens}
        if query.prompt is None:
            body = {**common, "messages": list(query.messages), "logprobs": True, "top_logprobs": TOP_LOGPROBS}
            if query.template_kwargs:  # vLLM's extension of the chat API
                body["chat_template_kwargs"] = dict(query.template_kwargs)
            return answer_from_chat_completion(await self._http.post_json("chat/completions", body), query)
        body = {**common, "prompt": query.prompt, "logprobs": TOP_LOGPROBS}
        return answer_from_completion(await self._http.post_json("completions", body), query)

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()


def _with_chosen(candidates: dict[str, float], token: str, logprob: float | None) -> dict[str, float]:
    """Candidates including the generated token, which a server may leave out of its top list."""
    if logprob is not None and (token not in candidates or logprob > candidates[token]):
        candidates[token] = logprob
    return candidates


def _answer(text: str, steps: Sequence[Step], query: GuardQuery, finish_reason: object) -> GuardAnswer:
    """The answer to ``query``; ``finish_reason == "length"`` (the server stopped at ``max_tokens``, not at a stop
    token) marks it truncated, which a family that reasons first must not trust."""
    p, shares = read_verdict(steps, query)
    return GuardAnswer(text=text, p_positive=p, shares=shares, truncated=finish_reason == "length")


def answer_from_chat_completion(data: Mapping[str, Any], query: GuardQuery) -> GuardAnswer:
    """Read ``choices[0].message.content``, ``choices[0].logprobs.content[i].{token, top_logprobs}`` and
    ``choices[0].finish_reason``."""
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content") or ""
        finish_reason = choice.get("finish_reason")
        steps: list[Step] = []
        for entry in (choice.get("logprobs") or {}).get("content") or []:
            candidates: dict[str, float] = {}
            for top in entry.get("top_logprobs") or []:
                _with_chosen(candidates, top["token"], top["logprob"])
            steps.append((entry["token"], _with_chosen(candidates, entry["token"], entry.get("logprob"))))
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise GuardHTTPError(f"unexpected chat completion response: {type(exc).__name__}: {exc}") from exc
    return _answer(text, steps, query, finish_reason)


def answer_from_completion(data: Mapping[str, Any], query: GuardQuery) -> GuardAnswer:
    """Read ``choices[0].text``, the legacy ``choices[0].logprobs.{tokens, token_logprobs, top_logprobs}`` and
    ``choices[0].finish_reason``."""
    try:
        choice = data["choices"][0]
        text = choice.get("text") or ""
        finish_reason = choice.get("finish_reason")
        logprobs = choice.get("logprobs") or {}
        tokens = logprobs.get("tokens") or []
        chosen = logprobs.get("token_logprobs") or [None] * len(tokens)
        tops = logprobs.get("top_logprobs") or [None] * len(tokens)
        steps: list[Step] = [
            (token, _with_chosen(dict(top or {}), token, lp))
            for token, lp, top in zip(tokens, chosen, tops, strict=True)
        ]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        raise GuardHTTPError(f"unexpected completion response: {type(exc).__name__}: {exc}") from exc
    return _answer(text, steps, query, finish_reason)


_OMNI = EXTERNAL["openai_omni"]


class OpenAIModerationsExpert(Expert):
    """OpenAI's moderation endpoint (or a compatible one) as an expert: one request scores a whole batch.

    Only the checked turn is sent, since the endpoint has no notion of a conversation. Scores come back for every
    category the ``openai_omni`` map (or ``labels``: the catalog's ``category_map`` over it) covers; each output keeps
    those the input asked for.
    """

    def __init__(
        self,
        base_url: str = "https://api.openai.com/v1",
        model: str = "omni-moderation-latest",
        api_key: str | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 2,
        max_connections: int = 32,
        backoff_s: float = 0.2,
        name: str = "openai_moderation",
        labels: ExternalTaxonomy | None = None,
    ) -> None:
        self.name = name
        self.model = model
        self.labels = labels or _OMNI
        self.categories = frozenset(cat for targets in self.labels.to_canonical.values() for cat in targets)
        self._http = RetryingJSONClient(
            base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            max_retries=max_retries,
            max_connections=max_connections,
            backoff_s=backoff_s,
        )
        self._unknown_labels: set[str] = set()

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        if not batch:
            return []
        started = time.perf_counter()
        body = {"model": self.model, "input": [item.checked_text for item in batch]}
        data = await self._http.post_json("moderations", body)
        results = data.get("results") if isinstance(data, Mapping) else None
        if not isinstance(results, list) or len(results) != len(batch):
            raise GuardHTTPError(f"moderations: expected {len(batch)} results, got {type(results).__name__}")
        latency_ms = (time.perf_counter() - started) * 1000.0
        outputs = []
        for item, result in zip(batch, results, strict=True):
            canonical = self.labels.scores_to_canonical(self._known_scores(result.get("category_scores") or {}))
            wanted = {c.id for c in item.categories}
            scores = {cat: p for cat, p in canonical.items() if cat in wanted}
            outputs.append(ExpertOutput(expert=self.name, scores=scores, latency_ms=latency_ms))
        return outputs

    def _known_scores(self, category_scores: Mapping[str, Any]) -> dict[str, float]:
        """Scores of the labels the map declares, clipped to [0, 1].

        A label the service added after the map was written is logged once and left out: the service must keep
        answering, and the map is where it gets a meaning.
        """
        known: dict[str, float] = {}
        for label, score in category_scores.items():
            if label not in self.labels.to_canonical:
                if label not in self._unknown_labels:
                    self._unknown_labels.add(label)
                    logger.warning("%s: moderation label %r has no canonical mapping; ignored", self.name, label)
                continue
            if isinstance(score, (int, float)) and math.isfinite(score):
                known[label] = min(1.0, max(0.0, float(score)))
        return known

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self._http.aclose()
