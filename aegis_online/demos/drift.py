"""The embedded demo: a drifting stream through the engine with delayed feedback, two tenants, a report and a plot.

Four synthetic experts score four categories; halfway through, the best expert and the worst swap places. Feedback
arrives after a random delay, as moderators' verdicts do. The report shows how the learned weights moved and how
the adaptive ensemble's accuracy compares with each expert and with a uniform average.
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table

from aegis_online.engine import Engine
from aegis_online.policy import TenantPolicy
from aegis_online.schemas import FeedbackEvent, ModerationRequest
from aegis_online.simulate.synthetic import SyntheticExpert, World, constant, swap
from aegis_online.state import MemoryPolicyStore

CATEGORIES = ("S1", "S6", "S8", "S12")
TENANT_POLICIES = (
    TenantPolicy(tenant="default", categories={"profanity": {"action": "flag"}}),
    TenantPolicy(tenant="kids-app", strictness="strict", categories={"violence": {"threshold": 0.35}}),
    TenantPolicy(tenant="gaming-forum", strictness="lenient", categories={"profanity": {"action": "allow"}}),
)


def demo_experts(world: World, steps: int, seed: int) -> list[SyntheticExpert]:
    half = steps // 2
    everywhere = dict.fromkeys(CATEGORIES)
    return [
        SyntheticExpert("guard-a", world, {c: swap(0.93, 0.60, half) for c in everywhere}, seed=seed + 1),
        SyntheticExpert("guard-b", world, {c: swap(0.60, 0.93, half) for c in everywhere}, seed=seed + 2),
        SyntheticExpert("classifier-c", world, {c: constant(0.78) for c in everywhere}, seed=seed + 3),
        SyntheticExpert("profanity-d", world, {"S12": constant(0.88), "S8": constant(0.70)}, seed=seed + 4),
    ]


@dataclass
class DemoReport:
    steps: int
    times: list[int] = field(default_factory=list)
    weights: list[np.ndarray] = field(default_factory=list)
    correct: dict[str, list[float]] = field(default_factory=dict)
    actions: dict[str, dict[str, int]] = field(default_factory=dict)
    feedback_applied: int = 0


async def run_demo(steps: int = 3000, seed: int = 7, max_delay: int = 60) -> tuple[Engine, DemoReport, World]:
    rng = np.random.default_rng(seed)
    world = World.random(CATEGORIES, n_items=steps, base_rate=0.12, seed=seed)
    experts = demo_experts(world, steps, seed)
    engine = Engine(experts, policies=MemoryPolicyStore(TENANT_POLICIES))
    tenants = ["default", "kids-app", "gaming-forum"]
    report = DemoReport(steps=steps)
    pending: list[tuple[int, int, FeedbackEvent]] = []
    for t in track(range(steps), description="moderating with delayed feedback"):
        world.clock = t
        tenant = tenants[t % len(tenants)]
        request = ModerationRequest(messages=world.message(t), tenant=tenant, categories=list(CATEGORIES))
        decision = await engine.moderate(request)
        report.actions.setdefault(tenant, {"allow": 0, "flag": 0, "block": 0})[decision.action] += 1
        truth = world.labels[t]
        _score_accuracy(report, decision, truth, world)
        labels = {c: float(truth[i]) for i, c in enumerate(CATEGORIES)}
        event = FeedbackEvent(request_id=decision.request_id, tenant=tenant, labels=labels, trusted=True)
        heapq.heappush(pending, (t + int(rng.integers(1, max_delay)), t, event))
        while pending and pending[0][0] <= t:
            report.feedback_applied += engine.feedback(heapq.heappop(pending)[2]).applied
        if t % 25 == 0:
            report.times.append(t)
            report.weights.append(np.array(list(engine.weights("default", ["S1"])["S1"].values())))
    return engine, report, world


def _score_accuracy(report: DemoReport, decision, truth: np.ndarray, world: World) -> None:
    for cat_decision in decision.categories:
        c = world.categories.index(cat_decision.category)
        if cat_decision.score is not None:
            report.correct.setdefault("adaptive ensemble", []).append(float((cat_decision.score >= 0.5) == truth[c]))
    uniform: dict[str, list[float]] = {}
    for contribution in decision.experts:
        for cat, score in contribution.scores.items():
            c = world.categories.index(cat)
            report.correct.setdefault(contribution.expert, []).append(float((score >= 0.5) == truth[c]))
            uniform.setdefault(cat, []).append(score)
    for cat, scores in uniform.items():
        c = world.categories.index(cat)
        report.correct.setdefault("uniform average", []).append(float((np.mean(scores) >= 0.5) == truth[c]))


def print_report(engine: Engine, report: DemoReport, console: Console) -> None:
    table = Table(title="Weights of the experts for S1 (violence), default tenant")
    table.add_column("step", justify="right")
    for name in engine.expert_names:
        table.add_column(name, justify="right")
    marks = sorted({0, report.steps // 4, report.steps // 2 - 25, report.steps // 2 + 100, report.steps - 25})
    for t, w in zip(report.times, report.weights, strict=True):
        if t in marks or (t >= marks[-1] and t == report.times[-1]):
            table.add_row(str(t), *(f"{x:.3f}" for x in w))
    console.print(table)
    acc = Table(title="Accuracy per category decision (threshold 0.5), whole stream")
    acc.add_column("who")
    acc.add_column("accuracy", justify="right")
    for who, hits in sorted(report.correct.items(), key=lambda kv: -np.mean(kv[1])):
        acc.add_row(who, f"{np.mean(hits):.3f}")
    console.print(acc)
    actions = Table(title="Decisions per tenant (same traffic, different policies)")
    actions.add_column("tenant")
    for a in ("allow", "flag", "block"):
        actions.add_column(a, justify="right")
    for tenant, counts in report.actions.items():
        actions.add_row(tenant, *(str(counts[a]) for a in ("allow", "flag", "block")))
    console.print(actions)
    console.print(f"feedback events applied: {report.feedback_applied}")


def plot_weights(engine: Engine, report: DemoReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = np.array(report.weights)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, name in enumerate(engine.expert_names):
        ax.plot(report.times, weights[:, i], label=name)
    ax.axvline(report.steps // 2, color="grey", linestyle="--", label="experts swap")
    ax.set(xlabel="request", ylabel="weight (S1, global)", title="Learned expert weights adapt to drift", ylim=(0, 1))
    ax.legend(loc="center right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(out: Path, steps: int = 3000, seed: int = 7) -> DemoReport:
    console = Console()
    engine, report, _ = asyncio.run(run_demo(steps=steps, seed=seed))
    print_report(engine, report, console)
    console.print(f"plot: {plot_weights(engine, report, out / 'weights.png')}")
    return report
