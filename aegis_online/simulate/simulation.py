"""A scenario, end to end: draw its traffic, run the learners on it, measure, and write the report and plots.

``run_simulation`` returns the stream, the runs and the report without touching the disk; ``write_outputs`` writes
``report.json``, ``summary.md`` and the PNG plots into a folder. The CLI's ``simulate`` command and the results page
both go through here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aegis_online.learn import LEARNERS, cascade_learner_name, known_learner, make_learner
from aegis_online.learn.escalation import EscalationRule
from aegis_online.simulate import plots
from aegis_online.simulate.oracles import OracleReport, compute_oracles
from aegis_online.simulate.report import evaluate, markdown_summary, write_report
from aegis_online.simulate.runner import BanditSetup, CascadeSetup, LearnerRun, run_learner
from aegis_online.simulate.scenario import Scenario
from aegis_online.simulate.stream import Stream
from aegis_online.simulate.synthetic import generate_traffic

#: Learners compared by default: every full-information learner, and Exp3-IX in bandit mode.
DEFAULT_LEARNERS: tuple[str, ...] = ("default", "hedge", "fixed-share", "adahedge", "adanormalhedge", "exp3-ix")


@dataclass
class SimulationResult:
    scenario: Scenario
    stream: Stream
    runs: dict[str, LearnerRun]
    report: dict[str, Any]
    oracles: OracleReport
    files: list[Path] = field(default_factory=list)


def parse_learners(text: str | Sequence[str]) -> list[str]:
    """``"a,b,c"`` (or a list) -> learner names, checked against the known learners, duplicates dropped."""
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if not known_learner(n)]
    if unknown:
        raise ValueError(
            f"unknown learner(s) {unknown}; choose from {', '.join(sorted(LEARNERS))}, optionally with +adaptive"
        )
    if not names:
        raise ValueError("give at least one learner")
    return list(dict.fromkeys(names))


def bandit_setup(scenario: Scenario, k: int | None = None, always: Sequence[str] | None = None) -> BanditSetup:
    """The scenario's bandit settings, with command-line overrides; expert names checked."""
    names = scenario.expert_names
    k = scenario.bandit_k() if k is None else k
    always = list(scenario.bandit.always if always is None else always)
    unknown = sorted(set(always) - set(names))
    if unknown:
        raise ValueError(f"bandit: unknown experts {unknown}; the scenario has {', '.join(names)}")
    if not 1 <= k <= len(names) or len(always) > k:
        raise ValueError(f"bandit: need {len(always)} always-queried expert(s) <= k <= {len(names)}, got k={k}")
    return BanditSetup(k=k, always=tuple(names.index(a) for a in always))


def cascade_setup(
    experts: Sequence[str],
    expensive: Sequence[str],
    target_rate: float,
    reference: str,
    hedge_share: float = EscalationRule.hedge_share,
) -> CascadeSetup:
    """A cascade whose expensive tier is ``expensive`` (names checked against ``experts``; at least one expert must
    stay cheap), its cut learned toward ``target_rate``, hedging at ``hedge_share``, compared with the learner
    ``reference`` calling all."""
    unknown = sorted(set(expensive) - set(experts))
    if unknown:
        raise ValueError(f"cascade: unknown experts {unknown}; the experts are {', '.join(experts)}")
    if not expensive or len(set(expensive)) >= len(experts):
        raise ValueError("cascade: name at least one expensive expert and leave at least one cheap one")
    chosen = tuple(sorted(experts.index(name) for name in set(expensive)))
    rule = EscalationRule(target_rate=target_rate, hedge_share=hedge_share)
    return CascadeSetup(chosen, rule, full_information=reference)


def run_simulation(
    scenario: Scenario,
    *,
    steps: int | None = None,
    seed: int = 0,
    replicas: int = 1,
    learners: Sequence[str] = DEFAULT_LEARNERS,
    bandit_k: int | None = None,
    bandit_always: Sequence[str] | None = None,
    switches: int | None = None,
    cascade: Sequence[str] | None = None,
    cascade_target: float = 0.3,
    cascade_hedge_share: float = EscalationRule.hedge_share,
    progress: Callable[[str, int], None] | None = None,
) -> SimulationResult:
    """Draw the scenario's traffic and run ``learners`` on it (bandit learners with ``k`` experts per request). With
    ``cascade`` (the expensive experts' names), every full-information learner also runs as ``<name>+cascade``."""
    names = parse_learners(learners)
    stream = generate_traffic(scenario, steps=steps, seed=seed, replicas=replicas)
    n = len(scenario.experts)
    runs = {}
    for name in names:
        learner = make_learner(name, n)
        bandit = bandit_setup(scenario, bandit_k, bandit_always) if learner.bandit else None
        tick = None if progress is None else (lambda k, name=name: progress(name, k))
        runs[name] = run_learner(learner, stream, name=name, bandit=bandit, seed=seed, progress=tick)
        if cascade and bandit is None:
            setup = cascade_setup(scenario.expert_names, cascade, cascade_target, name, cascade_hedge_share)
            cascaded = f"{name}+cascade"
            tick = None if progress is None else (lambda k, name=cascaded: progress(name, k))
            fresh = make_learner(cascade_learner_name(name, setup.expensive), n)
            runs[cascaded] = run_learner(fresh, stream, name=cascaded, cascade=setup, seed=seed, progress=tick)
    context = {
        "kind": "simulation",
        "scenario": {
            "name": scenario.name,
            "description": scenario.description,
            "seed": seed,
            "categories": list(scenario.category_ids),
            "experts": list(scenario.expert_names),
            "tenants": [t.name for t in scenario.tenants],
            "feedback": {
                "share": scenario.feedback.share,
                "label_noise": scenario.feedback.label_noise,
                "delay": scenario.feedback.delay.describe(),
            },
            "drift_times": list(scenario.drift_points()),
        },
    }
    per_stream = scenario.oracle_switches() if switches is None else switches
    oracles = compute_oracles(stream, per_stream)
    report = evaluate(stream, runs, switches_per_stream=per_stream, context=context, oracles=oracles)
    return SimulationResult(scenario=scenario, stream=stream, runs=runs, report=report, oracles=oracles)


def write_plots(result: SimulationResult, out: Path, prefix: str = "") -> list[Path]:
    """The four plots of a run, named ``<prefix>loss.png`` etc. in ``out``."""
    return plots.write_run_plots(
        result.stream,
        result.runs,
        result.report,
        result.oracles.per_stream_best_expert,
        out,
        title=result.scenario.name,
        prefix=prefix,
    )


def write_outputs(result: SimulationResult, out: Path, with_plots: bool = True) -> list[Path]:
    """Write ``report.json``, ``summary.md`` and (unless disabled) the plots into ``out``; return the paths."""
    out.mkdir(parents=True, exist_ok=True)
    pngs = write_plots(result, out) if with_plots else []
    result.report["plots"] = [p.name for p in pngs]
    files = [write_report(result.report, out)]
    summary = out / "summary.md"
    summary.write_text(markdown_summary(result.report, [p.name for p in pngs]))
    result.files = [*files, summary, *pngs]
    return result.files
