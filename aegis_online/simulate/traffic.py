"""Real labelled traffic for replay: data files read through ``datasets``, shuffled, sampled and chained.

Chaining several sets (``--data A --data B``) makes a real distribution shift: the replay sees all of A, then all
of B, and each becomes a named segment of the stream, so metrics can be read per data set (false positives on
XSTest's safe prompts, recall on SimpleSafetyTests, ...). Rows are shuffled within each file by default (files are
often sorted by label or type, which no live traffic is).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aegis_online.datasets import LabelledText, detect_format, load
from aegis_online.simulate.stream import Segment


@dataclass(frozen=True)
class DataSpec:
    """One data file of a replay: its format (None: detected), reader options, how many rows, a display name."""

    path: Path
    format: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    limit: int | None = None
    name: str | None = None

    def label(self) -> str:
        return self.name or self.format or detect_format(self.path, generic=bool(self.options)) or self.path.stem


@dataclass
class ReplayTraffic:
    """Rows in replay order and the segment (data set) each span of rows came from."""

    rows: list[LabelledText]
    segments: tuple[Segment, ...]

    def labelled_categories(self) -> list[str]:
        """Canonical categories some row labels, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update(dict.fromkeys(row.labels))
        return list(seen)


def chain(specs: Sequence[DataSpec], *, shuffle: bool = True, seed: int = 0) -> ReplayTraffic:
    """Read each file (shuffled with its own seed, then cut to ``limit`` rows) and concatenate them in order.

    Raises FileNotFoundError or ValueError (from ``datasets.load``) naming the file.
    """
    rows: list[LabelledText] = []
    segments: list[Segment] = []
    names: dict[str, int] = {}
    for i, spec in enumerate(specs):
        part = list(load(spec.path, spec.format, **dict(spec.options)))
        if shuffle:
            order = np.random.default_rng([seed, i]).permutation(len(part))
            part = [part[k] for k in order]
        if spec.limit is not None:
            part = part[: spec.limit]
        name = spec.label()
        names[name] = names.get(name, 0) + 1
        if names[name] > 1:
            name = f"{name} ({names[name]})"
        segments.append(Segment(name, len(rows), len(rows) + len(part)))
        rows.extend(part)
    return ReplayTraffic(rows=rows, segments=tuple(s for s in segments if s.end > s.start))
