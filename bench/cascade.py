"""The cascade on the shipped scenarios: ``python bench/cascade.py [--steps N] [--targets 0.3,0.4]``.

For every scenario of ``simulators/`` with the two guards (``guard-large``, ``guard-small``: the expensive tier),
the default learner runs twice on the same traffic, calling every expert (full information) and as a cascade whose
band is learned toward each target escalation rate. Prints, per scenario and target, the escalation rate, the
expensive calls saved, the loss ratio against full information and the macro F1 of both (the issue's target: >= 60%
fewer expensive calls for <= 1% more loss). ``aegis-online simulate --cascade`` gives one scenario's full report.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aegis_online.simulate.scenario import load_scenario  # noqa: E402
from aegis_online.simulate.simulation import run_simulation  # noqa: E402

EXPENSIVE = ("guard-large", "guard-small")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="Requests per scenario (default: the scenario's).")
    parser.add_argument("--targets", default="0.3,0.4", help="Comma-separated target escalation rates.")
    args = parser.parse_args(argv)
    targets = [float(t) for t in args.targets.split(",")]
    console = Console(width=130)
    table = Table(title="Cascade (expensive: guard-large, guard-small) against full information, default learner")
    for column in ("scenario", "target", "escalated", "expensive calls saved", "loss ratio", "F1 cascade / full"):
        table.add_column(column, justify="right")
    started = time.perf_counter()
    for path in sorted((ROOT / "simulators").glob("*.yaml")):
        scenario = load_scenario(str(path))
        if not set(EXPENSIVE) <= set(scenario.expert_names):
            continue
        for target in targets:
            result = run_simulation(
                scenario, steps=args.steps, learners=["default"], cascade=list(EXPENSIVE), cascade_target=target
            )
            c = result.report["cascade"]["default+cascade"]
            table.add_row(
                scenario.name,
                f"{target:.0%}",
                f"{c['escalation_rate']:.1%}",
                f"{c['expensive_calls_saved']:.1%}",
                f"{c['loss_ratio']:.3f}",
                f"{c['f1_macro']:.3f} / {c['full_information_f1_macro']:.3f}",
            )
            console.print(f"{scenario.name} at {target:.0%} done ({time.perf_counter() - started:.0f} s)")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
