"""Run guard queries on a Hugging Face causal LM in this process (CPU or one GPU), greedily, with exact verdicts.

The backend for development machines and small deployments; vLLM serves the same queries at scale. Because the
logits of the whole vocabulary are at hand, the verdict tokens' logprobs are always included among a step's
candidates, so P(positive) is exact even when a verdict token is outside the top k. torch and transformers are
imported in the constructor, so this module imports without the ``llm`` extra.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from aegis_online.experts.backends.rendering import prompt_token_ids
from aegis_online.experts.backends.verdict_logprobs import Step, read_verdict
from aegis_online.experts.guards.base import GuardAnswer, GuardQuery

__all__ = ["TransformersGuardBackend"]

_INSTALL_HINT = "the transformers backend needs torch and transformers: pip install 'aegis-online[llm]'"


class TransformersGuardBackend:
    """A guard model loaded with ``AutoModelForCausalLM`` from a local path or a hub id.

    Parameters
    ----------
    model
        Directory written by ``save_pretrained`` or a hub id (resolved from the local cache when offline).
    device
        torch device the model runs on.
    dtype
        ``"auto"`` (the checkpoint's dtype) or a torch dtype name such as ``"bfloat16"``.
    max_batch_size
        Queries per ``generate`` call; more queries are split into several batches.
    top_k
        Candidates per step besides the verdict tokens; only matters for reading a verdict after a prefix that
        the verdict tokens could be split into.
    """

    def __init__(
        self, model: str, device: str = "cpu", dtype: str = "auto", max_batch_size: int = 8, top_k: int = 20
    ) -> None:
        if max_batch_size < 1 or top_k < 1:
            raise ValueError("max_batch_size and top_k must be at least 1")
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        self._torch = torch
        self.max_batch_size = max_batch_size
        self.top_k = top_k
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype, None)
        if not (torch_dtype == "auto" or isinstance(torch_dtype, torch.dtype)):
            raise ValueError(f"dtype must be 'auto' or a torch dtype name such as 'bfloat16', got {dtype!r}")
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        # transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; the ``llm`` extra allows older releases.
        major, minor = (int(part) for part in transformers.__version__.split(".")[:2])
        dtype_kwarg = "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
        loaded = AutoModelForCausalLM.from_pretrained(model, **{dtype_kwarg: torch_dtype})
        self.model = loaded.to(self.device).eval()
        self._eos_ids = _eos_ids(self.tokenizer, self.model.generation_config)
        pad = self.tokenizer.pad_token_id
        self._pad_id: int = pad if pad is not None else min(self._eos_ids, default=0)
        self._token_texts: dict[int, str] = {}
        self._verdict_ids: dict[tuple[str, ...], frozenset[int]] = {}
        # One generate at a time: concurrent calls (one thread per request) would only contend for the same
        # cores or GPU, and a fast tokenizer shared across threads can fail with "Already borrowed".
        self._lock = threading.Lock()

    def answer(self, queries: Sequence[GuardQuery]) -> list[GuardAnswer]:
        """Greedy text and P(positive verdict) for each query, in order."""
        with self._lock, self._torch.inference_mode():
            encoded = [prompt_token_ids(self.tokenizer, q) for q in queries]
            # Similar lengths share a batch, so little compute goes to padding; answers return in query order.
            order = sorted(range(len(queries)), key=lambda i: len(encoded[i]))
            answers: dict[int, GuardAnswer] = {}
            for start in range(0, len(order), self.max_batch_size):
                chunk = order[start : start + self.max_batch_size]
                results = self._answer_batch([queries[i] for i in chunk], [encoded[i] for i in chunk])
                answers.update(zip(chunk, results, strict=True))
        return [answers[i] for i in range(len(queries))]

    def _answer_batch(self, queries: Sequence[GuardQuery], encoded: Sequence[list[int]]) -> list[GuardAnswer]:
        torch = self._torch
        width = max(len(ids) for ids in encoded)
        input_ids = torch.full((len(encoded), width), self._pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            do_sample=False,
            num_beams=1,
            max_new_tokens=max(q.max_new_tokens for q in queries),
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=self._pad_id,
        )
        generated = out.sequences[:, width:].tolist()
        # Raw logits, not processed scores: a generation config's penalties must not bend the verdict probability.
        logprobs = [step.float().log_softmax(dim=-1) for step in out.logits]
        k = min(self.top_k, logprobs[0].shape[-1]) if logprobs else 0
        top = [step.topk(k, dim=-1).indices.tolist() for step in logprobs]
        return [self._read_row(query, row, generated[row], logprobs, top) for row, query in enumerate(queries)]

    def _read_row(
        self, query: GuardQuery, row: int, generated: Sequence[int], logprobs: Sequence[Any], top: Sequence[Any]
    ) -> GuardAnswer:
        """The answer in row ``row`` of a batch: its tokens up to the first end-of-sequence token or its own
        ``max_new_tokens`` (the batch ran to the largest), with each step's candidates.

        ``truncated`` when the row wrote ``max_new_tokens`` tokens and no end-of-sequence token among them: it hit
        the limit, as vLLM's and the OpenAI API's ``finish_reason == "length"`` say.
        """
        tokens: list[int] = []
        steps: list[Step] = []
        extra = self._verdict_token_ids(query.verdicts)
        for t in range(min(query.max_new_tokens, len(generated))):
            token = generated[t]
            if token in self._eos_ids:
                break
            ids = sorted(set(top[t][row]) | extra | {token})
            values = logprobs[t][row, ids].tolist()
            steps.append((self._text(token), self._candidates(ids, values)))
            tokens.append(token)
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        p, shares = read_verdict(steps, query)
        truncated = len(tokens) == query.max_new_tokens
        return GuardAnswer(text=text, p_positive=p, shares=shares, truncated=truncated)

    def _candidates(self, ids: Sequence[int], values: Sequence[float]) -> dict[str, float]:
        candidates: dict[str, float] = {}
        for token, logprob in zip(ids, values, strict=True):
            text = self._text(token)
            # Two ids can decode to the same text; the likelier one stands for it, as in an API's top-k list.
            if text not in candidates or logprob > candidates[text]:
                candidates[text] = logprob
        return candidates

    def _text(self, token: int) -> str:
        text = self._token_texts.get(token)
        if text is None:
            text = self.tokenizer.decode([token], skip_special_tokens=True)
            self._token_texts[token] = text
        return text

    def _verdict_token_ids(self, words: tuple[str, ...]) -> frozenset[int]:
        """First sub-token of each verdict word, spelled at a word start and mid-line."""
        key = words
        if key not in self._verdict_ids:
            ids = set()
            for word in words:
                for spelling in (word, " " + word):
                    pieces = self.tokenizer.encode(spelling, add_special_tokens=False)
                    if pieces:
                        ids.add(pieces[0])
            self._verdict_ids[key] = frozenset(ids)
        return self._verdict_ids[key]


def _eos_ids(tokenizer: Any, generation_config: Any) -> frozenset[int]:
    """Every id that ends generation: Llama 3 checkpoints list several (``<|eot_id|>``, ``<|end_of_text|>``)."""
    ids: set[int] = set()
    for source in (generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(source)
    return frozenset(ids)
