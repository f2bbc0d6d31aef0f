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
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aegis_online.datasets import shared_data_dir  # noqa: E402
from aegis_online.learn.escalation import EscalationRule  # noqa: E402
from aegis_online.simulate.cache import ReplayCache, default_cache_path  # noqa: E402
from aegis_online.simulate.replay_run import ReplayConfig, build_catalog_experts, run_replay  # noqa: E402
from aegis_online.simulate.traffic import DataSpec  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=None, help="Shared labelled data (default: ../shared/data).")
    parser.add_argument("--expensive", default="lexical-heads,minilm-heads", help="The expensive tier.")
    parser.add_argument("--learners", default="default,default+adaptive")
    parser.add_argument("--target", type=float, default=0.78, help="Target escalation rate (in expensive calls).")
    parser.add_argument(
        "--hedge-share", type=float, default=EscalationRule.hedge_share, help="The escalation rule's hedge_share."
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="Rows taken from each file (default: all).")
    parser.add_argument("--no-cache", action="store_true", help="Score every text afresh, keep no scores.")
    args = parser.parse_args(argv)
    base = args.data_dir or shared_data_dir()
    expensive = args.expensive.split(",")
    config = ReplayConfig(
        data=[DataSpec(base / rel, limit=args.limit) for rel in FILES],
        learners=args.learners.split(","),
        categories=["S8", "S10", "S12"],
        feedback_delay=25,
        shuffle=True,
        seed=args.seed,
        cascade=expensive,
        cascade_target=args.target,
        cascade_hedge_share=args.hedge_share,
    )
    console = Console(width=160)
    cache = ReplayCache(None if args.no_cache else default_cache_path())
    with console.status("scoring and replaying"):
        result = run_replay(config, build_catalog_experts(list(EXPERTS)), cache)
    truth = result.stream.truth[0]
    unsafe = (np.nan_to_num(truth) > 0.5).any(axis=1)
    cheap_columns = [i for i, e in enumerate(result.stream.experts) if e not in expensive]
    table = Table(title=f"Cascade on the shared data (expensive: {', '.join(expensive)}; target {args.target:.0%})")
    for column in (
        "learner",
        "loss ratio",
        "calls saved",
        "budget (1%)",
        "excess: cheap-decided",
        "excess: escalated",
        "unsafe decided cheap (loss)",
        "unsafe among as many least suspicious, in hindsight",
    ):
        table.add_column(column, justify="right")
    for learner in config.learners:
        cascade = result.report["cascade"][f"{learner}+cascade"]
        full = request_losses(result.logs[learner].scores, truth)
        cascaded = request_losses(result.logs[f"{learner}+cascade"].scores, truth)
        alone = ~result.logs[f"{learner}+cascade"].escalated
        cheap = result.stream.outputs[0][:, :, cheap_columns]
        names = [result.stream.experts[i] for i in cheap_columns]
        reference = least_suspicious_unsafe(cheap, names, unsafe, int(alone.sum()))
        table.add_row(
            learner,
            f"{cascade['loss_ratio']:.3f}",
            f"{cascade['expensive_calls_saved']:.1%}",
            f"{0.01 * full.sum():.2f}",
            f"{cascaded[alone].sum() - full[alone].sum():+.2f}",
            f"{cascaded[~alone].sum() - full[~alone].sum():+.2f}",
            f"{int((unsafe & alone).sum())} of {int(unsafe.sum())} ({cascaded[unsafe & alone].sum():.2f})",
            ", ".join(f"{name}: {n}" for name, n in reference.items()),
        )
    console.print(f"{len(truth):,} requests; full-information loss per learner in the budget column x 100")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
