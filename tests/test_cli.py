"""The command line: commands are listed, the demo runs end to end, policy files are checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from aegis_online.cli import app

runner = CliRunner()


def _run_module(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m ARGS`` in a fresh interpreter: what a shell user gets, module import order included."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def _commands(help_text: str) -> set[str]:
    """The first word of each row of typer's help panels: command names (and options)."""
    return set(re.findall(r"^│ (\S+)\s", help_text, flags=re.MULTILINE))


def test_help_lists_the_commands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "policy", "experts"):
        assert command in result.output


def test_experts_help_lists_list_score_and_train_head() -> None:
    # every experts command is registered by the time `python -m aegis_online.cli` runs the app
    result = _run_module("aegis_online.cli", "experts", "--help")
    assert result.returncode == 0, result.stderr
    assert {"list", "score", "train-head"} <= _commands(result.stdout), result.stdout


def test_python_dash_m_aegis_online_runs_the_command_line() -> None:
    result = _run_module("aegis_online", "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: aegis-online" in result.stdout
    commands = {"demo", "policy", "experts", "serve", "serve-demo", "simulate", "replay", "feedback-worker", "chart"}
    assert commands <= _commands(result.stdout), result.stdout


def test_demo_adapts_to_the_swap_and_writes_a_plot(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--steps", "600", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "weights.png").stat().st_size > 10_000
    assert "adaptive ensemble" in result.output and "feedback events applied" in result.output


def test_demo_report_shows_the_ensemble_beating_every_expert() -> None:
    import asyncio

    import numpy as np

    from aegis_online.demos.drift import run_demo

    engine, report, _ = asyncio.run(run_demo(steps=1200, seed=3))
    accuracy = {who: float(np.mean(hits)) for who, hits in report.correct.items()}
    best_single = max(v for k, v in accuracy.items() if k in engine.expert_names)
    assert accuracy["adaptive ensemble"] > best_single
    assert accuracy["adaptive ensemble"] > accuracy["uniform average"]
    s1 = dict(zip(engine.expert_names, report.weights[-1], strict=True))
    assert s1["guard-b"] == max(s1.values())  # after the swap the formerly weak guard leads


def test_policy_check_prints_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "kids.yaml"
    path.write_text("tenant: kids\nstrictness: strict\ncategories:\n  violence: {threshold: 0.3}\n")
    result = runner.invoke(app, ["policy", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "S1 violence" in result.output


def test_policy_check_names_the_bad_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("tenant: kids\ncategories:\n  violence: {threshold: 7}\n")
    result = runner.invoke(app, ["policy", "check", str(path)])
    assert result.exit_code == 1
    assert "categories.S1.threshold" in result.output or "categories.violence.threshold" in result.output


def test_experts_list_shows_the_catalog_and_the_embedded_default_set() -> None:
    result = runner.invoke(app, ["experts", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "llama-guard-3-8b" in result.output and "profanity-check" in result.output


def test_experts_score_runs_the_cpu_experts_on_a_prompt() -> None:
    result = runner.invoke(app, ["experts", "score", "you are a worthless idiot"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "S12 profanity" in line)
    scores = [float(cell) for cell in row.replace("│", " ").split()[2:]]
    assert len(scores) >= 2 and max(scores) > 0.5  # one cell per CPU expert that scores S12


def test_experts_score_rejects_an_unknown_expert() -> None:
    result = runner.invoke(app, ["experts", "score", "hello", "--expert", "no-such-expert"])
    assert result.exit_code == 1 and "no-such-expert" in result.output
