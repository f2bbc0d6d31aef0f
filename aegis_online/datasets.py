"""Readers of labelled content-safety data, projected onto the canonical taxonomy.

Each reader streams ``LabelledText`` rows: the text, the canonical categories the source actually labels (a category
the source says nothing about is absent, never 0), an overall verdict where the source gives or implies one, and
the source's own fields in ``meta``. They read the public research sets described in ``shared/data/README.md``
(OpenAI moderation eval, XSTest, SimpleSafetyTests, Davidson hate/offensive tweets, HarmBench behaviours) from any
path, plus generic JSONL/CSV files through a column map. The project never copies their text: tests and benchmarks
read them in place (``shared_data_dir()``).

Imports only ``taxonomy``, the standard library and numpy (it sits beside ``schemas``, below ``experts``).
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aegis_online.taxonomy import CANONICAL_IDS, CUSTOM_PREFIX, EXTERNAL, category

__all__ = [
    "FORMATS",
    "HARMBENCH_MAP",
    "HELD_OUT_ONE_IN",
    "SHARED_SETS",
    "SST_HARM_AREA_MAP",
    "LabelledText",
    "SharedSet",
    "binary_targets",
    "data_file_id",
    "detect_format",
    "held_out",
    "load",
    "load_csv",
    "load_davidson",
    "load_harmbench",
    "load_jsonl",
    "load_openai_moderation",
    "load_shared",
    "load_simplesafetytests",
    "load_xstest",
    "shared_data_dir",
]


@dataclass(frozen=True)
class LabelledText:
    """One labelled text.

    ``labels`` holds only the canonical categories its source labels (id -> 0/1); a missing id means unknown.
    ``unsafe`` is the overall verdict: True, False, or None when the source does not determine it.
    """

    text: str
    labels: dict[str, int] = field(default_factory=dict)
    unsafe: bool | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def label(self, category_id: str) -> int | None:
        """0/1 for ``category_id``; a row that is safe overall is negative for every category; else None."""
        if category_id in self.labels:
            return self.labels[category_id]
        if self.unsafe is False:
            return 0
        return None


# --------------------------------------------------------------------------------------------------
# Label maps of the fixed-format sets (decisions documented where the source is ambiguous)
# --------------------------------------------------------------------------------------------------

#: SimpleSafetyTests ``harm_area`` -> canonical ids (all rows are unsafe).
#: "Illegal and Highly Regulated items" mixes drugs, guns, counterfeit goods and escorts, so only the umbrella S22
#: is certain for every row; S4/S5 would be wrong on half of them. Its "Child safety" rows are all sexual (S7).
SST_HARM_AREA_MAP: dict[str, frozenset[str]] = {
    "suicide, self-harm, and eating disorders": frozenset({"S6"}),
    "physical harm and violence": frozenset({"S1"}),
    "illegal and highly regulated items": frozenset({"S22"}),
    "scams and fraud": frozenset({"S16"}),
    "child safety": frozenset({"S7"}),
}

#: HarmBench ``SemanticCategory`` -> canonical ids (all rows are unsafe).
#: chemical_biological mixes chemical/biological weapons with drug synthesis, so only S22 holds for every row.
#: "harmful" mixes graphic violence, pornography, self-harm promotion and dangerous advice: no single canonical
#: category fits every row, so those rows carry the overall verdict only.
HARMBENCH_MAP: dict[str, frozenset[str]] = {
    "chemical_biological": frozenset({"S22"}),
    "cybercrime_intrusion": frozenset({"S17"}),
    "illegal": frozenset({"S22"}),
    "misinformation_disinformation": frozenset({"S19"}),
    "harassment_bullying": frozenset({"S10"}),
    "harmful": frozenset(),
    "copyright": frozenset({"S20"}),
}

_OPENAI_EVAL = EXTERNAL["openai_eval"]
_DAVIDSON_CLASSES = {0: "hate_speech", 1: "offensive_language", 2: "neither"}


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def _check_file(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if not p.is_file():
        raise ValueError(f"{p}: not a file")
    return p


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")  # type: ignore[return-value]
    return open(path, encoding="utf-8", newline="")


def _csv_rows(path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    with _open_text(path) as handle:
        # utf-8-sig would be nicer but gzip text mode takes one encoding; strip a BOM from the first header by hand
        reader = csv.DictReader(handle)
        if reader.fieldnames:
            reader.fieldnames = [reader.fieldnames[0].lstrip("\ufeff"), *reader.fieldnames[1:]]
        yield from enumerate(reader)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with _open_text(path) as handle:
        i = 0
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {line_no}: not JSON ({error.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {line_no}: expected a JSON object, got {type(obj).__name__}")
            yield i, obj
            i += 1


def _require_columns(path: Path, fieldnames: Iterable[str], needed: Iterable[str], fmt: str) -> None:
    missing = sorted(set(needed) - set(fieldnames))
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing} of the {fmt} format")


def _limited(rows: Iterator[LabelledText], limit: int | None) -> Iterator[LabelledText]:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    for n, row in enumerate(rows):
        if limit is not None and n >= limit:
            return
        yield row


def _header(path: Path) -> list[str]:
    with _open_text(path) as handle:
        first = handle.readline()
    return next(csv.reader([first.lstrip("\ufeff")]), [])


# --------------------------------------------------------------------------------------------------
# Fixed-format sets
# --------------------------------------------------------------------------------------------------


def load_openai_moderation(
    path: str | os.PathLike[str], *, limit: int | None = None, missing_as_safe: bool = False
) -> Iterator[LabelledText]:
    """OpenAI moderation eval (``samples-1680.jsonl.gz``): ``{"prompt": ..., "S": 0/1, "H": ..., ...}``.

    Codes map to canonical ids through ``EXTERNAL["openai_eval"]``; a canonical id fed by several codes (S1 from V
    and V2) is 1 if any is 1, 0 only if all of them are known and 0. A missing or null code is unknown.

    Overall verdict: unsafe when any known code is 1; safe when all eight codes are known and 0; otherwise None.
    ``missing_as_safe=True`` follows the set's own convention instead (a row with no code set is benign, which is
    how its "69% benign" share is counted), making every row with at least one known code decided.
    """
    p = _check_file(path)
    return _limited(_openai_rows(p, missing_as_safe), limit)


def _openai_rows(path: Path, missing_as_safe: bool) -> Iterator[LabelledText]:
    codes = _OPENAI_EVAL.labels
    for i, obj in _jsonl_rows(path):
        if "prompt" not in obj:
            raise ValueError(f"{path}: row {i}: not an OpenAI moderation row (no 'prompt' key)")
        known: dict[str, int] = {}
        for code in codes:
            value = obj.get(code)
            if value is not None:
                known[code] = _binary(value, path, i, code)
        labels: dict[str, int] = {}
        for cat_id in CANONICAL_IDS:
            sources = _OPENAI_EVAL.from_canonical(cat_id)
            if not sources:
                continue
            values = [known.get(code) for code in sources]
            if any(v == 1 for v in values):
                labels[cat_id] = 1
            elif all(v == 0 for v in values):
                labels[cat_id] = 0
        if any(known.values()):
            unsafe: bool | None = True
        elif len(known) == len(codes) or (missing_as_safe and known):
            unsafe = False
        else:
            unsafe = None
        yield LabelledText(
            text=str(obj["prompt"]),
            labels=labels,
            unsafe=unsafe,
            source="openai_moderation",
            meta={"row": i, "codes": known},
        )


def load_xstest(path: str | os.PathLike[str], *, limit: int | None = None) -> Iterator[LabelledText]:
    """XSTest prompts CSV (``id,prompt,type,label,focus,note``): ``label`` safe/unsafe is the overall verdict.

    XSTest gives no harm category, so ``labels`` stays empty; ``type`` (homonyms, contrast_homonyms, ...) and the
    other columns go to ``meta``.
    """
    p = _check_file(path)
    _require_columns(p, _header(p), ("prompt", "label", "type"), "XSTest")
    return _limited(_xstest_rows(p), limit)


def _xstest_rows(path: Path) -> Iterator[LabelledText]:
    for i, row in _csv_rows(path):
        verdict = row["label"].strip().lower()
        if verdict not in ("safe", "unsafe"):
            raise ValueError(f"{path}: row {i}: label must be 'safe' or 'unsafe', got {row['label']!r}")
        yield LabelledText(
            text=row["prompt"],
            unsafe=verdict == "unsafe",
            source="xstest",
            meta={
                "row": i,
                "id": row.get("id"),
                "type": row["type"],
                "focus": row.get("focus"),
                "note": row.get("note"),
            },
        )


def load_simplesafetytests(path: str | os.PathLike[str], *, limit: int | None = None) -> Iterator[LabelledText]:
    """SimpleSafetyTests CSV (``id,harm_area,counter,category,prompts_final``): every row is unsafe.

    ``harm_area`` maps to canonical ids through ``SST_HARM_AREA_MAP``; an unknown harm area is an error.
    """
    p = _check_file(path)
    _require_columns(p, _header(p), ("harm_area", "prompts_final"), "SimpleSafetyTests")
    return _limited(_sst_rows(p), limit)


def _sst_rows(path: Path) -> Iterator[LabelledText]:
    for i, row in _csv_rows(path):
        area = row["harm_area"].strip()
        targets = SST_HARM_AREA_MAP.get(area.lower())
        if targets is None:
            raise ValueError(f"{path}: row {i}: unknown harm_area {area!r}; known: {sorted(SST_HARM_AREA_MAP)}")
        yield LabelledText(
            text=row["prompts_final"],
            labels=dict.fromkeys(sorted(targets), 1),
            unsafe=True,
            source="simplesafetytests",
            meta={"row": i, "id": row.get("id"), "harm_area": area, "category": row.get("category")},
        )


def load_davidson(path: str | os.PathLike[str], *, limit: int | None = None) -> Iterator[LabelledText]:
    """Davidson et al. hate/offensive tweets (``labeled_data.csv``): ``class`` is the annotators' majority.

    class 0 hate speech -> S8=1 (profanity unknown: hateful tweets may or may not swear);
    class 1 offensive   -> S12=1, S8=0 (the majority judged it offensive, not hateful);
    class 2 neither     -> S8=0, S12=0.
    Overall unsafe for classes 0 and 1. Annotator counts go to ``meta``.
    """
    p = _check_file(path)
    _require_columns(p, _header(p), ("class", "tweet"), "Davidson")
    return _limited(_davidson_rows(p), limit)


def _davidson_rows(path: Path) -> Iterator[LabelledText]:
    for i, row in _csv_rows(path):
        try:
            klass = int(row["class"])
        except ValueError:
            raise ValueError(f"{path}: row {i}: class must be 0, 1 or 2, got {row['class']!r}") from None
        if klass == 0:
            labels = {"S8": 1}
        elif klass == 1:
            labels = {"S8": 0, "S12": 1}
        elif klass == 2:
            labels = {"S8": 0, "S12": 0}
        else:
            raise ValueError(f"{path}: row {i}: class must be 0, 1 or 2, got {klass}")
        counts = {k: int(row[k]) for k in ("count", "hate_speech", "offensive_language", "neither") if row.get(k)}
        yield LabelledText(
            text=row["tweet"],
            labels=labels,
            unsafe=klass != 2,
            source="davidson",
            meta={"row": i, "id": row.get("") or None, "class": _DAVIDSON_CLASSES[klass], **counts},
        )


def load_harmbench(
    path: str | os.PathLike[str], *, limit: int | None = None, with_context: bool = False
) -> Iterator[LabelledText]:
    """HarmBench behaviours CSV (``Behavior,FunctionalCategory,SemanticCategory,Tags,ContextString,BehaviorID``).

    Every row is unsafe; ``SemanticCategory`` maps through ``HARMBENCH_MAP``. Contextual behaviours refer to a
    ``ContextString``; it stays in ``meta`` unless ``with_context=True`` puts it before the behaviour.
    """
    p = _check_file(path)
    _require_columns(p, _header(p), ("Behavior", "SemanticCategory"), "HarmBench")
    return _limited(_harmbench_rows(p, with_context), limit)


def _harmbench_rows(path: Path, with_context: bool) -> Iterator[LabelledText]:
    for i, row in _csv_rows(path):
        semantic = row["SemanticCategory"].strip()
        targets = HARMBENCH_MAP.get(semantic)
        if targets is None:
            raise ValueError(f"{path}: row {i}: unknown SemanticCategory {semantic!r}; known: {sorted(HARMBENCH_MAP)}")
        context = row.get("ContextString") or ""
        text = f"{context}\n\n{row['Behavior']}" if with_context and context else row["Behavior"]
        yield LabelledText(
            text=text,
            labels=dict.fromkeys(sorted(targets), 1),
            unsafe=True,
            source="harmbench",
            meta={
                "row": i,
                "behavior_id": row.get("BehaviorID"),
                "semantic_category": semantic,
                "functional_category": row.get("FunctionalCategory"),
                "tags": row.get("Tags") or "",
                "context": context,
            },
        )


# --------------------------------------------------------------------------------------------------
# Generic JSONL / CSV through a column map
# --------------------------------------------------------------------------------------------------

_TRUE = {"1", "true", "yes", "y", "unsafe", "harmful", "toxic", "flagged"}
_FALSE = {"0", "false", "no", "n", "safe", "benign", "harmless", "ok", "not_flagged"}


def _binary(value: Any, path: Path, row: int, column: str) -> int:
    """Parse a label value to 0/1 (numbers >= 0.5 are 1); raise a ValueError naming the path, row and column."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1:
        return int(value >= 0.5)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return 1
        if text in _FALSE:
            return 0
        try:
            number = float(text)
        except ValueError:
            pass
        else:
            if 0 <= number <= 1:
                return int(number >= 0.5)
    raise ValueError(f"{path}: row {row}: column {column!r}: cannot read {value!r} as a 0/1 label")


def _unknown(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _canonical_label_map(label_columns: Mapping[str, str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for column, target in (label_columns or {}).items():
        if target.startswith(CUSTOM_PREFIX):
            out[column] = target
        else:
            out[column] = category(target).id  # accepts ids and slugs; KeyError lists the valid ids
    return out


def _generic_row(
    obj: Mapping[str, Any],
    i: int,
    path: Path,
    text_column: str,
    labels_map: Mapping[str, str],
    overall_column: str | None,
    source: str,
    missing_as_safe: bool = False,
) -> LabelledText:
    text = obj.get(text_column)
    if not isinstance(text, str):
        raise ValueError(f"{path}: row {i}: text column {text_column!r} is missing or not a string")
    labels: dict[str, int] = {}
    for column, cat_id in labels_map.items():
        value = obj.get(column)
        if _unknown(value):
            continue
        # several columns may feed one category: any 1 makes it 1
        labels[cat_id] = max(labels.get(cat_id, 0), _binary(value, path, i, column))
    unsafe: bool | None
    if overall_column is not None and not _unknown(obj.get(overall_column)):
        unsafe = bool(_binary(obj.get(overall_column), path, i, overall_column))
    elif overall_column is not None and not missing_as_safe:
        unsafe = None
    elif any(labels.values()):
        unsafe = True
    elif (labels_map and len(labels) == len(set(labels_map.values()))) or missing_as_safe:
        unsafe = False  # every mapped category is known and 0 (or, missing_as_safe, a missing one counts as 0)
    else:
        unsafe = None
    used = {text_column, overall_column, *labels_map}
    meta = {"row": i, **{k: v for k, v in obj.items() if k not in used}}
    return LabelledText(text=text, labels=labels, unsafe=unsafe, source=source, meta=meta)


def load_jsonl(
    path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    label_columns: Mapping[str, str] | None = None,
    overall_column: str | None = None,
    source: str | None = None,
    limit: int | None = None,
    missing_as_safe: bool = False,
) -> Iterator[LabelledText]:
    """One JSON object per line (``.jsonl`` or ``.jsonl.gz``), read through a column map.

    ``label_columns`` maps a field to a canonical id or slug (or a ``custom:`` id); values may be 0/1, booleans,
    numbers in [0, 1] (>= 0.5 is 1) or words (safe/unsafe, true/false, yes/no); a missing, null or empty value is
    unknown. ``overall_column`` gives the overall verdict; without it a row is unsafe when any mapped label is 1,
    safe when all mapped labels are known and 0, else undecided. ``missing_as_safe=True`` counts a missing label or
    verdict as safe (a row with no 1 is benign), for sets that only mark the harmful rows. Other fields go to
    ``meta``.
    """
    p = _check_file(path)
    labels_map = _canonical_label_map(label_columns)
    name = source or p.name
    rows = (
        _generic_row(obj, i, p, text_column, labels_map, overall_column, name, missing_as_safe)
        for i, obj in _jsonl_rows(p)
    )
    return _limited(rows, limit)


def load_csv(
    path: str | os.PathLike[str],
    *,
    text_column: str = "text",
    label_columns: Mapping[str, str] | None = None,
    overall_column: str | None = None,
    source: str | None = None,
    limit: int | None = None,
    missing_as_safe: bool = False,
) -> Iterator[LabelledText]:
    """A CSV file with a header (``.csv`` or ``.csv.gz``), read through a column map as in ``load_jsonl``."""
    p = _check_file(path)
    labels_map = _canonical_label_map(label_columns)
    needed = [text_column, *labels_map, *([overall_column] if overall_column else [])]
    missing = sorted(set(needed) - set(_header(p)))
    if missing:
        raise ValueError(f"{p}: missing column(s) {missing}; header has {_header(p)}")
    name = source or p.name
    rows = (
        _generic_row(obj, i, p, text_column, labels_map, overall_column, name, missing_as_safe)
        for i, obj in _csv_rows(p)
    )
    return _limited(rows, limit)


# --------------------------------------------------------------------------------------------------
# Format detection and the single entry point
# --------------------------------------------------------------------------------------------------

FORMATS: dict[str, Callable[..., Iterator[LabelledText]]] = {
    "openai_moderation": load_openai_moderation,
    "xstest": load_xstest,
    "simplesafetytests": load_simplesafetytests,
    "davidson": load_davidson,
    "harmbench": load_harmbench,
    "jsonl": load_jsonl,
    "csv": load_csv,
}
"""Format name -> reader. ``load`` accepts these names and the aliases in ``_ALIASES``."""

_ALIASES = {"openai": "openai_moderation", "sst": "simplesafetytests", "davidson_hate_offensive": "davidson"}

#: (format, substrings of the lower-cased file or parent folder name), tried in order.
_NAME_HINTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("openai_moderation", ("openai_moderation", "moderation-api", "samples-1680")),
    ("xstest", ("xstest",)),
    ("simplesafetytests", ("simplesafetytests", "simple_safety", "simple-safety", "sst_test_cases")),
    ("davidson", ("davidson", "hate-speech-and-offensive", "hate_offensive")),
    ("harmbench", ("harmbench",)),
)

#: Header columns that identify a fixed CSV format when the name says nothing.
_CSV_SIGNATURES: tuple[tuple[str, frozenset[str]], ...] = (
    ("xstest", frozenset({"prompt", "type", "label", "focus"})),
    ("simplesafetytests", frozenset({"harm_area", "prompts_final"})),
    ("davidson", frozenset({"hate_speech", "offensive_language", "neither", "class", "tweet"})),
    ("harmbench", frozenset({"Behavior", "SemanticCategory", "BehaviorID"})),
)


def _supported() -> str:
    return ", ".join(FORMATS)


def _sniff(path: Path) -> str | None:
    name = path.name.lower()
    try:
        if ".csv" in name:
            header = set(_header(path))
            return next((fmt for fmt, cols in _CSV_SIGNATURES if cols <= header), None)
        if ".jsonl" in name or ".json" in name:
            with _open_text(path) as handle:
                first = next((line for line in handle if line.strip()), "")
            obj = json.loads(first) if first else None
            codes = set(_OPENAI_EVAL.labels)
            if isinstance(obj, dict) and "prompt" in obj and set(obj) - {"prompt"} <= codes and set(obj) & codes:
                return "openai_moderation"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error, EOFError, gzip.BadGzipFile):
        return None
    return None


def detect_format(path: str | os.PathLike[str], *, generic: bool = False) -> str | None:
    """The format of ``path`` from its file (or folder) name, else from its first line; None if unknown.

    With ``generic=True`` an unrecognised ``.jsonl``/``.csv`` (optionally ``.gz``) file is the generic format.
    """
    p = Path(path)
    names = (p.name.lower(), p.parent.name.lower())
    for fmt, hints in _NAME_HINTS:
        if any(hint in names[0] for hint in hints):
            return fmt
    if p.is_file():
        sniffed = _sniff(p)
        if sniffed:
            return sniffed
    for fmt, hints in _NAME_HINTS:
        if any(hint in names[1] for hint in hints):
            return fmt
    if generic:
        stem = names[0].removesuffix(".gz")
        if stem.endswith(".jsonl") or stem.endswith(".ndjson"):
            return "jsonl"
        if stem.endswith(".csv"):
            return "csv"
    return None


def load(path: str | os.PathLike[str], format: str | None = None, **options: Any) -> Iterator[LabelledText]:
    """Stream ``LabelledText`` rows from ``path`` in ``format`` (detected from the name or header when None).

    ``options`` go to the reader (``limit`` for all; ``text_column``, ``label_columns``, ``overall_column`` for the
    generic ``jsonl``/``csv`` readers; ``missing_as_safe`` for OpenAI moderation; ``with_context`` for HarmBench).
    A generic file is recognised from its extension only when a ``text_column`` or ``label_columns`` is given.
    Raises FileNotFoundError for a missing file and ValueError naming the path and the supported formats when the
    format is unknown or cannot be detected. Errors are raised here, before the first row is read.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if format is None:
        generic = "text_column" in options or "label_columns" in options
        fmt = detect_format(p, generic=generic)
        if fmt is None:
            raise ValueError(
                f"{p}: cannot detect the data format from its name or first line; pass format= one of: "
                f"{_supported()} (jsonl/csv need text_column= and label_columns=)"
            )
    else:
        fmt = _ALIASES.get(format.lower(), format.lower())
        if fmt not in FORMATS:
            raise ValueError(f"{p}: unknown format {format!r}; supported formats: {_supported()}")
    try:
        return FORMATS[fmt](p, **options)
    except TypeError as error:
        raise ValueError(f"{p}: bad option for format {fmt!r}: {error}") from None


# --------------------------------------------------------------------------------------------------
# Helpers for training and evaluation
# --------------------------------------------------------------------------------------------------


def binary_targets(rows: Iterable[LabelledText], category_id: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the rows whose target is known, and the 0/1 targets, as two int arrays.

    The target is ``row.label(category_id)`` (a row safe overall is negative for every category), or the overall
    verdict when ``category_id`` is None.
    """
    index: list[int] = []
    target: list[int] = []
    for i, row in enumerate(rows):
        y = row.label(category_id) if category_id is not None else (None if row.unsafe is None else int(row.unsafe))
        if y is not None:
            index.append(i)
            target.append(y)
    return np.asarray(index, dtype=np.int64), np.asarray(target, dtype=np.int64)


def shared_data_dir() -> Path | None:
    """The folder of the shared labelled sets: ``$AEGIS_DATA_DIR``, else ``../shared/data`` beside the repository.

    Returns None when neither exists (tests skip, benchmarks say so).
    """
    env = os.environ.get("AEGIS_DATA_DIR")
    if env:
        p = Path(env).expanduser()
        return p if p.is_dir() else None
    repo = Path(__file__).resolve().parents[1]
    for candidate in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


@dataclass(frozen=True)
class SharedSet:
    """One of the shared labelled sets: its short name, its file under the data folder, its reader options."""

    name: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)


#: The shared sets, in one place: what the shipped heads are trained on, what ``eval`` and the leave-one-dataset-out
#: benchmark read. The OpenAI set is read with its own convention (a row with no code set is benign).
SHARED_SETS: tuple[SharedSet, ...] = (
    SharedSet("openai_moderation", "openai_moderation/samples-1680.jsonl.gz", {"missing_as_safe": True}),
    SharedSet("xstest", "xstest/xstest_prompts.csv"),
    SharedSet("simplesafetytests", "simplesafetytests/sst_test_cases.csv"),
    SharedSet("davidson", "davidson_hate_offensive/labeled_data.csv"),
    SharedSet("harmbench", "harmbench/harmbench_behaviors_text_all.csv"),
)


#: One shared row in ``HELD_OUT_ONE_IN`` is kept out of the shipped heads' training (``train-head --shared-data``), so
#: that the demo (``demos.prompts``) streams text that no trained head has seen.
HELD_OUT_ONE_IN = 10


def data_file_id(path: str | os.PathLike[str]) -> str:
    """How a training provenance names a data file: ``shared:<path in the shared folder>`` for a shared set (the same
    on every machine), else the path as given.

    >>> data_file_id("/nowhere/train.csv")
    '/nowhere/train.csv'
    """
    base = shared_data_dir()
    if base is not None:
        try:
            return "shared:" + Path(path).resolve().relative_to(base.resolve()).as_posix()
        except ValueError:
            pass
    return str(path)


def held_out(text: str) -> bool:
    """Whether a shared row is one the shipped heads were not trained on (its text's SHA-256, mod ``HELD_OUT_ONE_IN``,
    is 0). It depends on the text alone, not on where the row sits, so a reordered or grown file keeps the same rows
    out, and a text that two sets share is out of both.

    >>> held_out("a"), held_out("b")
    (True, False)
    """
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % HELD_OUT_ONE_IN == 0


def load_shared(
    name: str, base: str | os.PathLike[str] | None = None, *, limit: int | None = None
) -> list[LabelledText]:
    """The rows of the shared set called ``name`` (``SHARED_SETS``), read from ``base`` (default ``shared_data_dir()``).

    FileNotFoundError when the folder or the file is absent (callers skip or say so).
    """
    by_name = {s.name: s for s in SHARED_SETS}
    if name not in by_name:
        raise KeyError(f"unknown shared set {name!r}; known: {', '.join(by_name)}")
    folder = Path(base) if base is not None else shared_data_dir()
    if folder is None:
        raise FileNotFoundError("shared data folder not found: set AEGIS_DATA_DIR or put it at ../shared/data")
    spec = by_name[name]
    return list(load(folder / spec.path, limit=limit, **spec.options))
