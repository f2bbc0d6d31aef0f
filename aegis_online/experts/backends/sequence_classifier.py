"""A Hugging Face sequence classifier as an expert: Llama Prompt Guard 2 (22M, 86M) and classifiers like it.

Prompt Guard 2 reads one text and says benign or malicious (a jailbreak or a prompt injection); it is small enough
for a CPU. It scores the checked turn, whatever its role, and every tool message since the user's last message:
indirect injections arrive in the documents, pages and API answers an agent reads, which a tool turn carries (each
arrives after some user message, so each is scored with the turn it came in: the response check after it sees it).
Texts longer than the model's window (512 tokens) are cut into windows that are scored in one batch, and the
request gets the maximum over its texts and windows, as Meta's ``prompt_guard`` helper does: an attack anywhere is
an attack.

Labels map to canonical ids through an ``ExternalTaxonomy`` (default ``taxonomy.PROMPT_GUARD``: ``MALICIOUS`` is S24);
labels outside the map (``BENIGN``) are the rest of the probability mass. Checkpoints whose config names its classes
``LABEL_0``, ``LABEL_1`` are read through ``labels``, the class names in index order. torch and transformers are
imported in the constructor, so this module imports without the ``llm`` extra.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from aegis_online.experts.backends.model_thread import ModelThread
from aegis_online.experts.base import Expert, ExpertInput
from aegis_online.schemas import ExpertOutput
from aegis_online.taxonomy import PROMPT_GUARD, ExternalTaxonomy

__all__ = ["SequenceClassifierExpert"]

_INSTALL_HINT = "the sequence-classifier backend needs torch and transformers: pip install 'aegis-online[llm]'"


def attack_surface(item: ExpertInput) -> list[str]:
    """The texts an attack can come in with this turn: the checked turn, then the tool messages since the user's
    last message (what an agent read on its way to this turn)."""
    last_user = max((i for i, m in enumerate(item.messages) if m.role == "user"), default=-1)
    return [item.checked_text, *(m.content for m in item.messages[last_user + 1 :] if m.role == "tool")]


class SequenceClassifierExpert(Expert):
    """``AutoModelForSequenceClassification`` from a local path or a hub id, scoring the checked turn.

    Parameters
    ----------
    model
        Directory written by ``save_pretrained`` or a hub id (resolved from the local cache when offline).
    labels
        Class names in index order, replacing the checkpoint's ``id2label`` (default: the checkpoint's).
    label_map
        The classes' canonical meaning (default ``taxonomy.PROMPT_GUARD``).
    max_length, stride
        Tokens per window, and how many a window shares with the previous one.
    device, max_batch_size
        torch device; windows per forward pass.
    """

    def __init__(
        self,
        model: str,
        name: str = "sequence-classifier",
        labels: Sequence[str] | None = None,
        label_map: ExternalTaxonomy = PROMPT_GUARD,
        max_length: int = 512,
        stride: int = 64,
        device: str = "cpu",
        max_batch_size: int = 16,
    ) -> None:
        if not 0 <= stride < max_length or max_batch_size < 1:
            raise ValueError("need 0 <= stride < max_length and max_batch_size >= 1")
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as exc:
            raise ImportError(_INSTALL_HINT) from exc
        self._torch = torch
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.device = torch.device(device)
        self.model = AutoModelForSequenceClassification.from_pretrained(model).to(self.device).eval()
        names = list(labels) if labels is not None else [self.model.config.id2label[i] for i in range(self.n_classes)]
        if len(names) != self.n_classes:
            raise ValueError(f"labels: {len(names)} names for a model with {self.n_classes} classes")
        unknown = sorted(set(label_map.labels) - set(names))
        if unknown:
            raise ValueError(f"label_map: labels {unknown} are not classes of this model (classes: {names})")
        self.label_map = label_map
        self.class_names = names
        self.categories = frozenset().union(*label_map.to_canonical.values())
        self.max_length, self.stride, self.max_batch_size = max_length, stride, max_batch_size
        self._lock = threading.Lock()
        self.thread = ModelThread(name)

    @property
    def n_classes(self) -> int:
        return int(self.model.config.num_labels)

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        started = time.perf_counter()
        texts = [attack_surface(item) for item in batch]
        # A blocking forward pass must not stall the event loop that serves other requests.
        per_text = await self.thread.run(self.class_probabilities, [t for item_texts in texts for t in item_texts])
        probabilities, start = [], 0
        for item_texts in texts:
            mine = per_text[start : start + len(item_texts)]
            probabilities.append([max(column) for column in zip(*mine, strict=True)])
            start += len(item_texts)
        latency_ms = (time.perf_counter() - started) * 1000.0
        outputs = []
        for item, per_class in zip(batch, probabilities, strict=True):
            mapped = self.label_map.scores_to_canonical(
                {name: p for name, p in zip(self.class_names, per_class, strict=True) if name in self.label_map.labels}
            )
            asked = {c.id for c in item.categories}
            scores = {cat_id: float(p) for cat_id, p in mapped.items() if cat_id in asked}
            outputs.append(ExpertOutput(expert=self.name, scores=scores, latency_ms=latency_ms))
        return outputs

    def class_probabilities(self, texts: Sequence[str]) -> list[list[float]]:
        """Per text, the class probabilities of its most malicious window (the maximum per class over windows).

        The tokenizer cuts each text into windows of ``max_length`` tokens, special tokens included, overlapping by
        ``stride`` (``return_overflowing_tokens``); windows are scored ``max_batch_size`` at a time."""
        torch = self._torch
        encoded = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            stride=self.stride,
            return_overflowing_tokens=True,
        )
        owners: list[int] = list(encoded["overflow_to_sample_mapping"])
        windows: list[list[int]] = list(encoded["input_ids"])
        best = [[0.0] * self.n_classes for _ in texts]
        pad = self.tokenizer.pad_token_id or 0
        with self._lock, torch.inference_mode():
            for start in range(0, len(windows), self.max_batch_size):
                chunk = windows[start : start + self.max_batch_size]
                width = max(len(w) for w in chunk)
                input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
                attention = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, window in enumerate(chunk):
                    input_ids[row, : len(window)] = torch.tensor(window, dtype=torch.long)
                    attention[row, : len(window)] = 1
                inputs = {"input_ids": input_ids.to(self.device), "attention_mask": attention.to(self.device)}
                logits = self.model(**inputs).logits
                for row, probs in enumerate(logits.float().softmax(dim=-1).tolist()):
                    owner = owners[start + row]
                    best[owner] = [max(a, b) for a, b in zip(best[owner], probs, strict=True)]
        return best
