"""How a trained head records the data files it was fitted on (its metadata's ``sources`` lines), and how an expert
reads them back (``Expert.trained_on``), so that ``eval`` can tell an in-sample figure from a held-out one.

>>> line = source_line("xstest", "shared:xstest/xstest_prompts.csv", 408, held_out_left_out=True)
>>> line
'xstest: shared:xstest/xstest_prompts.csv (408 rows; held-out rows left out)'
>>> trained_on({"sources": [line, "mine: train.csv (90 rows)", "not a source line"]})
{'shared:xstest/xstest_prompts.csv': False, 'train.csv': True}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_HELD_OUT_LEFT_OUT = "; held-out rows left out"
_SOURCE_LINE = re.compile(
    r"^(?P<name>.+?): (?P<path>.+) \((?P<rows>\d+) rows(?P<left_out>; held-out rows left out)?\)$"
)


def source_line(name: str, path: str, rows: int, *, held_out_left_out: bool) -> str:
    """One training file as the metadata records it: its name, its path (``datasets.data_file_id``), the rows
    trained on, and whether the rows ``datasets.held_out`` keeps for the demo were left out."""
    return f"{name}: {path} ({rows} rows{_HELD_OUT_LEFT_OUT if held_out_left_out else ''})"


def trained_on(metadata: Mapping[str, Any]) -> dict[str, bool]:
    """The data files (``datasets.data_file_id``) a head's metadata says it was fitted on, each with whether it saw
    that file's held-out rows too."""
    matches = (_SOURCE_LINE.match(str(line)) for line in metadata.get("sources") or ())
    return {m["path"]: m["left_out"] is None for m in matches if m}
