"""The cascade on the shared labelled data, and where its excess loss comes from: ``python bench/cascade_replay.py``.

The replay of docs/cascade.md ("Two stand-ins"): the four CPU experts, two of them (``lexical-heads``,
``minilm-heads`` by default) as the expensive tier, OpenAI moderation, XSTest, SimpleSafetyTests and HarmBench
chained and shuffled, categories S8, S10 and S12, labels 25 requests late. Each learner runs calling every expert
and as a cascade. Prints, per learner:

- the loss ratio against full information and the expensive calls saved (report.json's ``cascade`` figures);
- the excess loss split between the requests the cheap tier decided alone and the escalated ones, against the
  issue's budget (1% of full information's loss);
- the unsafe requests the cheap tier decided alone, and what they cost;
- a reference no rule can beat with the cheap tier's scores: how many unsafe requests lie among the same number of
  requests with the *lowest* cheap scores, ranked in hindsight by several orderings (the highest cheap score, the
  sum, each cheap expert's). If even those hold unsafe requests, a rule that sees only the cheap scores has to
  leave some to the cheap tier at this budget, and each costs a calibrated learner about 1 (its prediction near 0).

About 60 s with the expert scores cached (``aegis-online replay`` fills the same cache), a few minutes without.

``--held-out`` answers each row with the trained experts fitted without the row's own data set: profanity-check's
per-category calibration, ``minilm-heads`` and ``lexical-heads`` are refitted on every other shared set, exactly as
``bench/lodo.py`` does (the zero-shot ``minilm-embedding`` has nothing to fit). The shipped heads were trained on
these very rows, so without it the expensive tier is as good as it can ever be here (AUPRC 0.999 for
``lexical-heads``) and full information's loss, which sets the issue's 1% budget, is a floor no deployment sees.
With it, every score a learner combines is one a model gives to text it never saw, as a guard gives to traffic.
Refitting takes a few minutes (the MiniLM embeddings of every shared row are cached in ``--embedding-cache``);
``--seeds`` replays several shuffles with one fit.

``--json PATH`` also writes each run's figures; ``make results`` shows the held-out ones from
``docs/cascade-replay.json`` on docs/results.md (``python bench/cascade_replay.py --held-out --seeds 0,...,9 --json
docs/cascade-replay.json`` writes it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from aegis_online.datasets import shared_data_dir  # noqa: E402
from aegis_online.experts import Expert  # noqa: E402
from aegis_online.learn.escalation import EscalationRule  # noqa: E402
from aegis_online.simulate.cache import ReplayCache, default_cache_path  # noqa: E402
from aegis_online.simulate.expert_outputs import CachedExpert, request_text  # noqa: E402
from aegis_online.simulate.replay_run import ReplayConfig, build_catalog_experts, run_replay  # noqa: E402
from aegis_online.simulate.traffic import DataSpec, chain  # noqa: E402

FILES = (
    "openai_moderation/samples-1680.jsonl.gz",
    "xstest/xstest_prompts.csv",
    "simplesafetytests/sst_test_cases.csv",
    "harmbench/harmbench_behaviors_text_all.csv",
)
EXPERTS = ("profanity-check", "minilm-embedding", "lexical-heads", "minilm-heads")


def request_losses(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Squared loss per request, summed over its labelled categories."""
    return np.where(np.isfinite(truth), (np.nan_to_num(scores) - truth) ** 2, 0.0).sum(axis=1)


def least_suspicious_unsafe(cheap: np.ndarray, names: list[str], unsafe: np.ndarray, k: int) -> dict[str, int]:
    """Unsafe requests among the ``k`` with the lowest cheap scores, per hindsight ordering of ``cheap`` (T, C, M),
    the scores of the cheap experts ``names``."""
    filled = np.nan_to_num(cheap, nan=0.0)
    orderings = {"highest cheap score": filled.max(axis=(1, 2)), "sum of cheap scores": filled.sum(axis=(1, 2))}
    orderings.update({name: filled[:, :, m].max(axis=1) for m, name in enumerate(names)})
    return {name: int(unsafe[np.argsort(key, kind="stable")[:k]].sum()) for name, key in orderings.items()}


#: report.json's ``cascade`` figures kept per run by ``--json``.
RUN_KEYS = (
    "loss_ratio",
    "escalation_rate",
    "expensive_calls_saved",
    "f1_macro",
    "full_information_f1_macro",
)

#: The shared sets the replay chains, in ``FILES``' order (``datasets.SHARED_SETS`` names).
REPLAYED_SETS = ("openai_moderation", "xstest", "simplesafetytests", "harmbench")


def held_out_experts(
    experts: list[Expert],
    base: Path,
    embedding_cache: Path,
    console: Console,
    limit: int | None = None,
    replayed: set[str] | None = None,
) -> list[Expert]:
    """``experts`` answering from memory, each replayed row scored by the versions fitted without its own set
    (``bench/lodo.py``'s ``held_out_outputs``: every trained part refitted on the other shared sets). With
    ``limit`` (a smoke run), the sets are cut to that many rows, and the replayed ones to the texts in ``replayed``."""
    import lodo

    from aegis_online.datasets import SHARED_SETS, load_shared
    from aegis_online.experts.cpu import EmbeddingExpert
    from aegis_online.experts.cpu.profanity import offensive_probability

    if {e.name for e in experts} != set(lodo.EXPERTS):
        raise ValueError(f"--held-out needs the experts {lodo.EXPERTS}, got {[e.name for e in experts]}")
    sets = {s.name: load_shared(s.name, base, limit=limit) for s in SHARED_SETS}
    if limit is not None and replayed is not None:
        for name in REPLAYED_SETS:
            sets[name] = [r for r in load_shared(name, base) if request_text(r.text) in replayed]
    texts = [r.text for rows in sets.values() for r in rows]
    vectors = lodo.embeddings_of(texts, embedding_cache)
    offsets = np.cumsum([0, *(len(rows) for rows in sets.values())])
    embeddings = {name: vectors[offsets[i] : offsets[i + 1]] for i, name in enumerate(sets)}
    offensive = {name: offensive_probability([r.text for r in rows]) for name, rows in sets.items()}
    zero_shot = {name: EmbeddingExpert().score_embeddings(e, lodo.CATS) for name, e in embeddings.items()}
    tables: dict[str, dict[str, dict[str, float]]] = {name: {} for name in lodo.EXPERTS}
    seen: dict[str, str] = {}
    for held in REPLAYED_SETS:
        with console.status(f"refitting the trained experts without {held}"):
            outputs, _ = lodo.held_out_outputs(sets, held, embeddings, offensive, zero_shot, folds=2)
        for row, scores in zip(sets[held], outputs, strict=True):
            key = request_text(row.text)
            if seen.setdefault(key, held) != held:  # a text in two replayed sets (none here): its first set's scores
                continue
            for i, name in enumerate(lodo.EXPERTS):
                tables[name][key] = {
                    c: float(v) for c, v in zip(lodo.CATS, scores[:, i], strict=True) if np.isfinite(v)
                }
    return [CachedExpert(e.name, frozenset(e.categories), tables[e.name]) for e in experts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="Shared labelled data (default: ../shared/data).")
    parser.add_argument("--expensive", default="lexical-heads,minilm-heads", help="The expensive tier.")
    parser.add_argument("--learners", default="default,default+adaptive")
    parser.add_argument("--target", type=float, default=0.78, help="Target escalation rate (in expensive calls).")
    parser.add_argument(
        "--hedge-share", type=float, default=EscalationRule.hedge_share, help="The escalation rule's hedge_share."
    )
    parser.add_argument("--seed", type=int, default=0, help="The shuffle (see --seeds).")
    parser.add_argument("--seeds", default=None, help="Comma-separated shuffles (overrides --seed).")
    parser.add_argument("--limit", type=int, default=None, help="Rows taken from each file (default: all).")
    parser.add_argument("--no-cache", action="store_true", help="Score every text afresh, keep no scores.")
    parser.add_argument(
        "--held-out", action="store_true", help="Score each row with the trained experts fitted without its set."
    )
    parser.add_argument(
        "--embedding-cache", type=Path, default=ROOT / ".cache" / "bench", help="MiniLM embeddings (--held-out)."
    )
    parser.add_argument("--json", type=Path, default=None, help="Also write each run's figures here (JSON).")
    args = parser.parse_args(argv)
    base = args.data_dir or shared_data_dir()
    expensive = args.expensive.split(",")
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [args.seed]
    console = Console(width=160)
    cache = ReplayCache(None if args.no_cache else default_cache_path())
    experts = build_catalog_experts(list(EXPERTS))
    specs = [DataSpec(base / rel, limit=args.limit) for rel in FILES]
    if args.held_out:
        replayed = {request_text(r.text) for seed in seeds for r in chain(specs, seed=seed).rows}
        experts = held_out_experts(experts, base, args.embedding_cache, console, args.limit, replayed)
        cache = ReplayCache(None)  # the held-out scores are not the catalog experts': keep them out of its cache
    scores = "held-out" if args.held_out else "shipped (in-sample)"
    table = Table(
        title=f"Cascade on the shared data (expensive: {', '.join(expensive)}; target {args.target:.0%}; "
        f"trained experts: {scores})"
    )
    for column in (
        "seed",
        "learner",
        "loss ratio",
        "escalated",
        "calls saved",
        "budget (1%)",
        "excess: cheap-decided",
        "excess: escalated",
        "unsafe decided cheap (loss)",
        "unsafe among as many least suspicious, in hindsight",
    ):
        table.add_column(column, justify="right")
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        config = ReplayConfig(
            data=specs,
            learners=args.learners.split(","),
            categories=["S8", "S10", "S12"],
            feedback_delay=25,
            shuffle=True,
            seed=seed,
            cascade=expensive,
            cascade_target=args.target,
            cascade_hedge_share=args.hedge_share,
        )
        with console.status(f"scoring and replaying (seed {seed})"):
            result = run_replay(config, experts, cache)
        outputs = result.stream.outputs[0]
        unscored = {e: int(np.isnan(outputs[:, :, i]).all(axis=1).sum()) for i, e in enumerate(result.stream.experts)}
        truth = result.stream.truth[0]
        unsafe = (np.nan_to_num(truth) > 0.5).any(axis=1)
        cheap_columns = [i for i, e in enumerate(result.stream.experts) if e not in expensive]
        cheap = outputs[:, :, cheap_columns]
        names = [result.stream.experts[i] for i in cheap_columns]
        for learner in config.learners:
            cascade = result.report["cascade"][f"{learner}+cascade"]
            full = request_losses(result.logs[learner].scores, truth)
            cascaded = request_losses(result.logs[f"{learner}+cascade"].scores, truth)
            alone = ~result.logs[f"{learner}+cascade"].escalated
            reference = least_suspicious_unsafe(cheap, names, unsafe, int(alone.sum()))
            run = {
                "seed": seed,
                "learner": learner,
                "requests": len(truth),
                **{key: cascade[key] for key in RUN_KEYS},
                "budget": 0.01 * float(full.sum()),
                "excess_cheap_decided": float(cascaded[alone].sum() - full[alone].sum()),
                "excess_escalated": float(cascaded[~alone].sum() - full[~alone].sum()),
                "unsafe": int(unsafe.sum()),
                "unsafe_decided_cheap": int((unsafe & alone).sum()),
            }
            runs.append(run)
            row = (
                str(seed),
                learner,
                f"{run['loss_ratio']:.3f}",
                f"{run['escalation_rate']:.1%}",
                f"{run['expensive_calls_saved']:.1%}",
                f"{run['budget']:.2f}",
                f"{run['excess_cheap_decided']:+.2f}",
                f"{run['excess_escalated']:+.2f}",
                f"{run['unsafe_decided_cheap']} of {run['unsafe']} ({cascaded[unsafe & alone].sum():.2f})",
                ", ".join(f"{name}: {n}" for name, n in reference.items()),
            )
            table.add_row(*row)
            console.print(" | ".join(row))
        console.print(f"seed {seed}: {len(truth):,} requests; rows each expert scored none of: {unscored}")
        if args.held_out and any(unscored.values()):
            console.print("[red]some replayed rows have no held-out score: the figures above are not held-out[/red]")
            return 1
    console.print("full-information loss per learner: the budget column x 100")
    console.print(table)
    if args.json is not None:
        summary = {
            "command": "python bench/cascade_replay.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "held_out": args.held_out,
            "sets": list(REPLAYED_SETS),
            "categories": list(config.categories),
            "feedback_delay": config.feedback_delay,
            "expensive": expensive,
            "target_escalation_rate": args.target,
            "hedge_share": args.hedge_share,
            "runs": runs,
        }
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
