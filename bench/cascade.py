"""The cascade on the shipped scenarios: ``python bench/cascade.py [--steps N] [--targets 0.3,0.4]``.

For every scenario of ``simulators/`` with the two guards (``guard-large``, ``guard-small``: the expensive tier),
the default learner runs twice on the same traffic, calling every expert (full information) and as a cascade
(``learn.escalation``: the cheap tier's loss predicted from feedback, the cut learned toward each target escalation
rate). Prints, per scenario and target, the escalation rate, the
expensive calls saved, the loss ratio against full information and the macro F1 of both (the issue's target: >= 60%
fewer expensive calls for <= 1% more loss). ``aegis-online simulate --cascade`` gives one scenario's full report.

Each escalation calls the expensive expert the weights trust most (the other one with the rule's exploration
probability, 5%, and when it hedges at the default ``hedge_share``: ``bench/cascade_hedging.py`` compares it with no
hedging). The target counts expensive calls, so a target rate r spends ``r / 2`` of full information's expensive
calls.

The last column is a reference no service can reach: a router in hindsight that calls *both* guards, with the same
number of expensive calls, on the requests on which the cheap tier alone (the cascade-aware learner with the
expensive experts never called) loses the most against full information, measured with the labels.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aegis_online.learn import make_learner  # noqa: E402
from aegis_online.learn.escalation import EscalationRule, cascade_learner_name  # noqa: E402
from aegis_online.simulate.runner import CascadeSetup, LearnerRun, run_learner  # noqa: E402
from aegis_online.simulate.scenario import load_scenario  # noqa: E402
from aegis_online.simulate.simulation import SimulationResult, run_simulation  # noqa: E402

EXPENSIVE = ("guard-large", "guard-small")


def request_losses(run: LearnerRun, truth: np.ndarray) -> np.ndarray:
    """Squared loss per request (replica 0), summed over its labelled categories."""
    labelled = np.isfinite(truth[0])
    return np.where(labelled, (np.nan_to_num(run.predictions[0]) - truth[0]) ** 2, 0.0).sum(axis=1)


def cheap_alone_losses(result: SimulationResult) -> np.ndarray:
    """Per-request loss of the cheap tier deciding every request alone (the cascade-aware learner, never escalating)."""
    stream, names = result.stream, list(result.scenario.expert_names)
    expensive = tuple(names.index(e) for e in EXPENSIVE)
    never = CascadeSetup(expensive, EscalationRule(target_rate=0.0, initial=1e9))  # no cut reached: cheap tier alone
    learner = make_learner(cascade_learner_name("default", expensive), len(names))
    return request_losses(run_learner(learner, stream, cascade=never), stream.truth)


def hindsight_ratio(cheap: np.ndarray, full: np.ndarray, share: float) -> float:
    """Loss ratio against full information of the hindsight router calling both guards on ``share`` of requests."""
    escalated = np.zeros(len(full), dtype=bool)
    escalated[np.argsort(-(cheap - full))[: round(share * len(full))]] = True
    return float(np.where(escalated, full, cheap).sum() / full.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="Requests per scenario (default: the scenario's).")
    parser.add_argument("--targets", default="0.5,0.78", help="Comma-separated target escalation rates.")
    parser.add_argument(
        "--hedge-share", type=float, default=EscalationRule.hedge_share, help="The escalation rule's hedge_share."
    )
    args = parser.parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")]
    console = Console(width=150)
    table = Table(title="Cascade (expensive: guard-large, guard-small) against full information, default learner")
    columns = ("scenario", "target", "escalated", "expensive calls saved", "loss ratio", "F1 cascade / full")
    for column in (*columns, "hindsight router loss ratio"):
        table.add_column(column, justify="right")
    started = time.perf_counter()
    for path in sorted((ROOT / "simulators").glob("*.yaml")):
        scenario = load_scenario(str(path))
        if not set(EXPENSIVE) <= set(scenario.expert_names):
            continue
        cheap: np.ndarray | None = None
        for target in targets:
            result = run_simulation(
                scenario,
                steps=args.steps,
                learners=["default"],
                cascade=list(EXPENSIVE),
                cascade_target=target,
                cascade_hedge_share=args.hedge_share,
            )
            c = result.report["cascade"]["default+cascade"]
            cheap = cheap_alone_losses(result) if cheap is None else cheap  # the same traffic for every target
            full = request_losses(result.runs["default"], result.stream.truth)
            hindsight = hindsight_ratio(cheap, full, 1.0 - c["expensive_calls_saved"])
            table.add_row(
                scenario.name,
                f"{target:.0%}",
                f"{c['escalation_rate']:.1%}",
                f"{c['expensive_calls_saved']:.1%}",
                f"{c['loss_ratio']:.3f}",
                f"{c['f1_macro']:.3f} / {c['full_information_f1_macro']:.3f}",
                f"{hindsight:.3f}",
            )
            console.print(f"{scenario.name} at {target:.0%} done ({time.perf_counter() - started:.0f} s)")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
