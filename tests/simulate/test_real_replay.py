"""Replay of the shared labelled data through the engine with the real CPU experts (skipped when either is absent).

A slice of two sets, chained: the experts' outputs go to a cache file and a second run reads them back instead of
running the experts; XSTest's safe prompts give the false-positive rate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aegis_online.datasets import shared_data_dir
from aegis_online.experts import Expert
from aegis_online.simulate.cache import ReplayCache
from aegis_online.simulate.replay_run import ReplayConfig, build_catalog_experts, run_replay, write_replay_outputs
from aegis_online.simulate.traffic import DataSpec

pytestmark = pytest.mark.slow
DATA = shared_data_dir()
OPENAI = "openai_moderation/samples-1680.jsonl.gz"
XSTEST = "xstest/xstest_prompts.csv"


@pytest.fixture(scope="module")
def experts() -> list[Expert]:
    if DATA is None or not (DATA / OPENAI).is_file() or not (DATA / XSTEST).is_file():
        pytest.skip("shared labelled data absent (../shared/data or AEGIS_DATA_DIR): nothing to replay")
    pytest.importorskip("profanity_check", reason="the CPU experts need the 'experts' extra")
    pytest.importorskip("sentence_transformers", reason="the CPU experts need the 'experts' extra")
    try:
        return build_catalog_experts(["profanity-check", "minilm-embedding"])  # the set asserted below
    except RuntimeError as error:  # the MiniLM weights package is missing
        pytest.skip(str(error))


def test_cpu_experts_replay_the_shared_data_and_the_cache_spares_the_second_run(
    experts: list[Expert], tmp_path: Path
) -> None:
    assert DATA is not None
    config = ReplayConfig(
        data=[DataSpec(DATA / OPENAI, limit=120), DataSpec(DATA / XSTEST, limit=80)],
        learners=["default", "hedge"],
        feedback_delay=10,
        seed=1,
    )
    path = tmp_path / "cache.jsonl"
    first = run_replay(config, experts, ReplayCache(path))
    lines = path.read_text().splitlines()
    assert len(lines) == 2 * 200  # two experts x 200 texts
    report = first.report
    assert set(report["experts"]) == {"profanity-check", "minilm-embedding"}
    assert [s["name"] for s in report["segments"]] == ["samples-1680", "xstest_prompts"]
    xstest = report["learners"]["default"]["per_segment"]["xstest_prompts"]
    assert 0.0 <= xstest["false_positive_rate"] <= 1.0 and xstest["benign_requests"] > 20
    assert "S8" in report["learners"]["default"]["categories"]
    files = write_replay_outputs(first, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["kind"] == "replay"
    assert any(p.name == "weights.png" for p in files)

    second = run_replay(config, experts, ReplayCache(path))
    assert len(path.read_text().splitlines()) == len(lines)  # nothing recomputed, nothing appended
    assert second.report["learners"]["default"]["cumulative_loss"] == report["learners"]["default"]["cumulative_loss"]
