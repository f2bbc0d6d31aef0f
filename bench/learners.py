"""Update throughput of the online learners against River's EWARegressor, measured in the same run.

One *event* is one feedback event: a label for each of the 23 categories of one request, with the stored outputs of
N = 5 experts, i.e. 23 key updates. Cases:

* ``river``: 23 ``river.ensemble.EWARegressor`` models (one per category), each over 5 regressors that just return
  one feature (the stored expert output); one event is 23 ``learn_one`` calls.
* ``single``: one event applied with one ``learn_many`` call on the 23 category rows of one tenant.
* ``batched``: 20,000 events over 100 tenants x 23 categories applied with one ``apply_events`` call
  (key = tenant * 23 + category), i.e. 460,000 key updates.

Every measurement is repeated and the best time kept (machines are noisy). Run ``python bench/learners.py``;
``--quick`` is a smoke run with small sizes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    from aegis_online.learn import apply_events, make_learner
except ModuleNotFoundError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from aegis_online.learn import apply_events, make_learner

N_EXPERTS = 5
N_CATEGORIES = 23
LEARNERS = ("default", "default+adaptive", "hedge", "fixed-share", "adahedge", "adanormalhedge")


@dataclass(frozen=True)
class Sizes:
    river_events: int
    single_events: int
    batched_events: int
    tenants: int
    repeats: int


FULL = Sizes(river_events=2_000, single_events=2_000, batched_events=20_000, tenants=100, repeats=3)
QUICK = Sizes(river_events=100, single_events=100, batched_events=1_000, tenants=10, repeats=3)


def best_time(repeats: int, run: Callable[[], float]) -> float:
    """Best of ``repeats`` calls of ``run``, which returns the seconds it measured itself."""
    return min(run() for _ in range(repeats))


def sci(x: float) -> str:
    """``1.2e5``-style scientific notation."""
    if x <= 0 or not np.isfinite(x):
        return f"{x:g}"
    exponent = int(np.floor(np.log10(x)))
    mantissa = x / 10.0**exponent
    if round(mantissa, 1) >= 10.0:
        mantissa, exponent = mantissa / 10.0, exponent + 1
    return f"{mantissa:.1f}e{exponent}"


def make_events(n_events: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Expert outputs ``(events, categories, experts)`` and labels ``(events, categories)``."""
    rng = np.random.default_rng(seed)
    risk = rng.beta(1.0, 6.0, (n_events, N_CATEGORIES))
    labels = (rng.random((n_events, N_CATEGORIES)) < risk).astype(np.float64)
    noise = rng.normal(0.0, 0.15, (n_events, N_CATEGORIES, N_EXPERTS))
    outputs = np.clip(risk[..., None] + noise, 0.0, 1.0)
    return outputs, labels


def river_seconds(sizes: Sizes) -> float | None:
    """Best time for ``sizes.river_events`` events through 23 EWARegressors; None when River is not installed."""
    try:
        from river import base, ensemble
    except ImportError:
        return None

    class Feature(base.Regressor):
        """Returns one stored expert output; learns nothing."""

        def __init__(self, index: int) -> None:
            self.index = index

        def learn_one(self, x: dict, y: float) -> None:
            return None

        def predict_one(self, x: dict) -> float:
            return x[self.index]

    outputs, labels = make_events(sizes.river_events, seed=1)
    xs = [[dict(enumerate(row)) for row in event.tolist()] for event in outputs]
    ys = labels.tolist()

    def run() -> float:
        models = [ensemble.EWARegressor([Feature(i) for i in range(N_EXPERTS)]) for _ in range(N_CATEGORIES)]
        start = time.perf_counter()
        for x_event, y_event in zip(xs, ys, strict=True):
            for model, x, y in zip(models, x_event, y_event, strict=True):
                model.learn_one(x, y)
        return time.perf_counter() - start

    return best_time(sizes.repeats, run)


def single_seconds(name: str, sizes: Sizes) -> float:
    """Best time for ``sizes.single_events`` events, one ``learn_many`` call on 23 rows each."""
    learner = make_learner(name, N_EXPERTS)
    outputs, labels = make_events(sizes.single_events, seed=2)

    def run() -> float:
        states = learner.init_states(N_CATEGORIES)
        start = time.perf_counter()
        for event_outputs, event_labels in zip(outputs, labels, strict=True):
            states = learner.learn_many(states, event_outputs, event_labels)
        return time.perf_counter() - start

    return best_time(sizes.repeats, run)


def batched_seconds(name: str, sizes: Sizes) -> float:
    """Best time for ``sizes.batched_events`` events of random tenants through one ``apply_events`` call."""
    learner = make_learner(name, N_EXPERTS)
    outputs, labels = make_events(sizes.batched_events, seed=3)
    tenants = np.random.default_rng(4).integers(sizes.tenants, size=sizes.batched_events)
    keys = (tenants[:, None] * N_CATEGORIES + np.arange(N_CATEGORIES)).ravel()
    flat_outputs, flat_labels = outputs.reshape(-1, N_EXPERTS), labels.ravel()

    def run() -> float:
        table = learner.init_states(sizes.tenants * N_CATEGORIES)
        start = time.perf_counter()
        apply_events(learner, table, keys, flat_outputs, flat_labels)
        return time.perf_counter() - start

    return best_time(sizes.repeats, run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run with small sizes (a few seconds)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL

    print(
        f"Learner update throughput: N={N_EXPERTS} experts, {N_CATEGORIES} categories; one event = one feedback "
        f"event = {N_CATEGORIES} key updates; best of {sizes.repeats}{' (quick)' if args.quick else ''}."
    )
    print(
        f"single = {sizes.single_events:,} events, one learn_many call on {N_CATEGORIES} rows each; batched = "
        f"{sizes.batched_events:,} events over {sizes.tenants} tenants x {N_CATEGORIES} categories in one "
        f"apply_events call ({sizes.batched_events * N_CATEGORIES:,} key updates)."
    )
    river = river_seconds(sizes)
    river_rate = None
    if river is None:
        print("river    EWARegressor: not installed, no ratios")
    else:
        river_rate = sizes.river_events / river
        print(
            f"river    EWARegressor: {sci(river_rate)} events/s "
            f"({river / (sizes.river_events * N_CATEGORIES) * 1e6:.2f} us per key update; "
            f"{N_CATEGORIES} models x {N_EXPERTS} feature regressors, {sizes.river_events:,} events)"
        )
    for name in LEARNERS:
        cases = (
            ("single", sizes.single_events, single_seconds(name, sizes)),
            ("batched", sizes.batched_events, batched_seconds(name, sizes)),
        )
        for case, events, seconds in cases:
            rate = events / seconds
            ratio = "" if river_rate is None else f", {rate / river_rate:.1f}x River"
            per_key = seconds / (events * N_CATEGORIES) * 1e6
            print(f"{name:<17}{case + ':':<9}{sci(rate)} events/s{ratio} ({per_key:.2f} us per key update)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
