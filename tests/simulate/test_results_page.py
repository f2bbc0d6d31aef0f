"""The results page: ``python -m aegis_online.simulate.results`` writes the tables and figures it promises."""

from __future__ import annotations

from pathlib import Path

from aegis_online.simulate import results


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


def test_the_replay_part_says_why_it_was_skipped(tmp_path: Path) -> None:
    reason = results.replay_real(tmp_path / "no-data-here", tmp_path, None, 0)
    assert isinstance(reason, str) and "absent" in reason
    assert "Skipped: " in "\n".join(results.replay_section(reason))
