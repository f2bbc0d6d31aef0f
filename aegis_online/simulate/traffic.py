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

from aegis_online.datasets import LabelledText, data_file_id, held_out, load
from aegis_online.experts import Expert
from aegis_online.simulate.stream import Segment


@dataclass(frozen=True)
class DataSpec:
    """One data file of a replay: its format (None: detected), reader options, how many rows, a display name, and
    whether only its held-out rows are read (``datasets.held_out``: those the shipped heads were not trained on)."""

    path: Path
    format: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    limit: int | None = None
    name: str | None = None
    held_out_only: bool = False

    def label(self) -> str:
        """The name given, else the file's (``dataset_name``): what reports call this data set."""
        return self.name or dataset_name(self.path)


def fitted_on(experts: Sequence[Expert], spec: DataSpec) -> list[str]:
    """The experts fitted on the rows ``spec`` reads (``Expert.trained_on`` names the file; with ``held_out_only``,
    only those that saw its held-out rows too): on these rows their figures are in-sample."""
    file = data_file_id(spec.path)
    return [e.name for e in experts if file in e.trained_on and (e.trained_on[file] or not spec.held_out_only)]


#: Suffixes a data file's name carries that say how it is stored, not what it holds.
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zip", ".zst")
FORMAT_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")


def dataset_name(path: Path) -> str:
    """A data set's name: its file name without compression and format suffixes, so chained files and the ``eval``
    report read ``samples-1680`` and ``xstest_prompts`` (not the format, which two different files share).

    >>> dataset_name(Path("data/samples-1680.jsonl.gz")), dataset_name(Path("xstest_prompts.csv"))
    ('samples-1680', 'xstest_prompts')
    """
    name = path.name
    for suffixes in (COMPRESSION_SUFFIXES, FORMAT_SUFFIXES):
        for suffix in suffixes:
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                name = name[: -len(suffix)]
                break
    return name


@dataclass
class ReplayTraffic:
    """Rows in replay order and the segment (data set) each span of rows came from."""

    rows: list[LabelledText]
    segments: tuple[Segment, ...]
    #: the file each segment came from (files without rows have no segment)
    sources: tuple[DataSpec, ...] = ()

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
        if spec.held_out_only:
            part = [r for r in part if held_out(r.text)]
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
    kept = [(seg, spec) for seg, spec in zip(segments, specs, strict=True) if seg.end > seg.start]
    return ReplayTraffic(rows=rows, segments=tuple(s for s, _ in kept), sources=tuple(spec for _, spec in kept))
