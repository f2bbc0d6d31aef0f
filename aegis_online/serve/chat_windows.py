"""Where a streaming answer is checked: windows of its text that end on a word boundary, with overlap.

A streamed answer arrives in token deltas. Checking every delta costs a check per token and sees fragments; checking
only the whole answer lets the harm reach the reader first. So the text is checked in windows that end at the first
sentence end once they hold a quarter of ``window_chars`` new characters (a sentence is checked on its own, not
diluted by the start of the next, and as soon as it is complete), else at the last whitespace once they hold
``window_chars``; never inside a word: re-chunking that splits words ("ass isting") makes false violations (NeMo
Guardrails' users report them).
Each window is checked together with the last ``overlap_chars`` of the text before it (from a word start), so a
harmful phrase cut by a window boundary is still seen whole. A single "word" longer than ``4 x window_chars``
(no whitespace at all) is cut anyway: the stream cannot wait for ever.

Pure Python, no I/O: ``chat_proxy`` feeds it deltas and checks what it returns.

>>> windows = AnswerWindows(window_chars=20, overlap_chars=8)
>>> windows.feed("The quick brown")
[]
>>> [(w.text, w.start, w.end) for w in windows.feed(" fox jum")]  # 20 new characters: cut at the last space
[('The quick brown fox', 0, 19)]
>>> [w.text for w in windows.feed("ps over the lazy dog. And then")]  # at the sentence end, with 8 of overlap
['fox jumps over the lazy dog.']
>>> [(w.text, w.start, w.end) for w in windows.finish()]
[('dog. And then', 44, 53)]
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

#: A sentence ends at ., !, ? (or their full-width forms) followed by whitespace.
_SENTENCE_END = re.compile(r"[.!?\u3002\uff01\uff1f](?=\s)")
#: How much longer than a window a run without whitespace may grow before it is cut inside.
LONGEST_WORD_WINDOWS = 4
#: A window ends at the first sentence end once it holds this share of ``window_chars``: a sentence is checked on its
#: own rather than with the start of the next one (which dilutes it: in ``bench/proxy.py`` a harmful sentence the
#: experts block alone was let through beside a benign one), and windows stay at least this long, so a stream costs
#: at most ``1 / SHORTEST_SENTENCE_WINDOW`` times the checks of full windows.
SHORTEST_SENTENCE_WINDOW = 0.25


@dataclass(frozen=True)
class Window:
    """A piece to check: ``text`` is the overlap with what came before plus the new text ``answer[start:end]``."""

    text: str
    start: int
    end: int


@dataclass
class AnswerWindows:
    """Cuts a growing answer into windows to check (see the module docstring)."""

    window_chars: int = 400
    overlap_chars: int = 100
    answer: str = ""
    checked_to: int = field(default=0)

    def __post_init__(self) -> None:
        if self.window_chars < 1 or self.overlap_chars < 0:
            raise ValueError("window_chars must be >= 1 and overlap_chars >= 0")

    def feed(self, delta: str) -> list[Window]:
        """Add a delta of the answer; the windows now complete (often none)."""
        self.answer += delta
        windows = []
        while (cut := self._cut()) is not None:
            windows.append(self._window(cut))
        return windows

    def finish(self) -> list[Window]:
        """The answer is complete: what is left unchecked, as one window (none when nothing is)."""
        if not self.answer[self.checked_to :].strip():
            self.checked_to = len(self.answer)
            return []
        return [self._window(len(self.answer))]

    def _cut(self) -> int | None:
        """Where the next window ends, if enough new text has come: after the first sentence end past the shortest
        window, else (at ``window_chars``) at the last whitespace, of the pending text; None to wait for more."""
        pending = self.answer[self.checked_to :]
        shortest = self.window_chars * SHORTEST_SENTENCE_WINDOW
        sentence = next((m.end() for m in _SENTENCE_END.finditer(pending) if m.end() >= shortest), None)
        if sentence is not None:
            return self.checked_to + sentence
        if len(pending) < self.window_chars:
            return None
        space = max(pending.rfind(" "), pending.rfind("\n"), pending.rfind("\t"))
        if space > 0:
            return self.checked_to + space
        if len(pending) >= LONGEST_WORD_WINDOWS * self.window_chars:
            return len(self.answer)
        return None

    def _window(self, end: int) -> Window:
        start = self.checked_to
        context = max(start - self.overlap_chars, 0)
        if context > 0:  # begin the overlap at a word start, never inside a word
            space = self.answer.find(" ", context, start)
            context = space + 1 if space != -1 else start
        self.checked_to = end
        return Window(text=self.answer[context:end].strip(), start=start, end=end)
