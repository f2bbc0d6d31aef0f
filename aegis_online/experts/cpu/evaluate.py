"""Measure the CPU experts on the shared labelled sets: ``python -m aegis_online.experts.cpu.evaluate``.

Prints, per data set and expert, the harmful-vs-benign AUROC of the expert's highest category score (where the set
has both classes), per-category AUROC where the set labels categories, and the share of rows scored above 0.5.
Reads the sets in place (``datasets.shared_data_dir()`` or ``--data-dir``); embedding every row of them takes a few
minutes on two cores (``--limit`` reads fewer rows per set).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aegis_online.datasets import LabelledText, binary_targets, load, shared_data_dir
from aegis_online.experts.cpu.minilm import EmbeddingExpert, get_embedder
from aegis_online.experts.cpu.profanity import ProfanityExpert
from aegis_online.taxonomy import CANONICAL_IDS

#: (name, path under the data folder, reader options)
SETS: tuple[tuple[str, str, dict[str, object]], ...] = (
    ("openai_moderation", "openai_moderation/samples-1680.jsonl.gz", {"missing_as_safe": True}),
    ("openai_moderation (strict)", "openai_moderation/samples-1680.jsonl.gz", {}),
    ("xstest", "xstest/xstest_prompts.csv", {}),
    ("simplesafetytests", "simplesafetytests/sst_test_cases.csv", {}),
    ("davidson", "davidson_hate_offensive/labeled_data.csv", {}),
    ("harmbench", "harmbench/harmbench_behaviors_text_all.csv", {}),
)


def _auroc(y: np.ndarray, score: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def evaluate(rows: Sequence[LabelledText], scores: dict[str, np.ndarray]) -> dict[str, object]:
    """Harmful-vs-benign AUROC of the max score, per-category AUROC, and the share of rows flagged at 0.5."""
    top = np.max(np.stack(list(scores.values()), axis=1), axis=1)
    index, y = binary_targets(rows)
    result: dict[str, object] = {
        "rows": len(rows),
        "overall": _auroc(y, top[index]),
        "flagged": float(np.mean(top > 0.5)),
    }
    per_category = {}
    for cat, column in scores.items():
        index, y = binary_targets(rows, cat)
        if len(index) and (auroc := _auroc(y, column[index])) is not None:
            per_category[cat] = (auroc, int(y.sum()))
    result["categories"] = per_category
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="Folder of the shared sets.")
    parser.add_argument("--limit", type=int, default=None, help="Rows read per set.")
    parser.add_argument("--heads", type=Path, default=None, help="Also evaluate the embedding expert with these heads.")
    args = parser.parse_args(argv)
    base = args.data_dir or shared_data_dir()
    if base is None:
        parser.error("shared data folder not found: pass --data-dir or set AEGIS_DATA_DIR")

    experts: dict[str, object] = {"profanity": ProfanityExpert(), "embedding zero-shot": EmbeddingExpert()}
    if args.heads is not None:
        experts["embedding + heads"] = EmbeddingExpert(heads=args.heads)
    cats = list(CANONICAL_IDS)
    for name, rel, options in SETS:
        path = base / rel
        if not path.is_file():
            print(f"{name}: {path} absent, skipped")
            continue
        rows = list(load(path, limit=args.limit, **options))
        texts = [r.text for r in rows]
        embeddings = get_embedder().encode(texts)
        for expert_name, expert in experts.items():
            if isinstance(expert, ProfanityExpert):
                cats_p = sorted(expert.categories)
                scores = dict(zip(cats_p, expert.score_texts(texts, cats_p).T, strict=True))
            else:
                assert isinstance(expert, EmbeddingExpert)
                matrix = expert.score_embeddings(embeddings, cats)
                scores = {c: matrix[:, j] for j, c in enumerate(cats)}
            result = evaluate(rows, scores)
            overall = "  n/a" if result["overall"] is None else f"{result['overall']:.3f}"
            per_cat = ", ".join(f"{c} {a:.3f} ({n})" for c, (a, n) in result["categories"].items())  # type: ignore[union-attr]
            print(
                f"{name:28s} {expert_name:20s} rows {result['rows']:6d}  AUROC {overall}  "
                f"flagged@0.5 {result['flagged']:.2f}  per category: {per_cat or '-'}"
            )


if __name__ == "__main__":
    main()
