"""The benchmark scripts run (in their quick mode) and print what they promise."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aegis_online.simulate.cascade_replay_page import cascade_replay_section, load_summary

pytestmark = pytest.mark.slow  # each runs a benchmark script in a process of its own: tens of seconds

ROOT = Path(__file__).resolve().parent.parent


def run_bench(script: str, *args: str, timeout: int = 300) -> str:
    """Run ``bench/<script>`` with ``args`` from the repository root; its stdout, once it has exited 0."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_learners_benchmark_quick_run_reports_default_learner_against_river() -> None:
    pytest.importorskip("river")
    stdout = run_bench("learners.py", "--quick")
    for name in ("default ", "default+adaptive "):
        lines = [line for line in stdout.splitlines() if line.startswith(name) and "x River" in line]
        assert len(lines) == 2, stdout  # single and batched


def test_gpu_guard_benchmark_tiny_cpu_run_reports_batches_and_sharing_ratio(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path / "gpu_guard.json"
    options = ["--tiny", "--device", "cpu", "--sharing", "processes", "--json", str(out)]
    stdout = run_bench("gpu_guard.py", *options)
    lines = stdout.splitlines()
    assert any("prompt tok/s" in line and "of peak" in line for line in lines), stdout
    for batch in (1, 4):  # one table row per batch size: batch | calls | req/s | ...
        assert any(line.split("|")[0].strip() == str(batch) for line in lines if line.count("|") == 9), stdout
    assert any("ensemble/slowest" in line for line in lines), stdout
    figures = json.loads(out.read_text())
    assert [row["batch"] for row in figures["single"]] == [1, 4]
    assert all(row["requests_per_s"] > 0 and row["p99_ms"] >= row["p50_ms"] for row in figures["single"])
    sharing = figures["sharing"]
    assert sharing["mode"] == "processes" and sharing["experts"] == 2
    (together,) = sharing["levels"][0]["together"]
    assert together["experts"] == 2 and together["ensemble_ratio"] > 0


@pytest.mark.serial  # it starts Ray Serve
def test_overload_benchmark_quick_run_reports_goodput_under_overload() -> None:
    stdout = run_bench("overload.py", "--quick", timeout=180)
    for multiple in ("2x", "4x"):
        assert re.search(rf"^goodput at {multiple} overload: \d+\.\d\d of peak$", stdout, re.M), stdout
    assert re.search(r"^p99 of admitted requests at 4x: \d+ ms, (within|over) the \d+ ms deadline$", stdout, re.M)
    assert "without admission control at 4x" in stdout


def test_proxy_benchmark_quick_run_reports_the_issue_figures(tmp_path: Path) -> None:
    out = tmp_path / "proxy.json"
    stdout = run_bench("proxy.py", "--quick", "--json", str(out))
    for key in (
        "stream_first_ttft_over_direct_plus_prompt_check_ms",
        "stream_first_tokens_per_s_ratio",
        "check_first_added_latency_ms_p50",
        "check_first_added_latency_ms_p99",
        "harmful_cut_within_one_window",
        "benign_byte_for_byte",
    ):
        assert re.search(rf"^{key}: ", stdout, re.M), stdout
    figures = json.loads(out.read_text())
    for mode in ("stream_first", "check_first"):
        assert figures[mode]["benign_byte_for_byte"] == 1.0  # benign streams pass unchanged
        assert figures[mode]["harmful_streams"] == 3 and figures[mode]["tokens_per_s_ratio"] > 0
    # stream_first relays tokens as they come: never much faster than the upstream (check_first releases bursts)
    assert figures["stream_first"]["tokens_per_s_ratio"] <= 1.5
    assert figures["check_first"]["windows"] > 0


def test_cascade_benchmark_reports_every_scenario_with_both_guards() -> None:
    stdout = run_bench("cascade.py", "--steps", "400", "--targets", "0.4")
    rows = [line for line in stdout.splitlines() if "│" in line and "40%" in line]
    assert len(rows) == 8, stdout  # the shipped scenarios with guard-large and guard-small


def test_cascade_replay_benchmark_splits_the_excess_loss_on_a_few_shared_rows() -> None:
    stdout = run_bench("cascade_replay.py", "--limit", "40", "--no-cache")
    assert "160 requests" in stdout, stdout  # 40 rows from each of the four files
    rows = [line for line in stdout.splitlines() if line.startswith("│") and "default" in line]
    assert [row.split("│")[2].strip() for row in rows] == ["default", "default+adaptive"], stdout
    assert "highest cheap score:" in stdout


def test_cascade_replay_benchmark_held_out_scores_every_replayed_row_with_experts_fitted_without_its_set(
    tmp_path: Path,
) -> None:
    """``--held-out`` refits the trained experts without each replayed set (here on 40 rows a set): every replayed
    row must get a score from each expert, or the figures would mix held-out and missing scores."""
    summary_path = tmp_path / "cascade-replay.json"
    stdout = run_bench(
        "cascade_replay.py",
        "--held-out",
        "--limit",
        "40",
        "--embedding-cache",
        str(tmp_path),
        "--json",
        str(summary_path),
    )
    assert "trained experts: held-out" in stdout, stdout
    unscored = re.search(r"160 requests; rows each expert scored none of: (\{.*?\})", stdout.replace("\n", " "))
    assert unscored is not None, stdout
    counts = [int(n) for n in re.findall(r": (\d+)", unscored.group(1))]
    assert len(counts) == 4 and not any(counts), stdout
    assert list(tmp_path.glob("minilm-*.npy")), "the embeddings were not cached"
    # --json keeps each run's figures, as printed, for the results page (aegis_online.simulate.cascade_replay_page)
    summary = json.loads(summary_path.read_text())
    assert summary["held_out"] is True and [r["learner"] for r in summary["runs"]] == ["default", "default+adaptive"]
    printed = [line.split(" | ") for line in stdout.splitlines() if line.startswith("0 | default")]
    assert [(cells[1], cells[2]) for cells in printed] == [
        (r["learner"], f"{r['loss_ratio']:.3f}") for r in summary["runs"]
    ], stdout
    assert all(r["requests"] == 160 and r["unsafe_decided_cheap"] <= r["unsafe"] for r in summary["runs"])
    section = "\n".join(cascade_replay_section(load_summary(tmp_path)))
    assert f"| default | {summary['runs'][0]['loss_ratio']:.4f} |" in section, section


def test_least_suspicious_unsafe_counts_unsafe_requests_among_the_lowest_cheap_scores() -> None:
    module = load_bench("cascade_replay.py")
    cheap = np.array([[[0.1, 0.9]], [[0.2, 0.1]], [[0.8, 0.7]], [[np.nan, 0.05]]])  # (T=4, C=1, M=2)
    unsafe = np.array([False, True, True, False])
    counts = module.least_suspicious_unsafe(cheap, ["a", "b"], unsafe, 2)
    # lowest two by the highest score: requests 3 (0.05) and 1 (0.2); by a: 3 (NaN as 0) and 0; by b: 3 and 1
    assert counts == {"highest cheap score": 1, "sum of cheap scores": 1, "a": 0, "b": 1}


def test_cascade_latency_benchmark_compares_each_tier_with_its_baseline_on_the_same_requests() -> None:
    stdout = run_bench("cascade_latency.py", "--requests", "30", "--warm-up", "60")
    rows = {
        cells[1]: cells
        for line in stdout.splitlines()
        if line.startswith("│") and (cells := [c.strip() for c in line.split("│")])
    }
    assert rows["cheap-decided"][5] == "cheap only" and rows["escalated"][5] == "full", stdout
    assert int(rows["cheap-decided"][2]) + int(rows["escalated"][2]) == 30, stdout
    assert "ratio cheap-decided / cheap only (same requests): p50" in stdout


def test_cascade_hedging_benchmark_compares_hedge_shares_at_one_budget() -> None:
    args = ["--steps", "300", "--seeds", "0", "--scenarios", "abrupt", "--learners", "default", "--shares", "0,0.05"]
    args.append("--full-feedback")
    stdout = run_bench("cascade_hedging.py", *args)
    row = next(line for line in stdout.splitlines() if line.startswith("│") and "abrupt" in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[:3] == ["abrupt", "0", "default"] and len(cells) == 6, stdout
    for cell in cells[3:]:  # "saved% / loss ratio", both shares and the bound at about one budget (1 - 0.78 / 2)
        saved, ratio = cell.split(" / ")
        assert 50.0 < float(saved.rstrip("%")) < 70.0 and float(ratio) > 0, cell


@pytest.mark.parametrize("placement", ["replica", "auto"])
def test_serving_benchmark_serves_a_guest_expert_in_its_hosts_replica(placement: str) -> None:
    """Options of its own would give minilm-heads a second MiniLM replica, embedding every text twice (the bench's
    Ray figures fell to a quarter of the service's before this)."""
    from aegis_online.rayserve.deployments import placements

    module = load_bench("serving.py")
    where = {p.spec.name: (p.where, p.host) for p in placements(module.served_config(placement))}
    assert where["minilm-heads"] == ("guest", "minilm-embedding")
    assert where["minilm-embedding"] == ("replica", None)
    assert where["profanity-check"][0] == ("replica" if placement == "replica" else "ingress")


def test_serving_benchmark_says_whether_the_replica_batched_and_why() -> None:
    describe = load_bench("serving.py").describe_batching
    unknown = {"items": 10, "batches": 4, "fixed_ms": None, "per_call_ms": None, "batch_pays": True}
    assert describe(unknown) == "10 calls in 4 batches (mean 2.50); batch cost not fitted yet: batching"
    singles = {"items": 90, "batches": 80, "fixed_ms": -12.0, "per_call_ms": 31.5, "batch_pays": False}
    assert describe(singles).endswith("fitted as -12.0 ms + 31.5 ms x calls: one call at a time")


def load_bench(script: str) -> Any:
    """``bench/<script>`` imported as a module (its functions, without running it)."""
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), ROOT / "bench" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
