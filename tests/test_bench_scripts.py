"""The benchmark scripts run (in their quick mode) and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_learners_benchmark_quick_run_reports_default_learner_against_river() -> None:
    pytest.importorskip("river")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "learners.py"), "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    default_lines = [line for line in proc.stdout.splitlines() if line.startswith("default") and "x River" in line]
    assert len(default_lines) == 2, proc.stdout  # single and batched
