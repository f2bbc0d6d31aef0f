"""Synthetic experts whose quality per category changes over time, over a world of labelled items.

Two forms. ``generate_traffic`` draws a whole ``Scenario`` at once as arrays (a ``Stream``): what the simulator and
its claims run on, fast enough for 20,000 requests in milliseconds. ``World`` and ``SyntheticExpert`` are the same
idea as real ``Expert`` objects, for driving the engine request by request (the demo): an item is a conversation
whose text names its id (``item-<n>``); the world knows each item's true labels, and a synthetic expert answers from
them with its current accuracy and calibration while the driver advances ``world.clock``.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtri

from aegis_online.experts import Expert, ExpertInput
from aegis_online.schemas import ExpertOutput, Message
from aegis_online.simulate.scenario import Scenario
from aegis_online.simulate.stream import NO_FEEDBACK, Segment, Stream

#: accuracy of an expert on a category at time t, in [0, 1] (0.5 is a coin).
Quality = Callable[[int], float]
_ITEM = re.compile(r"item-(\d+)")


@dataclass
class World:
    """Labelled items and a clock. ``labels[i, c]`` is 1 when item ``i`` is unsafe in ``categories[c]``."""

    categories: tuple[str, ...]
    labels: np.ndarray
    clock: int = 0

    @classmethod
    def random(cls, categories: Sequence[str], n_items: int, base_rate: float, seed: int) -> World:
        rng = np.random.default_rng(seed)
        return cls(tuple(categories), (rng.random((n_items, len(categories))) < base_rate).astype(np.float64))

    def message(self, item: int) -> list[Message]:
        return [Message(role="user", content=f"synthetic conversation item-{item}")]

    def item_of(self, text: str) -> int:
        found = _ITEM.search(text)
        if found is None:
            raise ValueError(f"not a synthetic item: {text[:40]!r}")
        return int(found.group(1))


@dataclass
class SyntheticExpert(Expert):
    """Right with probability ``quality[c](t)``; when right it says ``confidence``, when wrong ``1 - confidence``."""

    name: str
    world: World
    quality: dict[str, Quality]
    confidence: float = 0.85
    seed: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.categories = frozenset(self.quality)
        self._rng = np.random.default_rng(self.seed)

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        return [self.score_item(self.world.item_of(x.checked_text), [c.id for c in x.categories]) for x in batch]

    def score_item(self, item: int, categories: Sequence[str]) -> ExpertOutput:
        scores = {}
        t = self.world.clock
        for cat in categories:
            truth = self.world.labels[item, self.world.categories.index(cat)]
            right = self._rng.random() < self.quality[cat](t)
            says_unsafe = truth if right else 1.0 - truth
            jitter = self._rng.uniform(-0.1, 0.1)
            scores[cat] = float(np.clip(self.confidence if says_unsafe else 1.0 - self.confidence, 0, 1) + jitter)
            scores[cat] = min(max(scores[cat], 0.0), 1.0)
        return ExpertOutput(expert=self.name, scores=scores, latency_ms=0.1)


def constant(accuracy: float) -> Quality:
    return lambda t: accuracy


def swap(before: float, after: float, at: int) -> Quality:
    """Abrupt change of accuracy at time ``at``."""
    return lambda t: before if t < at else after


# -- scenario traffic, generated as arrays ---------------------------------------------------------------------
#: Request classes of one (request, category).
SAFE, BORDERLINE, UNSAFE = 0, 1, 2


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def _phases(drifts: Sequence[int], steps: int) -> tuple[Segment, ...]:
    edges = [0, *drifts, steps]
    return tuple(Segment(f"phase {i + 1}", a, b) for i, (a, b) in enumerate(itertools.pairwise(edges)) if b > a)


def generate_traffic(scenario: Scenario, steps: int | None = None, seed: int = 0, replicas: int = 1) -> Stream:
    """Draw a scenario's requests, labels, expert outputs and feedback for ``replicas`` independent seeds.

    Replica ``r`` draws from ``default_rng([seed, r, ...])``, so replica 0 of any run with ``seed`` is the same
    stream, and each expert and the feedback have their own generator: adding an expert changes no other draw.
    Vectorised over requests: 20,000 requests x 5 experts take milliseconds.
    """
    steps = steps or scenario.steps
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    cats = scenario.category_ids
    c_index = {c: j for j, c in enumerate(cats)}
    n_cat, n_exp, n_ten = len(cats), len(scenario.experts), len(scenario.tenants)
    shares = np.array([t.share for t in scenario.tenants])
    borderline_unsafe = np.array([t.borderline_unsafe for t in scenario.tenants])
    base = np.array([c.base_rate for c in scenario.categories])
    border = np.array([c.borderline_rate for c in scenario.categories])
    starts = np.array([int(np.ceil(c.appears_at * steps)) for c in scenario.categories])
    active = np.arange(steps)[:, None] >= starts[None, :]  # (T, C)
    jb = scenario.jailbreak
    shared, own = np.sqrt(scenario.error_correlation), np.sqrt(1.0 - scenario.error_correlation)
    jb_cats = np.array([c_index[c] for c in (jb.categories if jb and jb.categories else cats)])

    outputs = np.full((replicas, steps, n_cat, n_exp), np.nan)
    truth = np.full((replicas, steps, n_cat), np.nan)
    feedback = np.full((replicas, steps, n_cat), np.nan)
    arrival = np.full((replicas, steps), NO_FEEDBACK, dtype=np.int64)
    tenant = np.zeros((replicas, steps), dtype=np.int64)
    jailbreak = np.zeros((replicas, steps), dtype=bool)
    for r in range(replicas):
        world = np.random.default_rng([seed, r, 0])
        tenant[r] = world.choice(n_ten, size=steps, p=shares / shares.sum())
        u = world.random((steps, n_cat))
        kind = np.where(u < base, UNSAFE, np.where(u < base + border, BORDERLINE, SAFE))
        attacked = np.zeros((steps, n_cat), dtype=bool)
        if jb is not None:
            window = (np.arange(steps) >= jb.start * steps) & (np.arange(steps) < jb.end * steps)
            hit = window & (world.random(steps) < jb.share)
            target = jb_cats[world.integers(0, len(jb_cats), steps)]
            rows = np.flatnonzero(hit & active[np.arange(steps), target])
            attacked[rows, target[rows]] = True
            kind[attacked] = UNSAFE
            jailbreak[r] = attacked.any(axis=1)
        hardness = world.standard_normal((steps, n_cat))
        strict = borderline_unsafe[tenant[r]][:, None]
        labels = np.where(kind == UNSAFE, 1.0, np.where(kind == BORDERLINE, strict.astype(np.float64), 0.0))
        truth[r] = np.where(active, labels, np.nan)
        clear_truth = kind == UNSAFE
        for i, expert in enumerate(scenario.experts):
            rng = np.random.default_rng([seed, r, 1, i])
            confidence = _logit(expert.confidence.values(steps))[:, None]
            bias = expert.bias.values(steps)[:, None]
            covered = np.zeros(n_cat, dtype=bool)
            covered[[c_index[c] for c in scenario.covers(expert)]] = True
            quality = np.stack(
                [expert.quality_for(c).values(steps) if covered[j] else np.zeros(steps) for j, c in enumerate(cats)],
                axis=1,
            )
            if expert.jailbreak_quality is not None:
                fooled = np.broadcast_to(expert.jailbreak_quality.values(steps)[:, None], quality.shape)
                quality = np.where(attacked, fooled, quality)
            # Gaussian copula: each expert is right with exactly its quality, and the shared ``hardness`` makes
            # the experts wrong on the same requests as often as ``error_correlation`` says.
            z = shared * hardness + own * rng.standard_normal((steps, n_cat))
            right = z < ndtri(np.clip(quality, 1e-12, 1 - 1e-12))
            says = np.where(right, clear_truth, ~clear_truth)
            says = np.where(kind == BORDERLINE, z < ndtri(np.clip(expert.borderline, 1e-12, 1 - 1e-12)), says)
            noise = expert.noise * rng.standard_normal((steps, n_cat))
            p = _sigmoid(np.where(says, confidence, -confidence) + bias + noise)
            outputs[r, :, :, i] = np.where(active & covered[None, :], p, np.nan)
        fb = np.random.default_rng([seed, r, 2])
        gets = fb.random(steps) < scenario.feedback.share
        delay = scenario.feedback.delay.sample(fb, steps)
        arrival[r] = np.where(gets, np.arange(steps) + 1 + delay, NO_FEEDBACK)
        flip = fb.random((steps, n_cat)) < scenario.feedback.label_noise
        noisy = np.where(flip, 1.0 - truth[r], truth[r])
        feedback[r] = np.where(gets[:, None], noisy, np.nan)

    evaluated = np.isfinite(truth)
    unsafe = np.where(evaluated.any(axis=2), np.nanmax(np.where(evaluated, truth, -np.inf), axis=2).clip(0.0), np.nan)
    policies = [t.policy() for t in scenario.tenants]
    thresholds = np.array([[p.threshold_for(c) for c in cats] for p in policies])
    drifts = tuple(sorted({round(d * steps) for d in scenario.drift_points()} - {0, steps}))
    return Stream(
        experts=scenario.expert_names,
        categories=cats,
        tenants=tuple(t.name for t in scenario.tenants),
        outputs=outputs,
        truth=truth,
        unsafe=unsafe,
        feedback=feedback,
        arrival=arrival,
        tenant=tenant,
        thresholds=thresholds,
        personalise_after=np.array([t.personalise_after for t in scenario.tenants], dtype=np.int64),
        drifts=drifts,
        segments=_phases(drifts, steps),
        jailbreak=jailbreak if jb is not None else None,
        seeds=tuple(seed * 1000 + r for r in range(replicas)),
    )
