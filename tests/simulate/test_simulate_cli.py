"""The ``simulate`` and ``replay`` commands, registered on a local Typer app as the main CLI will register them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from aegis_online.simulate.cli import replay_command, simulate_command

from .stubs import shifted_files

app = typer.Typer()
app.command("simulate")(simulate_command)
app.command("replay")(replay_command)
runner = CliRunner()


def test_simulate_writes_the_report_summary_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "x"
    result = runner.invoke(
        app, ["simulate", "--scenario", "abrupt", "--steps", "3000", "--seed", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert {"default", "hedge"} <= set(report["learners"])
    assert all("cumulative_loss" in m for m in report["learners"].values())
    assert set(report["experts"]) == {
        "guard-large",
        "guard-small",
        "embedding-head",
        "toxicity-classifier",
        "keyword-rules",
    }
    assert {"best_fixed_loss", "best_switching_loss"} <= set(report["oracles"])
    assert report["bandit"]["exp3-ix"]["call_savings"] == pytest.approx(0.6)
    for name in ("loss.png", "regret.png", "weights.png", "windowed.png"):
        assert (out / name).stat().st_size > 10_000
    assert "## Learners" in (out / "summary.md").read_text()
    assert "default" in result.output and "wrote" in result.output


def test_simulate_is_reproducible(tmp_path: Path) -> None:
    args = ["simulate", "--scenario", "recurring", "--steps", "1500", "--learners", "default,hedge", "--no-plots"]
    for name in ("a", "b"):
        assert runner.invoke(app, [*args, "--out", str(tmp_path / name)]).exit_code == 0
    a, b = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("a", "b"))
    for drop in ("learners",):
        for m in (*a[drop].values(), *b[drop].values()):
            m.pop("seconds")
    assert a == b


def test_simulate_accepts_a_scenario_file_and_replicas(tmp_path: Path) -> None:
    scenario = tmp_path / "mine.yaml"
    scenario.write_text(
        "name: mine\ncategories: [{id: S1, base_rate: 0.2}]\n"
        "experts: [{name: a, quality: 0.9}, {name: b, quality: {steps: [[0, 0.6], [0.5, 0.95]]}}]\n"
    )
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "simulate",
            "--scenario",
            str(scenario),
            "--steps",
            "800",
            "--replicas",
            "3",
            "--learners",
            "default",
            "--out",
            str(out),
            "--no-plots",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["replicas"] == 3 and len(report["learners"]["default"]["per_replica"]["cumulative_loss"]) == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scenario", "nope"], "known scenarios"),
        (["--scenario", "abrupt", "--learners", "default,bogus"], "unknown learner"),
        (["--scenario", "abrupt", "--bandit-always", "nobody"], "unknown experts"),
    ],
)
def test_simulate_refuses_bad_options_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["simulate", *args, "--steps", "200", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert message in result.output


def test_replay_command_on_generic_files_with_a_column_map(tmp_path: Path) -> None:
    pytest.importorskip("profanity_check", reason="the replay command builds the catalog's CPU experts")
    first, second = shifted_files(tmp_path, n=30)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "replay",
            "--data",
            str(first),
            "--data",
            str(second),
            "--format",
            "jsonl",
            "--text-column",
            "text",
            "--label",
            "violence=S1",
            "--label",
            "hate=S8",
            "--experts",
            "profanity-check",
            "--feedback-delay",
            "5",
            "--cache",
            str(tmp_path / "cache.jsonl"),
            "--out",
            str(out),
            "--no-plots",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "replay" and report["feedback"]["delay"] == 5
    assert set(report["learners"]) == {"default", "hedge"} and set(report["experts"]) == {"profanity-check"}
    assert report["categories"] == ["S8"]  # the only labelled category the expert covers
    assert {"best_fixed_loss", "best_switching_loss"} <= set(report["oracles"])


def test_replay_names_a_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["replay", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path)])
    assert result.exit_code == 1 and "no such file" in result.output


def test_replay_command_takes_a_column_map_per_file_and_missing_as_safe(tmp_path: Path) -> None:
    pytest.importorskip("profanity_check", reason="the replay command builds the catalog's CPU experts")
    first, _ = shifted_files(tmp_path, n=30)
    renamed = tmp_path / "renamed.jsonl"  # the second file's columns named differently, and no label on safe rows
    rows = [{"body": f"note {i} grr", "insult": 1 if i % 4 == 0 else None} for i in range(30)]
    renamed.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "replay",
            "--data",
            str(first),
            "--data",
            f"{renamed}::text=body,label=insult:S8",
            "--format",
            "jsonl",
            "--text-column",
            "text",
            "--label",
            "hate=S8",
            "--missing-as-safe",
            "--experts",
            "profanity-check",
            "--learners",
            "default",
            "--cache",
            str(tmp_path / "cache.jsonl"),
            "--out",
            str(out),
            "--no-plots",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in report["segments"]] == ["first", "renamed"]
    assert report["steps"] == 60
    renamed_part = report["learners"]["default"]["per_segment"]["renamed"]
    assert renamed_part["benign_requests"] == 22 and renamed_part["unsafe_requests"] == 8  # missing: safe


def test_replay_names_the_option_of_a_bad_column_map(tmp_path: Path) -> None:
    first, _ = shifted_files(tmp_path, n=5)
    result = runner.invoke(app, ["replay", "--data", f"{first}::text", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--data" in result.output and "KEY=VALUE" in result.output


def test_simulate_cascade_calls_the_expensive_tier_at_its_target_rate_and_reports_it(tmp_path: Path) -> None:
    out = tmp_path / "cascade"
    args = ["simulate", "--scenario", "stationary", "--steps", "3000", "--learners", "default", "--no-plots"]
    args += ["--cascade", "guard-large,guard-small", "--cascade-target", "0.4", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    cascade = report["cascade"]["default+cascade"]
    assert cascade["full_information_learner"] == "default"
    # the budget: expensive calls per request = target x experts_per_escalation (1, the most trusted guard)
    assert cascade["expensive_calls"] / 3000 == pytest.approx(0.4, abs=0.02)
    # exploration calls the other guard on about 5% of escalations, so fewer requests escalate
    assert 0.3 < cascade["escalation_rate"] < cascade["expensive_calls"] / 3000
    assert cascade["expensive_calls_saved"] == pytest.approx(1 - cascade["expensive_calls"] / (2 * 3000))
    # per expert, by tier: the guards' calls add up to the tier's, and the cheap experts answer what they cover
    tiers = cascade["calls_by_tier"]
    assert set(tiers["expensive"]) == {"guard-large", "guard-small"}
    assert sum(tiers["expensive"].values()) == pytest.approx(cascade["expensive_calls"])
    assert min(tiers["expensive"].values()) > 0  # exploration and hedging keep calling the other guard
    assert set(tiers["cheap"]) == set(report["experts_order"]) - set(tiers["expensive"])
    assert min(tiers["cheap"].values()) > 2 * max(tiers["expensive"].values())
    loss = report["learners"]["default+cascade"]["cumulative_loss"]
    assert cascade["loss_ratio"] == pytest.approx(loss / report["learners"]["default"]["cumulative_loss"])
    assert "cascade default+cascade" in result.output and "expensive guard-large" in result.output


def test_simulate_cascade_hedge_share_spends_the_same_calls_on_fewer_escalations(tmp_path: Path) -> None:
    """Hedging (the default share) calls both guards while the weights have not told them apart, so at the same
    budget fewer requests escalate than with ``--cascade-hedge-share 0``, which calls one guard (and explores)."""
    rates = {}
    for share in ("0", "0.1"):
        out = tmp_path / share
        args = ["simulate", "--scenario", "abrupt", "--steps", "2000", "--learners", "default", "--no-plots"]
        args += ["--cascade", "guard-large,guard-small", "--cascade-hedge-share", share, "--out", str(out)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        cascade = json.loads((out / "report.json").read_text())["cascade"]["default+cascade"]
        assert cascade["expensive_calls"] / 2000 == pytest.approx(0.3, abs=0.03)  # the same budget
        rates[share] = cascade["escalation_rate"]
    assert rates["0.1"] < rates["0"]
    result = runner.invoke(app, ["simulate", "--scenario", "abrupt", "--cascade-hedge-share", "2", "--out", "x"])
    assert result.exit_code == 2 and "--cascade-hedge-share" in result.output


@pytest.mark.parametrize(
    ("cascade", "message"),
    [
        ("nobody", "unknown experts"),
        ("guard-large,guard-small,embedding-head,toxicity-classifier,keyword-rules", "cheap"),
    ],
)
def test_simulate_cascade_names_bad_tiers(tmp_path: Path, cascade: str, message: str) -> None:
    args = ["simulate", "--scenario", "stationary", "--steps", "200", "--learners", "default", "--no-plots"]
    result = runner.invoke(app, [*args, "--cascade", cascade, "--out", str(tmp_path)])
    assert result.exit_code == 1 and message in result.output
