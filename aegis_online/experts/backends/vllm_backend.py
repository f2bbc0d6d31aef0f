"""Run guard queries on an offline ``vllm.LLM`` engine: the GPU backend, batching every query in one call.

vLLM is CUDA-only and pins its own torch, so it stays an optional extra: this module imports without it and the
constructor imports it. The engine returns the top ``logprobs`` candidates per step (the sampled token too);
``steps_from_completion`` turns them into the ``verdict_logprobs`` module's steps, so P(positive) is read by the
same rule as on every other backend. A verdict token outside the top k falls back to ``verdict_probability``'s
bounds.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from aegis_online.experts.backends.rendering import prompt_token_ids
from aegis_online.experts.backends.verdict_logprobs import Step, read_verdict
from aegis_online.experts.guards.base import GuardAnswer, GuardQuery

__all__ = ["VLLMGuardBackend", "answer_from_request_output", "steps_from_completion"]

INSTALL_HINT = (
    "the vLLM backend needs vllm, which runs only on CUDA GPUs: pip install 'aegis-online[vllm]' on a GPU machine"
)


class VLLMGuardBackend:
    """A guard model served in-process by vLLM; ``answer`` is synchronous (``GuardExpert`` runs it in a thread).

    Parameters
    ----------
    model
        Local path or hub id of the checkpoint.
    tensor_parallel_size, gpu_memory_utilization, max_model_len
        Passed to ``vllm.LLM``.
    top_logprobs
        Candidates per step; vLLM's default cap is 20, as in the OpenAI API.
    """

    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.85,
        max_model_len: int | None = None,
        top_logprobs: int = 20,
    ) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        self._sampling_params = vllm.SamplingParams
        self.top_logprobs = top_logprobs
        self.llm = vllm.LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
        )
        self.tokenizer = self.llm.get_tokenizer()
        self._lock = threading.Lock()  # the offline engine is not thread-safe; GuardExpert calls from threads

    def answer(self, queries: Sequence[GuardQuery]) -> list[GuardAnswer]:
        """Greedy text and P(positive verdict) per query; vLLM schedules the whole list as one batch."""
        if not queries:
            return []
        # Token ids, not text: vLLM would add a second BOS to a chat template that already wrote one.
        prompts = [{"prompt_token_ids": prompt_token_ids(self.tokenizer, q)} for q in queries]
        params = [
            self._sampling_params(temperature=0.0, max_tokens=q.max_new_tokens, logprobs=self.top_logprobs)
            for q in queries
        ]
        with self._lock:
            outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [answer_from_request_output(o, q) for o, q in zip(outputs, queries, strict=True)]


def steps_from_completion(completion: Any) -> list[Step]:
    """Steps of one ``CompletionOutput``: the sampled token's text and every returned candidate's logprob.

    ``completion.logprobs`` holds one ``{token_id: Logprob}`` per generated token; ``token_ids`` (when present)
    names the sampled one, otherwise greedy decoding makes it the likeliest candidate.
    """
    per_step: Sequence[Mapping[int, Any]] = completion.logprobs or []
    sampled: Sequence[int] | None = getattr(completion, "token_ids", None)
    steps: list[Step] = []
    for index, logprobs in enumerate(per_step):
        if not logprobs:  # no candidates: an empty step, which the verdict reader skips like whitespace
            steps.append(("", {}))
            continue
        candidates: dict[str, float] = {}
        for entry in logprobs.values():
            text = entry.decoded_token or ""
            if text not in candidates or entry.logprob > candidates[text]:
                candidates[text] = entry.logprob
        if sampled is not None and index < len(sampled) and sampled[index] in logprobs:
            chosen = logprobs[sampled[index]]
        else:
            chosen = max(logprobs.values(), key=lambda e: e.logprob)
        steps.append((chosen.decoded_token or "", candidates))
    return steps


def answer_from_request_output(output: Any, query: GuardQuery) -> GuardAnswer:
    """A ``GuardAnswer`` from a vLLM ``RequestOutput`` (its first completion) for ``query``.

    ``finish_reason == "length"``: the engine stopped at ``max_tokens``, not at a stop token, so the answer is
    reported truncated (a family that reasons first cannot trust it).
    """
    completion = output.outputs[0]
    steps = steps_from_completion(completion)
    p, shares = read_verdict(steps, query)
    truncated = getattr(completion, "finish_reason", None) == "length"
    return GuardAnswer(text=completion.text, p_positive=p, shares=shares, truncated=truncated)
