"""The results page's section on the cascade over the shared labelled data, from ``bench/cascade_replay.py --json``.

Why from a file the bench writes rather than a run here: the held-out replay refits the trained CPU experts without
each row's own data set (``bench/lodo.py``'s fits, a few minutes) and replays ten shuffles (about 14 minutes on two
cores), so ``make results`` shows what the bench last measured, with the command that measures it again; the bench is
seeded, so rerunning it rewrites the same file.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aegis_online.simulate.report import fmt, pct

#: The file the section reads, next to results.md.
SUMMARY_FILE = "cascade-replay.json"
#: The command that writes it.
COMMAND = "python bench/cascade_replay.py --held-out --seeds 0,1,2,3,4,5,6,7,8,9 --json docs/cascade-replay.json"
#: Issue 16's loss target: at most 1% more loss than calling every expert.
LOSS_TARGET = 1.01


def load_summary(folder: Path) -> Mapping[str, Any] | str:
    """The bench's summary in ``folder``, or why there is none (the reason the page gives)."""
    path = folder / SUMMARY_FILE
    if not path.is_file():
        return f"no `{SUMMARY_FILE}` next to results.md; `{COMMAND}` writes it"
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return f"`{SUMMARY_FILE}` could not be read ({exc})"
    if not isinstance(summary, dict) or not summary.get("runs"):
        return f"`{SUMMARY_FILE}` holds no runs"
    return summary


def _span(values: Sequence[float], show: Any) -> str:
    low, high = min(values), max(values)
    return show(low) if low == high else f"{show(low)}-{show(high)}"


def cascade_replay_section(summary: Mapping[str, Any] | str) -> list[str]:
    """Per learner: the loss ratio against full information over the shuffles (mean, range, runs within the
    target), the expensive calls saved, the escalation rate and F1; then each shuffle's loss ratio."""
    lines = ["### Cascade on the shared data", ""]
    if isinstance(summary, str):
        return [*lines, f"Skipped: {summary}.", ""]
    runs: list[Mapping[str, Any]] = summary["runs"]
    learners = list(dict.fromkeys(r["learner"] for r in runs))
    seeds = list(dict.fromkeys(r["seed"] for r in runs))
    scores = (
        "refitted without the row's own data set (`--held-out`: every score a learner combines is one a model gives "
        "to text it never saw)"
        if summary.get("held_out")
        else "the shipped ones, trained on these rows (in-sample: full information's loss is a floor no deployment "
        "sees)"
    )
    lines += [
        f'`bench/cascade_replay.py` ([cascade.md](cascade.md), "Two stand-ins"): {", ".join(summary["sets"])} '
        f"chained, {len(seeds)} seeded shuffles of {runs[0]['requests']:,} requests, categories "
        f"{', '.join(summary['categories'])}, labels back {summary['feedback_delay']} requests later. The four CPU "
        f"experts, with {', '.join(f'`{e}`' for e in summary['expensive'])} as the expensive tier (stand-ins for the "
        f"GPU guards); the trained experts' scores are {scores}. Target escalation rate "
        f"{pct(summary['target_escalation_rate'])} in expensive calls, `hedge_share` {summary['hedge_share']:g}. "
        f"Each learner as a cascade against the same learner calling every expert. Issue 16's target: >= 60% fewer "
        f"expensive calls for <= 1% more loss. Measured by `{summary['command']}`, which rewrites `{SUMMARY_FILE}`.",
        "",
        f"| learner | loss / full information: mean | range | shuffles within {LOSS_TARGET:g} | "
        "expensive calls saved | escalated | F1, cascade / full (mean) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for learner in learners:
        mine = [r for r in runs if r["learner"] == learner]
        ratios = [r["loss_ratio"] for r in mine]
        within = sum(ratio <= LOSS_TARGET for ratio in ratios)
        f1 = statistics.fmean(r["f1_macro"] for r in mine)
        full_f1 = statistics.fmean(r["full_information_f1_macro"] for r in mine)
        lines.append(
            f"| {learner} | {fmt(statistics.fmean(ratios), 4)} | {_span(ratios, lambda v: fmt(v, 3))} | "
            f"{within} of {len(mine)} | {_span([r['expensive_calls_saved'] for r in mine], pct)} | "
            f"{_span([r['escalation_rate'] for r in mine], pct)} | {fmt(f1, 3)} / {fmt(full_f1, 3)} |"
        )
    lines += [
        "",
        "Loss / full information per shuffle:",
        "",
        "| learner | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---|" + "---:|" * len(seeds),
    ]
    for learner in learners:
        by_seed = {r["seed"]: r["loss_ratio"] for r in runs if r["learner"] == learner}
        lines.append(f"| {learner} | " + " | ".join(fmt(by_seed.get(s), 3) for s in seeds) + " |")
    return [*lines, ""]
