"""Throughput of the CPU experts on one core, on real shared-data texts, against baselines measured in the same run.

Sections (``--sections``, default all; each one a function registered in ``SECTIONS``):

* ``minilm-heads``: what ``minilm-heads`` adds per text beside ``minilm-embedding`` in one process (they share each
  text's embedding), against the zero-shot expert's own cost measured just before (target: < 1 ms per text).
* ``lexical``: ``lexical-heads`` (TF-IDF word + character n-grams, 14 logistic heads: every category with a head
  and the overall one) in texts/s, as a ratio against the 2,000 texts/s target and against ``profanity-check``
  (``alt-profanity-check``, one TF-IDF + linear SVM score) on the same texts and batches.

Texts: up to ``--per-set`` rows from each shared set (``datasets.SHARED_SETS``, read in place from the shared data
folder; a fixed seed picks them), in batches of ``--batch``. One core: the BLAS/OpenMP pools are capped at one
thread before numpy is imported, then ``threadpoolctl`` caps them again and the process is pinned to one CPU where
the OS allows it. Each expert is warmed up on one batch (imports, vectoriser construction), then the whole text set
is scored ``--repeats`` times and the best pass kept (machines are noisy). Nothing here asserts on time: the ratios
are the result. ``python bench/experts.py`` (seconds: the data, then four passes per expert); ``--quick`` is a
smoke run.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy (and scikit-learn) start their thread pools

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run from a checkout without an install
    sys.path.insert(0, str(ROOT))

from aegis_online.datasets import SHARED_SETS, load_shared, shared_data_dir  # noqa: E402

console = Console(highlight=False)

#: What the lexical expert must sustain on one core to sit in the ingress process beside the request path.
LEXICAL_TARGET_TEXTS_PER_S = 2_000.0


@dataclass(frozen=True)
class Context:
    """What every section reads: the texts, how to batch them, how many passes to keep the best of."""

    texts: list[str]
    batch: int
    repeats: int
    quick: bool

    def batches(self) -> list[list[str]]:
        return [self.texts[i : i + self.batch] for i in range(0, len(self.texts), self.batch)]


@dataclass(frozen=True)
class Rate:
    """One measured throughput: texts per second over the best pass, and the median batch latency of that pass."""

    name: str
    texts_per_s: float
    batch_ms_p50: float


def one_core() -> str:
    """Cap the native thread pools at one thread and pin the process to one CPU; say what was done."""
    notes = ["1 thread per pool"]
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        notes.append("threadpoolctl")
    except ImportError:  # the env vars set above already cap them
        pass
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        notes.append(f"pinned to CPU {cpu}")
    return ", ".join(notes)


def measure(name: str, ctx: Context, score: Callable[[list[str]], object]) -> Rate:
    """Warm ``score`` up on one batch, then the best of ``ctx.repeats`` passes over every batch."""
    batches = ctx.batches()
    score(batches[0])
    best_total, best_laps = float("inf"), [0.0]
    for _ in range(ctx.repeats):
        laps = []
        for batch in batches:
            start = time.perf_counter()
            score(batch)
            laps.append(time.perf_counter() - start)
        if sum(laps) < best_total:
            best_total, best_laps = sum(laps), laps
    return Rate(name, len(ctx.texts) / best_total, float(np.median(best_laps)) * 1000.0)


def profanity_baseline(ctx: Context) -> Rate | None:
    """``profanity-check`` on the same texts and batches; None when ``alt-profanity-check`` is not installed."""
    try:
        from aegis_online.experts.cpu import ProfanityExpert

        expert = ProfanityExpert()
        expert.offensive_probability(ctx.texts[:2])
    except (ImportError, RuntimeError):
        return None
    return measure("profanity-check", ctx, expert.offensive_probability)


def lexical_section(ctx: Context) -> None:
    """``lexical-heads`` texts/s vs the 2,000 texts/s target and vs ``profanity-check`` measured just before."""
    from aegis_online.experts.cpu import LexicalExpert

    expert = LexicalExpert()
    heads = list(expert.model.heads)  # every category with a head, and the overall one
    baseline = profanity_baseline(ctx)
    lexical = measure("lexical-heads", ctx, lambda batch: expert.model.predict(batch, heads))

    table = Table(title=f"lexical-heads vs profanity-check, {len(ctx.texts):,} texts, batches of {ctx.batch}")
    for column in ("expert", "texts/s", "batch p50 ms", "vs 2,000/s target", "vs profanity-check"):
        table.add_column(column, justify="left" if column == "expert" else "right")
    for rate in (r for r in (baseline, lexical) if r is not None):
        versus = "n/a" if baseline is None else f"{rate.texts_per_s / baseline.texts_per_s:.2f}x"
        table.add_row(
            rate.name,
            f"{rate.texts_per_s:,.0f}",
            f"{rate.batch_ms_p50:.1f}",
            f"{rate.texts_per_s / LEXICAL_TARGET_TEXTS_PER_S:.2f}x",
            versus,
        )
    console.print(table)
    console.print(
        f"lexical-heads: {lexical.texts_per_s:,.0f} texts/s on one core ({len(heads)} heads), "
        f"{lexical.texts_per_s / LEXICAL_TARGET_TEXTS_PER_S:.2f}x the {LEXICAL_TARGET_TEXTS_PER_S:,.0f} texts/s target"
    )
    if baseline is None:
        console.print("profanity-check: alt-profanity-check not installed, no baseline ratio")
    else:
        console.print(f"lexical-heads / profanity-check: {lexical.texts_per_s / baseline.texts_per_s:.2f}x")


def minilm_heads_section(ctx: Context) -> None:
    """What ``minilm-heads`` adds to the zero-shot ``minilm-embedding`` per text, in one process: both read the
    embedding the process-wide embedder keeps, so the heads cost a cache lookup and one matrix product. Baseline:
    the zero-shot expert with its embedding computed (no cache), on the same texts and batches, just before."""
    from aegis_online.experts.cpu import EmbeddingExpert, MiniLMEmbedder
    from aegis_online.taxonomy import CANONICAL_IDS

    texts = ctx.texts[: 64 if ctx.quick else 512]
    sub = Context(texts, ctx.batch, ctx.repeats, ctx.quick)
    cold = MiniLMEmbedder(cache_size=0)
    zero_shot = EmbeddingExpert(embedder=cold)
    shared = MiniLMEmbedder(cache_size=len(texts) + ctx.batch)
    heads = EmbeddingExpert(heads="packaged", zero_shot=False, name="minilm-heads", embedder=shared)
    heads_cold = EmbeddingExpert(heads="packaged", zero_shot=False, name="minilm-heads", embedder=cold)
    categories = list(CANONICAL_IDS)
    head_categories = sorted(heads.categories)
    baseline = measure("minilm-embedding (zero-shot, embeds)", sub, lambda b: zero_shot.score_texts(b, categories))
    shared.encode(texts)  # what the zero-shot expert's call leaves in the shared embedder
    added = measure("minilm-heads (embedding shared)", sub, lambda b: heads.score_texts(b, head_categories))
    alone = measure("minilm-heads (embeds its own)", sub, lambda b: heads_cold.score_texts(b, head_categories))

    table = Table(title=f"minilm-heads beside minilm-embedding, {len(texts):,} texts, batches of {sub.batch}")
    for column in ("expert", "ms per text", "vs zero-shot", "vs 1 ms target"):
        table.add_column(column, justify="left" if column == "expert" else "right")
    for rate in (baseline, added, alone):
        ms = 1000.0 / rate.texts_per_s
        table.add_row(rate.name, f"{ms:.3f}", f"{ms / (1000.0 / baseline.texts_per_s):.3f}x", f"{ms:.3f}x")
    console.print(table)
    console.print(
        f"minilm-heads adds {1000.0 / added.texts_per_s:.3f} ms per text to the zero-shot expert in one process "
        f"({added.texts_per_s / baseline.texts_per_s:.0f}x faster than the zero-shot expert's "
        f"{1000.0 / baseline.texts_per_s:.1f} ms); target < 1 ms"
    )


#: Section name -> function; a new section registers itself here.
SECTIONS: dict[str, Callable[[Context], None]] = {"lexical": lexical_section, "minilm-heads": minilm_heads_section}


def load_texts(per_set: int, seed: int) -> tuple[list[str], list[str]]:
    """Up to ``per_set`` texts from each shared set (a fixed seed picks them), shuffled; and one note per set."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    notes: list[str] = []
    for spec in SHARED_SETS:
        rows = load_shared(spec.name)
        pick = rng.permutation(len(rows))[:per_set]
        texts.extend(rows[i].text for i in pick)
        notes.append(f"{spec.name} {len(pick)}")
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], notes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run with small sizes (a few seconds)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--per-set", type=int, default=None, help="texts per shared set (default 1000; quick 60)")
    parser.add_argument("--batch", type=int, default=64, help="texts per call")
    parser.add_argument("--repeats", type=int, default=None, help="passes, best kept (default 3; quick 1)")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections {unknown}; known: {', '.join(SECTIONS)}")

    if shared_data_dir() is None:
        console.print("shared data not found (../shared/data beside the repo, or set AEGIS_DATA_DIR): nothing to run")
        return 0
    per_set = args.per_set or (60 if args.quick else 1000)
    texts, notes = load_texts(per_set, seed=0)
    ctx = Context(texts, args.batch, args.repeats or (1 if args.quick else 3), args.quick)
    cores = one_core()
    mean_chars = sum(len(t) for t in texts) / len(texts)
    console.print(
        f"CPU experts on one core ({cores}): {len(texts):,} shared-data texts ({', '.join(notes)}; "
        f"{mean_chars:.0f} characters on average), batches of {ctx.batch}, best of {ctx.repeats}"
        f"{' (quick)' if args.quick else ''}."
    )
    for name in sections:
        SECTIONS[name](ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
