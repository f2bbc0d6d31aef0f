"""Test doubles for replay tests: deterministic keyword experts and small labelled files written on the fly.

The texts are made up here (no dataset text): a few harmless sentences with marker words that the keyword experts
look for, labelled per category in generic JSONL.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from aegis_online.experts import Expert, ExpertInput
from aegis_online.schemas import ExpertOutput


class KeywordExpert(Expert):
    """Says ``hit`` for a category when one of its marker words is in the text, else ``miss``; counts texts scored."""

    def __init__(self, name: str, words: Mapping[str, Sequence[str]], hit: float = 0.9, miss: float = 0.1) -> None:
        self.name = name
        self.words = {c: tuple(w) for c, w in words.items()}
        self.categories = frozenset(words)
        self.hit, self.miss = hit, miss
        self.calls = 0

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        self.calls += len(batch)
        outputs = []
        for item in batch:
            text = item.checked_text
            scores = {
                c.id: self.hit if any(w in text for w in self.words[c.id]) else self.miss
                for c in item.categories
                if c.id in self.words
            }
            outputs.append(ExpertOutput(expert=self.name, scores=scores))
        return outputs


def experts() -> list[KeywordExpert]:
    """Two experts: ``red`` knows the marker ``zap`` (S1), ``blue`` knows ``zork`` (S1) and ``grr`` (S8)."""
    return [
        KeywordExpert("red", {"S1": ["zap"], "S8": ["grr", "meh"]}),
        KeywordExpert("blue", {"S1": ["zork"], "S8": ["grr"]}),
    ]


def write_rows(path: Path, rows: Sequence[tuple[str, int | None, int | None]]) -> Path:
    """A generic JSONL file with ``text``, ``violence`` (S1) and ``hate`` (S8) columns (None: unknown)."""
    with path.open("w") as handle:
        for text, violence, hate in rows:
            handle.write(json.dumps({"text": text, "violence": violence, "hate": hate}) + "\n")
    return path


def shifted_files(folder: Path, n: int = 60) -> tuple[Path, Path]:
    """Two files: in the first, S1 violence is marked ``zap`` (red is right); in the second ``zork`` (blue is)."""
    first = [(f"message {i} zap" if i % 3 == 0 else f"message {i} calm", int(i % 3 == 0), 0) for i in range(n)]
    second = [
        (f"note {i} zork grr" if i % 4 == 0 else f"note {i} meh", int(i % 4 == 0), int(i % 4 == 0)) for i in range(n)
    ]
    return write_rows(folder / "first.jsonl", first), write_rows(folder / "second.jsonl", second)


COLUMNS = {"text_column": "text", "label_columns": {"violence": "S1", "hate": "S8"}}
