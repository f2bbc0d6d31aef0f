"""The results page: ``python -m aegis_online.simulate.results`` writes the tables and figures it promises."""

from __future__ import annotations

import json
from pathlib import Path

from aegis_online.simulate import results
from aegis_online.simulate.cascade_replay_page import cascade_replay_section, load_summary


def test_the_page_has_every_table_and_its_figures(tmp_path: Path) -> None:
    code = results.main(
        [
            "--steps",
            "600",
            "--replicas",
            "1",
            "--scenarios",
            "abrupt,tenants",
            "--skip-replay",
            "--jobs",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    page = (tmp_path / "results.md").read_text()
    for heading in (
        "Loss relative to the best switching sequence",
        "Cumulative loss",
        "Regret against the best fixed expert",
        "Recovery after each drift",
        "Bandit mode",
        "Real traffic replay",
    ):
        assert heading in page
    assert "| default |" in page and "| hedge |" in page
    adaptive_rows = [line for line in page.splitlines() if line.startswith("| default+adaptive |")]
    assert len(adaptive_rows) == 4  # ratio, loss, regret and recovery tables: an extra row in each
    assert "**" not in adaptive_rows[0]  # not in the contest for bold: the oracles over the experts do not bound it
    assert "Its learned thresholds are not used on this part" in page
    assert "**tenants**" in page and "Skipped: not run (--skip-replay)." in page
    for name in ("abrupt", "tenants"):
        assert (tmp_path / f"results-{name}.png").stat().st_size > 10_000
        assert f"(results-{name}.png)" in page
    assert str(tmp_path) not in page  # where it was written is not part of the command shown
    assert "Skipped: no `cascade-replay.json` next to results.md" in page  # the held-out bench did not write one here


def test_the_replay_part_says_why_it_was_skipped(tmp_path: Path) -> None:
    reason = results.replay_real(tmp_path / "no-data-here", tmp_path, None, 0)
    assert isinstance(reason, str) and "absent" in reason
    assert "Skipped: " in "\n".join(results.replay_section(reason))


def test_the_cascade_replay_part_says_which_command_writes_its_figures_when_they_are_absent(tmp_path: Path) -> None:
    section = "\n".join(cascade_replay_section(load_summary(tmp_path)))
    assert "Skipped: no `cascade-replay.json` next to results.md" in section
    assert "--json docs/cascade-replay.json" in section
    (tmp_path / "cascade-replay.json").write_text("{not json")
    assert "could not be read" in "\n".join(cascade_replay_section(load_summary(tmp_path)))


def test_the_cascade_replay_part_summarises_each_learner_over_the_shuffles(tmp_path: Path) -> None:
    def run(seed: int, learner: str, ratio: float) -> dict[str, object]:
        return {
            "seed": seed,
            "learner": learner,
            "requests": 2630,
            "loss_ratio": ratio,
            "escalation_rate": 0.42 + seed / 100,
            "expensive_calls_saved": 0.60 + seed / 100,
            "f1_macro": 0.5,
            "full_information_f1_macro": 0.6,
        }

    summary = {
        "command": "python bench/cascade_replay.py --held-out --seeds 0,1",
        "held_out": True,
        "sets": ["xstest", "harmbench"],
        "categories": ["S8"],
        "feedback_delay": 25,
        "expensive": ["lexical-heads"],
        "target_escalation_rate": 0.78,
        "hedge_share": 0.1,
        "runs": [run(0, "default", 0.99), run(1, "default", 1.02), run(0, "other", 1.0), run(1, "other", 1.0)],
    }
    (tmp_path / "cascade-replay.json").write_text(json.dumps(summary))
    lines = cascade_replay_section(load_summary(tmp_path))
    page = "\n".join(lines)
    assert "refitted without the row's own data set" in page and "2,630 requests" in page
    assert "| default | 1.0050 | 0.990-1.020 | 1 of 2 | 60.0%-61.0% | 42.0%-43.0% | 0.500 / 0.600 |" in lines
    assert "| other | 1.0000 | 1.000 | 2 of 2 |" in page
    assert "| default | 0.990 | 1.020 |" in lines
