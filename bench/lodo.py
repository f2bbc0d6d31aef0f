"""Leave-one-dataset-out: the default CPU tier trained on every shared set but one, judged on the one left out.

For each shared set H (``datasets.SHARED_SETS``): the trained parts of the tier are refitted on the other sets only
(less any row that repeats one of H's texts), exactly as ``make heads`` fits them on all (profanity-check's
per-category calibration, the ``minilm-heads`` logistic heads, the ``lexical-heads`` TF-IDF heads); the zero-shot
MiniLM expert has nothing to fit. Then H's rows are scored
by the four experts and ``simulate.evaluation.evaluate_outputs`` (the code behind ``aegis-online eval``) gives each
expert's and the ensemble's AUROC, AUPRC and F1 / precision / recall / FPR at the default policy's thresholds, per
category and for the whole request. The whole-request score is the service's: each expert's highest category score,
combined by the ensemble (uniform weights: what a new tenant starts with). So no figure here saw its own data set in
training, which is how the tier meets text that is not in ``../shared/data``.

Writes ``--out``/lodo.json (every metric), ``--out``/lodo.md (the tables) and ``--out``/lodo.png, and prints the
targets of issue 14 (ensemble AUROC >= .90 on OpenAI moderation, >= .85 on XSTest, above each single expert on every
set with both classes). Embedding all 27,413 rows takes minutes on two cores; they are kept in ``--cache``
(keyed by the texts) for the next run. ``python bench/lodo.py`` (``--limit N`` rows per set for a smoke run).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT))

from aegis_online.datasets import SHARED_SETS, LabelledText, load_shared  # noqa: E402
from aegis_online.schemas import OVERALL  # noqa: E402
from aegis_online.simulate.evaluation import ENSEMBLE, evaluate_outputs, truth_matrix  # noqa: E402
from aegis_online.simulate.predictor_metrics import binary_metrics  # noqa: E402
from aegis_online.taxonomy import CANONICAL_IDS  # noqa: E402

console = Console(highlight=False)
EXPERTS = ("profanity-check", "minilm-embedding", "minilm-heads", "lexical-heads")
#: Issue 14's targets: the ensemble's whole-request AUROC on these held-out sets.
TARGETS = {"openai_moderation": 0.90, "xstest": 0.85}
#: The ensemble learning online from the held-out set's own labels (prequential), beside the uniform one.
ONLINE = "ensemble_online"
CATS = list(CANONICAL_IDS)


def embeddings_of(texts: list[str], cache: Path) -> np.ndarray:
    """MiniLM embeddings of ``texts``, from ``cache`` when this exact list was embedded before."""
    from aegis_online.experts.cpu import get_embedder

    embedder = get_embedder()
    digest = hashlib.sha256("\n".join([embedder.name, *texts]).encode()).hexdigest()[:20]
    path = cache / f"minilm-{digest}.npy"
    if path.is_file():
        return np.load(path)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("embedding every shared row (once; cached)", total=len(texts))
        vectors = embedder.encode_batches(texts, progress=lambda n: progress.advance(task, n))
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def held_out_outputs(
    sets: dict[str, list[LabelledText]],
    held: str,
    embeddings: dict[str, np.ndarray],
    offensive: dict[str, np.ndarray],
    zero_shot: dict[str, np.ndarray],
    folds: int,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The four experts' scores ``(T, C, 4)`` on ``held``, with every trained part fitted on the other sets; and
    the trained experts' whole-request heads on ``held`` (not used by the service: reported beside it)."""
    from aegis_online.experts.cpu import train_heads
    from aegis_online.experts.cpu.lexical import train_lexical
    from aegis_online.experts.cpu.profanity_calibration import CategoryMap, fit_profanity_calibration

    rows, texts = sets[held], [r.text for r in sets[held]]
    # The fit also leaves out any row of another set with one of the held set's texts (9 Davidson tweets are also
    # OpenAI moderation samples): no held-out score comes from a model that saw the text it scores.
    seen = set(texts)
    keep = {n: np.array([r.text not in seen for r in sets[n]], dtype=bool) for n in sets if n != held}
    train_sets = {n: [r for r, k in zip(sets[n], kept, strict=True) if k] for n, kept in keep.items()}
    train_rows = [r for part in train_sets.values() for r in part]
    outputs = np.full((len(rows), len(CATS), len(EXPERTS)), np.nan)

    try:
        calibration = fit_profanity_calibration(train_sets, {n: offensive[n][kept] for n, kept in keep.items()})
        maps = dict(calibration.maps)
    except ValueError:  # no category has both classes in the other sets
        maps = {}
    # Without Davidson no other set has profanity positives: S12 then keeps the package's own P(offensive).
    maps.setdefault("S12", CategoryMap(slope=1.0, intercept=0.0))
    for c, m in maps.items():
        outputs[:, CATS.index(c), 0] = m(offensive[held])
    outputs[:, :, 1] = zero_shot[held]
    train_embeddings = np.concatenate([embeddings[n][kept] for n, kept in keep.items()])
    heads, _ = train_heads(train_rows, embeddings=train_embeddings, folds=folds)
    lexical, _ = train_lexical(train_rows, folds=folds)
    minilm_cats = [c for c in heads.categories if c != OVERALL]
    if minilm_cats:
        outputs[:, [CATS.index(c) for c in minilm_cats], 2] = heads.predict(embeddings[held], minilm_cats)
    lexical_cats = list(lexical.categories)
    if lexical_cats:
        outputs[:, [CATS.index(c) for c in lexical_cats], 3] = lexical.predict(texts, lexical_cats)
    overall_heads = {
        "minilm-heads": heads.predict(embeddings[held], [OVERALL])[:, 0],
        "lexical-heads": lexical.predict(texts, [OVERALL])[:, 0],
    }
    return outputs, overall_heads


def finite_or_none(metrics: dict[str, Any]) -> dict[str, Any]:
    """``binary_metrics`` with undefined (NaN) values as None, as ``eval.json`` writes them."""
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in metrics.items()}


def online_overall(outputs: np.ndarray, truth: np.ndarray, unsafe: np.ndarray, seed: int = 0) -> np.ndarray:
    """The ensemble's whole-request score per row when it learns online on the held-out set: rows in a random order,
    each scored with the state the labels before it built, then learned (the default learner, as the service runs
    it, through ``simulate.runner``; every label arrives before the next request). Prequential: no row's score saw
    its own label."""
    from aegis_online.learn import DEFAULT_LEARNER, make_learner
    from aegis_online.simulate.evaluation import expert_overall
    from aegis_online.simulate.runner import run_learner
    from aegis_online.simulate.stream import Stream

    rows, n_cats, n_experts = outputs.shape
    order = np.random.default_rng(seed).permutation(rows)
    full = np.concatenate([outputs, expert_overall(outputs)[:, None, :]], axis=1)[order]
    labels = np.concatenate([truth, unsafe[:, None]], axis=1)[order]
    stream = Stream(
        experts=EXPERTS,
        categories=(*CATS, OVERALL),
        tenants=("default",),
        outputs=full[None],
        truth=labels[None],
        unsafe=unsafe[order][None],
        feedback=labels[None],
        arrival=np.arange(1, rows + 1)[None],
        tenant=np.zeros((1, rows), dtype=np.int64),
        thresholds=np.full((1, n_cats + 1), 0.5),
        personalise_after=np.array([0]),
    )
    run = run_learner(make_learner(DEFAULT_LEARNER, n_experts), stream)
    scores = np.empty(rows)
    scores[order] = run.predictions[0, :, -1]
    return scores


def auroc_table(results: dict[str, Any]) -> Table:
    table = Table(title="leave-one-dataset-out: whole-request AUROC on the held-out set (recall at threshold)")
    table.add_column("held out")
    for name in (*EXPERTS, ENSEMBLE, ONLINE):
        table.add_column(name, justify="right")
    for held, entry in results.items():
        cells = []
        for name in (*EXPERTS, ENSEMBLE, ONLINE):
            m = entry[name]["overall"]
            cells.append(f"{m['auroc']:.3f}" if m["auroc"] is not None else f"(recall {m['recall']:.2f})")
        table.add_row(held, *cells)
    return table


def markdown(results: dict[str, Any], seconds: float) -> str:
    lines = [
        "# Leave-one-dataset-out: the default CPU tier on data it was not trained on",
        "",
        "Produced by `python bench/lodo.py` (issue 14). For each shared set, every trained part of the tier",
        "(profanity-check's calibration, minilm-heads, lexical-heads) is refitted on the other sets only; the held-out",
        "set is then scored by the four experts and the ensemble with uniform weights (what a new tenant starts with),",
        "and by the ensemble learning online from the held-out set's own labels in a random order (prequential: each",
        "row scored before its label is learned; the default learner, through the simulator's runner).",
        "Whole-request score: the service's (each expert's highest category score). `n/a`: the set has one class.",
        f"Run time: {seconds:.0f} s.",
        "",
        "## Whole-request AUROC",
        "",
        "| held out | rows | " + " | ".join(EXPERTS) + " | ensemble (uniform) | ensemble (online) | target |",
        "|---|---:|" + "---:|" * (len(EXPERTS) + 3),
    ]
    for held, entry in results.items():
        cells = [entry[n]["overall"]["auroc"] for n in (*EXPERTS, ENSEMBLE, ONLINE)]
        shown = ["n/a" if v is None else f"{v:.3f}" for v in cells]
        target = TARGETS.get(held)
        lines.append(f"| {held} | {entry['rows']} | " + " | ".join(shown) + f" | {target or ''} |")
    lines += [
        "",
        "## Recall / false-positive rate of the whole request at the default threshold",
        "",
        "| held out | " + " | ".join((*EXPERTS, ENSEMBLE, ONLINE)) + " |",
        "|---|" + "---:|" * (len(EXPERTS) + 2),
    ]
    for held, entry in results.items():
        cells = []
        for n in (*EXPERTS, ENSEMBLE, ONLINE):
            m = entry[n]["overall"]
            fpr = "n/a" if m["fpr"] is None else f"{m['fpr']:.2f}"
            cells.append(f"{m['recall']:.2f} / {fpr}" if m["recall"] is not None else "n/a")
        lines.append(f"| {held} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## The trained experts' whole-request heads (AUROC; not used by the service, which takes the highest",
        "category score)",
        "",
        "| held out | minilm-heads overall head | lexical-heads overall head |",
        "|---|---:|---:|",
    ]
    for held, entry in results.items():
        heads = entry["overall_heads"]
        shown = ["n/a" if heads[n]["auroc"] is None else f"{heads[n]['auroc']:.3f}" for n in EXPERTS[2:]]
        lines.append(f"| {held} | " + " | ".join(shown) + " |")
    lines += ["", "## Pairwise correlation of the experts' whole-request errors", ""]
    for held, entry in results.items():
        corr = entry["error_correlation"]
        pairs = [
            f"{a} / {b}: {corr[a][b]:.2f}"
            for i, a in enumerate(EXPERTS)
            for b in EXPERTS[i + 1 :]
            if corr[a][b] is not None
        ]
        lines.append(f"- {held}: " + "; ".join(pairs))
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    held = [h for h in results if results[h][ENSEMBLE]["overall"]["auroc"] is not None]
    names = (*EXPERTS, ENSEMBLE, ONLINE)
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(8, 4))
    for k, name in enumerate(names):
        values = [results[h][name]["overall"]["auroc"] or 0.0 for h in held]
        ax.bar(np.arange(len(held)) + k * width, values, width, label=name)
    for i, h in enumerate(held):
        if h in TARGETS:
            ax.hlines(TARGETS[h], i - width / 2, i + 0.8, colors="black", linestyles="dashed")
    ax.set_xticks(np.arange(len(held)) + 0.4 - width / 2, held)
    ax.set_ylim(0.4, 1.0)
    ax.set_ylabel("whole-request AUROC (held-out set)")
    ax.set_title("Leave-one-dataset-out (dashed: issue 14 targets)")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="Folder for lodo.json, lodo.md, lodo.png.")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "bench", help="Embedding cache folder.")
    parser.add_argument("--limit", type=int, default=None, help="Rows per set (smoke runs).")
    parser.add_argument("--folds", type=int, default=2, help="Cross-validation folds inside each training.")
    args = parser.parse_args(argv)

    from aegis_online.experts.cpu import EmbeddingExpert
    from aegis_online.experts.cpu.profanity import offensive_probability

    started = time.perf_counter()
    try:
        sets = {s.name: load_shared(s.name, limit=args.limit) for s in SHARED_SETS}
    except FileNotFoundError as error:
        console.print(f"[red]{error}[/red]")
        return 2
    texts = [r.text for rows in sets.values() for r in rows]
    vectors = embeddings_of(texts, args.cache)
    offsets = np.cumsum([0, *(len(rows) for rows in sets.values())])
    embeddings = {name: vectors[offsets[i] : offsets[i + 1]] for i, name in enumerate(sets)}
    offensive = {name: offensive_probability([r.text for r in rows]) for name, rows in sets.items()}
    zero_shot_expert = EmbeddingExpert()
    zero_shot = {name: zero_shot_expert.score_embeddings(e, CATS) for name, e in embeddings.items()}

    results: dict[str, Any] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("held-out sets", total=len(sets))
        for held, rows in sets.items():
            outputs, overall_heads = held_out_outputs(sets, held, embeddings, offensive, zero_shot, args.folds)
            truth, unsafe = truth_matrix(rows, CATS)
            entry = evaluate_outputs(outputs, truth, unsafe, experts=EXPERTS, categories=CATS)
            online = binary_metrics(unsafe, online_overall(outputs, truth, unsafe), 0.5)
            entry[ONLINE] = {"overall": finite_or_none(online)}
            entry["overall_heads"] = {
                name: finite_or_none(binary_metrics(unsafe, scores, 0.5)) for name, scores in overall_heads.items()
            }
            results[held] = entry
            progress.advance(task)
    seconds = time.perf_counter() - started

    console.print(auroc_table(results))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lodo.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    (args.out / "lodo.md").write_text(markdown(results, seconds))
    plot(results, args.out / "lodo.png")
    for held, target in TARGETS.items():
        auroc = results[held][ENSEMBLE]["overall"]["auroc"]
        console.print(
            f"target: ensemble AUROC on {held} {auroc:.3f} (>= {target}: {'met' if auroc >= target else 'NOT met'})"
        )
    for held, entry in results.items():
        best = max((entry[n]["overall"]["auroc"] or 0.0, n) for n in EXPERTS)
        for name in (ENSEMBLE, ONLINE):
            ens = entry[name]["overall"]["auroc"]
            if ens is None:
                continue
            verdict = "above" if ens > best[0] else "NOT above"
            console.print(f"{held}: {name} {ens:.3f} {verdict} the best single expert ({best[1]} {best[0]:.3f})")
    console.print(f"wrote {args.out / 'lodo.md'}, lodo.json and lodo.png in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
