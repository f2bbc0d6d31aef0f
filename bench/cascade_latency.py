"""A cascade's latency per tier: ``python bench/cascade_latency.py [--requests N] [--target R]``.

Issue 16's second target: "a non-escalated request's latency is the cheap tier's". Three engines in this process over
the catalog's CPU experts, on the same real texts (``demo_prompts``: the shared data when present), one request at a
time:

* ``cheap only``: the cheap experts alone (the latency a cheap-decided request should have);
* ``cascade``: every expert, the ``--expensive`` ones called only when the escalation rule says so (target rate
  ``--target``), so each of its requests is either cheap-decided or escalated;
* ``full``: every expert on every request (what an escalated request should cost).

First the cascade alone runs ``--warm-up`` requests with their labels as feedback, so that its cut has reached the
target and its loss regression has learned (the cut starts low: the first requests all escalate). Then each request
goes to the three engines in a rotating order, so the machine's drift falls on all three alike; the cascade keeps
getting the labels (outside the measured time). Each engine sees its own suffix of the text (MiniLM caches
embeddings per text). Prints p50/p99 of the cascade's cheap-decided requests against ``cheap only`` on the same
requests (1.00: the cascade adds nothing to a request it does not escalate), and of its escalated ones against
``full`` (the cost of calling the expensive tier after the cheap one instead of beside it), as ratios measured in
the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aegis_online.demos.prompts import LabelledPrompt, demo_prompts  # noqa: E402
from aegis_online.engine import Engine  # noqa: E402
from aegis_online.learn import DEFAULT_LEARNER, cascade_learner_name  # noqa: E402
from aegis_online.learn.escalation import EscalationRule  # noqa: E402
from aegis_online.moderator import CascadeConfig  # noqa: E402
from aegis_online.schemas import FeedbackEvent, Message, ModerationRequest  # noqa: E402
from aegis_online.simulate.replay_run import build_catalog_experts  # noqa: E402


def build_engines(cheap: Sequence[str], expensive: Sequence[str], target: float) -> dict[str, Engine]:
    """``cheap only``, ``cascade`` and ``full`` engines, each over experts of its own (no shared caches)."""
    everyone = [*cheap, *expensive]
    positions = [everyone.index(name) for name in expensive]
    rule = EscalationRule(target_rate=target)
    return {
        "cheap only": Engine(build_catalog_experts(cheap), deadline_s=30.0),
        "cascade": Engine(
            build_catalog_experts(everyone),
            learner=cascade_learner_name(DEFAULT_LEARNER, positions),
            cascade=CascadeConfig(expensive=frozenset(expensive), rule=rule),
            deadline_s=30.0,
        ),
        "full": Engine(build_catalog_experts(everyone), deadline_s=30.0),
    }


def feedback(engine: Engine, request_id: str, row: LabelledPrompt, categories: Sequence[str]) -> None:
    """The row's labels as feedback on the engine's decision: per category where the set has them, else its
    whole-request verdict."""
    labels = {c: float(v) for c, v in row.labels.items() if c in categories}
    if labels:
        engine.feedback(FeedbackEvent(request_id=request_id, labels=labels))
    elif row.unsafe is not None:
        engine.feedback(FeedbackEvent(request_id=request_id, label="unsafe" if row.unsafe else "safe"))


async def moderate(engine: Engine, text: str, categories: Sequence[str]) -> tuple[float, str | None, str]:
    """Latency in ms, the cascade tier (None without a cascade) and the request id of one request."""
    request = ModerationRequest(messages=[Message(role="user", content=text)], categories=list(categories))
    started = time.perf_counter()
    decision = await engine.moderate(request)
    elapsed = (time.perf_counter() - started) * 1000
    return elapsed, decision.cascade.tier if decision.cascade else None, decision.request_id


async def measure(
    engines: dict[str, Engine],
    warm_up: Sequence[LabelledPrompt],
    rows: Sequence[LabelledPrompt],
    categories: Sequence[str],
) -> tuple[dict[str, list[float]], list[str]]:
    """Latency in ms of each engine on each of ``rows``, and the cascade's tier per row."""
    cascade = engines["cascade"]
    for i, row in enumerate(track(warm_up, description="warm-up (cascade, with feedback)")):
        _, _, request_id = await moderate(cascade, f"{row.text} [warm-up {i}]", categories)
        feedback(cascade, request_id, row, categories)
    for name, engine in engines.items():  # every engine's first calls (threads, lazy loads) before measuring
        await moderate(engine, f"{rows[0].text} [{name} first]", categories)
    names = list(engines)
    latencies: dict[str, list[float]] = {name: [] for name in names}
    tiers: list[str] = []
    for i, row in enumerate(track(rows, description="measured requests")):
        for k in range(len(names)):
            name = names[(i + k) % len(names)]  # rotate who goes first
            elapsed, tier, request_id = await moderate(engines[name], f"{row.text} [{name} {i}]", categories)
            latencies[name].append(elapsed)
            if name == "cascade":
                assert tier is not None
                tiers.append(tier)
                feedback(cascade, request_id, row, categories)
    return latencies, tiers


def summary(ms: Sequence[float]) -> tuple[int, float, float]:
    """Count, p50 and p99 in ms (NaN when empty)."""
    if len(ms) == 0:
        return 0, float("nan"), float("nan")
    return len(ms), float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="Measured requests per engine.")
    parser.add_argument("--cheap", default="profanity-check", help="Comma-separated cheap experts (catalog names).")
    parser.add_argument("--expensive", default="minilm-embedding", help="Comma-separated expensive experts.")
    parser.add_argument("--warm-up", type=int, default=400, help="Labelled requests the cascade learns from first.")
    parser.add_argument(
        "--categories",
        default="S8,S10,S12",
        help="Categories each request asks for: ones the cheap tier covers (a category only the expensive tier "
        "covers escalates every request).",
    )
    parser.add_argument("--target", type=float, default=0.3, help="Target escalation rate of the cascade.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the text sample.")
    args = parser.parse_args(argv)
    cheap, expensive = args.cheap.split(","), args.expensive.split(",")
    # every row, not only the held-out ones: this measures time, with experts no head was fitted for, and the more
    # distinct texts the fewer repeats (MiniLM's cache answers a repeat at once)
    rows, source = demo_prompts(args.warm_up + args.requests, seed=args.seed, held_out_only=False)
    console = Console(width=140)
    console.print(f"text: {source}; categories {args.categories}")
    console.print(f"cheap tier: {cheap}; expensive tier: {expensive}; target rate {args.target}")
    engines = build_engines(cheap, expensive, args.target)
    latencies, tiers = asyncio.run(
        measure(engines, rows[: args.warm_up], rows[args.warm_up :], args.categories.split(","))
    )
    escalated = np.array([tier == "expensive" for tier in tiers])
    ms = {name: np.array(values) for name, values in latencies.items()}
    pairs = {  # each cascade case against the engine it should cost, on the same requests
        "cheap-decided": ("cheap only", ~escalated),
        "escalated": ("full", escalated),
    }
    table = Table(title=f"Latency per request in ms, one at a time, {args.requests} requests per engine")
    for column in ("cascade requests", "count", "cascade p50", "cascade p99", "against", "its p50", "its p99"):
        table.add_column(column, justify="right")
    ratios = {}
    for case, (baseline, mask) in pairs.items():
        n, p50, p99 = summary(ms["cascade"][mask])
        _, base50, base99 = summary(ms[baseline][mask])
        ratios[case] = (baseline, p50 / base50, p99 / base99)
        table.add_row(case, str(n), f"{p50:.2f}", f"{p99:.2f}", baseline, f"{base50:.2f}", f"{base99:.2f}")
    console.print(table)
    console.print(f"escalated: {escalated.mean():.1%} of the cascade's requests")
    for case, (baseline, r50, r99) in ratios.items():
        console.print(f"ratio {case} / {baseline} (same requests): p50 {r50:.2f}, p99 {r99:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
