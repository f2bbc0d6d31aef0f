"""How an ``eval`` document reads: rich tables for the console, Markdown for ``eval.md``, and the files.

Kept apart from ``evaluation`` so the metrics stay importable without rich, and one layout serves both renderings:
per data set, predictor x whole-request AUROC / AUPRC / F1 / precision / recall / FPR, then the per-category AUROC
in a compact column (console) or table (Markdown), then the experts' error correlation.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.table import Table

from aegis_online.simulate.report import fmt, jsonable

#: The whole-request columns, in order: (JSON key, header).
OVERALL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("auroc", "AUROC"),
    ("auprc", "AUPRC"),
    ("f1", "F1"),
    ("precision", "P"),
    ("recall", "R"),
    ("fpr", "FPR"),
)


def _title(name: str, entry: Mapping[str, Any]) -> str:
    return (
        f"{name}: {entry['rows']:,} rows ({entry['unsafe_rows']:,} unsafe, {entry['safe_rows']:,} safe); "
        f"categories labelled: {', '.join(entry['categories']) or 'none'}"
    )


def _predictor(name: str, entry: Mapping[str, Any]) -> str:
    """The predictor's name, starred when its figures on this data set are in-sample."""
    return f"{name} *" if name in entry.get("in_sample", ()) else name


def _in_sample_note(entry: Mapping[str, Any]) -> str:
    return (
        "* fitted on these rows: in-sample figures (--held-out-rows reads only the rows the shipped heads left out)"
        if entry.get("in_sample")
        else ""
    )


def _category_auroc(predictor: Mapping[str, Any]) -> str:
    cells = [f"{cat} {fmt(m['auroc'], 2)}" for cat, m in predictor["categories"].items()]
    return " ".join(cells) or "-"


def console_tables(report: Mapping[str, Any]) -> list[Table]:
    """One rich table per data set (and one per data set's error correlation when it has several experts)."""
    tables = []
    for name, entry in report["datasets"].items():
        caption = "whole request at the policy threshold; AUROC per category"
        note = _in_sample_note(entry)
        table = Table(title=_title(name, entry), caption=f"{caption}\n{note}" if note else caption)
        table.add_column("predictor")
        for _, header in OVERALL_COLUMNS:
            table.add_column(header, justify="right")
        table.add_column("AUROC by category")
        for predictor in entry["predictors"]:
            m = entry[predictor]
            cells = (fmt(m["overall"][key], 3) for key, _ in OVERALL_COLUMNS)
            table.add_row(_predictor(predictor, entry), *cells, _category_auroc(m))
        tables.append(table)
        experts = list(entry["error_correlation"])
        if len(experts) > 1:
            corr = Table(title=f"{name}: correlation of the experts' whole-request errors")
            corr.add_column("")
            for expert in experts:
                corr.add_column(expert, justify="right")
            for a in experts:
                corr.add_row(a, *(fmt(entry["error_correlation"][a][b], 2) for b in experts))
            tables.append(corr)
    return tables


def markdown(report: Mapping[str, Any]) -> str:
    """``eval.md``: the same tables in Markdown, with every labelled category's AUROC / AUPRC / F1."""
    policy = report["policy"]
    lines = [
        "# eval",
        "",
        f"Experts: {', '.join(report['experts'])}; ensemble learner `{report['learner']}`"
        + (f"; weights snapshot `{report['weights']}`" if report.get("weights") else "")
        + f". Policy of tenant `{policy['tenant']}`: whole-request threshold {fmt(policy['overall_threshold'], 3)}.",
        "",
    ]
    for name, entry in report["datasets"].items():
        lines += [f"## {name}", "", _title(name, entry) + ".", ""]
        lines += ["| predictor | " + " | ".join(h for _, h in OVERALL_COLUMNS) + " |"]
        lines += ["|---|" + "---:|" * len(OVERALL_COLUMNS)]
        for predictor in entry["predictors"]:
            m = entry[predictor]["overall"]
            cells = " | ".join(fmt(m[k], 3) for k, _ in OVERALL_COLUMNS)
            lines.append(f"| {_predictor(predictor, entry)} | {cells} |")
        note = _in_sample_note(entry)
        lines += [note, ""] if note else [""]
        categories = entry["categories"]
        if categories:
            lines += ["AUROC / AUPRC / F1 per category (`-`: not covered or undefined):", ""]
            lines += ["| predictor | " + " | ".join(categories) + " |", "|---|" + "---:|" * len(categories)]
            for predictor in entry["predictors"]:
                cats = entry[predictor]["categories"]
                cells = [
                    " / ".join(fmt(cats[c][k], 3) for k in ("auroc", "auprc", "f1")) if c in cats else "-"
                    for c in categories
                ]
                lines.append(f"| {_predictor(predictor, entry)} | " + " | ".join(cells) + " |")
            lines.append("")
        experts = list(entry["error_correlation"])
        if len(experts) > 1:
            lines += ["Correlation of the experts' whole-request errors (score - verdict):", ""]
            lines += ["| | " + " | ".join(experts) + " |", "|---|" + "---:|" * len(experts)]
            for a in experts:
                row = " | ".join(fmt(entry["error_correlation"][a][b], 2) for b in experts)
                lines.append(f"| {a} | {row} |")
            lines.append("")
    notes = report.get("notes", {})
    if notes:
        lines += ["## Definitions", ""] + [f"- **{k}**: {v}" for k, v in notes.items()] + [""]
    return "\n".join(lines)


def write_eval(report: Mapping[str, Any], out: Path) -> list[Path]:
    """Write ``eval.json`` (NaN as null) and ``eval.md`` into folder ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "eval.json"
    path.write_text(json.dumps(jsonable(dict(report)), indent=1, allow_nan=False) + "\n")
    summary = out / "eval.md"
    summary.write_text(markdown(report))
    return [path, summary]
