"""The data options ``replay`` and ``eval`` share: which files, in which format, read through which column map.

One parser for both commands, so a file reads the same way whether it is replayed or evaluated. Global options
(``--format``, ``--text-column``, ``--label COLUMN=CATEGORY``, ``--overall-column``, ``--missing-as-safe``,
``--limit``) apply to every ``--data`` file; a file can carry its own column map after ``::``, because two chained
files rarely name their columns alike (typer cannot tie a repeated option to the ``--data`` it follows)::

    --data a.jsonl::text=prompt,label=violent:S1,label=hate:S8,overall=verdict
    --data b.csv::text=comment,overall=is_toxic,format=csv

Keys: ``text``, ``overall``, ``label`` (``COLUMN:CATEGORY``, repeatable), ``format``. A file's own ``text`` /
``overall`` / ``format`` replace the global ones; its own ``label`` entries replace all the global ``--label``\\ s.
Errors are ``ValueError``\\ s that name the option, for the CLI to print.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis_online.simulate.traffic import DataSpec

#: Separates a data file's path from its own column map.
MAP_SEPARATOR = "::"
#: Formats read through a column map (the others have fixed columns).
GENERIC_FORMATS = ("jsonl", "csv")
#: Other names of the formats that matter here (``datasets.load`` accepts them too).
FORMAT_ALIASES = {"openai": "openai_moderation"}
#: Formats whose reader takes ``missing_as_safe``.
MISSING_AS_SAFE_FORMATS = ("openai_moderation", *GENERIC_FORMATS)


@dataclass
class ColumnMap:
    """How a generic file's columns become a text and labels; None / empty: not given (use the global one)."""

    text: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    overall: str | None = None
    format: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.text or self.labels or self.overall)


def _category(column: str, target: str, option: str) -> str:
    """The canonical id of ``target`` (an id, a slug, or a ``custom:`` name), checked before any file is read."""
    from aegis_online.taxonomy import CANONICAL_IDS, CUSTOM_PREFIX, category

    if target.startswith(CUSTOM_PREFIX):
        return target
    try:
        return category(target).id
    except KeyError:
        raise ValueError(
            f"{option}: {column}={target}: unknown category {target!r}; use a canonical id "
            f"({CANONICAL_IDS[0]}..{CANONICAL_IDS[-1]}), a slug, or custom:NAME"
        ) from None


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """``--label COLUMN=CATEGORY`` items as ``{column: category id}``.

    >>> parse_labels(["violence=S1", "hate=S8"])
    {'violence': 'S1', 'hate': 'S8'}
    """
    out: dict[str, str] = {}
    for item in items:
        column, sep, target = item.partition("=")
        if not sep or not column.strip() or not target.strip():
            raise ValueError(f"--label: takes COLUMN=CATEGORY (e.g. --label violence=S1), got {item!r}")
        out[column.strip()] = _category(column.strip(), target.strip(), "--label")
    return out


def parse_data_argument(text: str) -> tuple[Path, ColumnMap]:
    """A ``--data`` value: the path and the column map after ``::`` (empty when none).

    >>> path, cols = parse_data_argument("a.jsonl::text=prompt,label=v:S1,label=h:S8,overall=unsafe")
    >>> path.name, cols.text, cols.labels, cols.overall
    ('a.jsonl', 'prompt', {'v': 'S1', 'h': 'S8'}, 'unsafe')
    """
    raw, sep, spec = text.partition(MAP_SEPARATOR)
    path = Path(raw)
    columns = ColumnMap()
    if not sep:
        return path, columns
    option = f"--data {text}"
    for part in (p.strip() for p in spec.split(",")):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not value:
            raise ValueError(
                f"{option}: {part!r} is not KEY=VALUE; keys: text, overall, label (COLUMN:CATEGORY), format"
            )
        if key == "text":
            columns.text = value
        elif key == "overall":
            columns.overall = value
        elif key == "format":
            columns.format = value
        elif key == "label":
            column, colon, target = value.rpartition(":")
            if not colon or not column or not target:
                raise ValueError(f"{option}: label takes COLUMN:CATEGORY (e.g. label=violence:S1), got {value!r}")
            columns.labels[column] = _category(column, target, option)
        else:
            raise ValueError(f"{option}: unknown key {key!r}; keys: text, overall, label (COLUMN:CATEGORY), format")
    return path, columns


def data_specs(
    data: Sequence[str | Path],
    *,
    data_format: str | None = None,
    limit: int | None = None,
    text_column: str | None = None,
    label: Sequence[str] | None = None,
    overall_column: str | None = None,
    missing_as_safe: bool = False,
    held_out_rows: bool = False,
) -> list[DataSpec]:
    """One ``DataSpec`` per ``--data`` value, with the reader options its format takes (``held_out_rows``: only the
    rows of each file that ``datasets.held_out`` keeps out of the shipped heads' training).

    A generic jsonl/csv file gets the column map (its own, else the global options; the text column defaults to
    ``text``); ``missing_as_safe`` goes to the readers that take it (OpenAI moderation, generic files) and is moot
    for the sets whose every row carries a verdict.
    """
    from aegis_online.datasets import detect_format

    shared = ColumnMap(text_column, parse_labels(label or []), overall_column)
    specs = []
    for item in data:
        path, own = parse_data_argument(str(item))
        if not path.exists():
            raise ValueError(f"--data: {path}: no such file")
        if not path.is_file():
            raise ValueError(f"--data: {path}: not a file")
        columns = ColumnMap(
            text=own.text or shared.text,
            labels=own.labels or shared.labels,
            overall=own.overall or shared.overall,
        )
        chosen = own.format or data_format
        fmt = (chosen or detect_format(path, generic=columns.given) or "").lower()
        fmt = FORMAT_ALIASES.get(fmt, fmt)
        options: dict[str, Any] = {}
        if fmt in GENERIC_FORMATS and columns.given:
            options = {"text_column": columns.text or "text", "label_columns": dict(columns.labels)}
            if columns.overall:
                options["overall_column"] = columns.overall
        elif own.given:
            raise ValueError(
                f"--data {item}: a column map applies to generic jsonl/csv files; this file reads as {fmt or 'unknown'}"
                " (add format=jsonl or format=csv)"
            )
        if missing_as_safe and fmt in MISSING_AS_SAFE_FORMATS:
            options["missing_as_safe"] = True
        specs.append(DataSpec(path=path, format=chosen, options=options, limit=limit, held_out_only=held_out_rows))
    return specs
