"""The cascade with and without hedging, at the same guard budget: ``python bench/cascade_hedging.py``.

``EscalationRule.hedge_share`` also calls each expensive expert whose share of the weight it and a chosen one hold,
times how far apart their scores have lain, reaches that share, so while the weights cannot tell apart guards that
disagree (a new tenant, a guard that regressed, late or noisy labels) an escalation calls both. The cut's target
counts expensive calls, so hedging spends escalations, not extra calls. This runs each scenario (default: the two
where ``default+adaptive`` missed issue 16's target without hedging) for several seeds, full information once per
seed, then the cascade for each learner and each share at ``--target``, and prints the expensive calls saved and the
loss ratio against full information.

``--full-feedback`` adds a column no service can reach: the cascade without hedging whose feedback trains every
expert on its score, called or not (``CascadeSetup.feedback_from_every_expert``). Its requests call the same tier as
the plain cascade's would, but the guards' weights are learned as with full information, so the gap between the two
columns is what learning the guards' weights from the cascade's own calls costs, and the rest of the excess over
full information lies in the requests the cheap tier decides: no rule that chooses among the guards can remove it.

About 4 minutes for the defaults (2 scenarios, 3 seeds, 2 learners, 2 shares) on 2 cores.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from cascade import EXPENSIVE, request_losses  # noqa: E402

from aegis_online.learn import make_learner  # noqa: E402
from aegis_online.learn.escalation import EscalationRule, cascade_learner_name  # noqa: E402
from aegis_online.simulate.runner import CascadeSetup, run_learner  # noqa: E402
from aegis_online.simulate.scenario import load_scenario  # noqa: E402
from aegis_online.simulate.simulation import run_simulation  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default="delayed-feedback,label-noise", help="Comma-separated scenario names.")
    parser.add_argument("--seeds", default="0,1,2", help="Comma-separated seeds.")
    parser.add_argument("--learners", default="default,default+adaptive", help="Comma-separated learners.")
    parser.add_argument("--shares", default="0,0.1", help="Comma-separated hedge shares (0: no hedging).")
    parser.add_argument("--target", type=float, default=0.78, help="Target escalation rate (in expensive calls).")
    parser.add_argument("--steps", type=int, default=None, help="Requests per scenario (default: the scenario's).")
    parser.add_argument(
        "--full-feedback", action="store_true", help="Add the cascade whose feedback trains every expert (a bound)."
    )
    args = parser.parse_args(argv)
    learners, shares = args.learners.split(","), [float(s) for s in args.shares.split(",")]
    console = Console(width=150)
    table = Table(title=f"Cascade at target {args.target:.0%} (in guard calls), loss ratio against full information")
    variants = [(f"hedge {s:g}", EscalationRule(target_rate=args.target, hedge_share=s), False) for s in shares]
    if args.full_feedback:
        variants.append(("feedback from every expert", EscalationRule(target_rate=args.target, hedge_share=0.0), True))
    for column in ("scenario", "seed", "learner", *(f"{label}: saved / loss ratio" for label, _, _ in variants)):
        table.add_column(column, justify="right")
    for name in args.scenarios.split(","):
        scenario = load_scenario(str(ROOT / "simulators" / f"{name}.yaml"))
        for seed in (int(s) for s in args.seeds.split(",")):
            result = run_simulation(scenario, steps=args.steps, learners=learners, seed=seed)
            stream, names = result.stream, list(scenario.expert_names)
            expensive = tuple(names.index(e) for e in EXPENSIVE)
            for learner_name in learners:
                full = result.runs[learner_name]
                full_loss = request_losses(full, stream.truth).sum()
                full_calls = full.queried[0][:, list(expensive)].sum()
                cells = []
                for _, rule, every in variants:
                    learner = make_learner(cascade_learner_name(learner_name, expensive), len(names))
                    setup = CascadeSetup(expensive, rule, feedback_from_every_expert=every)
                    run = run_learner(learner, stream, cascade=setup, seed=seed)
                    saved = 1 - run.queried[0][:, list(expensive)].sum() / full_calls
                    cells.append(f"{saved:.1%} / {request_losses(run, stream.truth).sum() / full_loss:.3f}")
                table.add_row(name, str(seed), learner_name, *cells)
                console.print(f"{name} seed {seed} {learner_name}: {', '.join(cells)}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
