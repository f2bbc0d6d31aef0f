"""Replay through the in-process engine: chaining, feedback timing, the cache, bandit mode and the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aegis_online.datasets import LabelledText
from aegis_online.simulate.cache import ReplayCache, expert_fingerprint
from aegis_online.simulate.replay import feedback_event
from aegis_online.simulate.replay_run import ReplayConfig, run_replay, write_replay_outputs
from aegis_online.simulate.traffic import DataSpec, chain

from .stubs import COLUMNS, experts, shifted_files


def _config(folder: Path, **extra: object) -> ReplayConfig:
    first, second = shifted_files(folder)
    data = [DataSpec(first, "jsonl", COLUMNS), DataSpec(second, "jsonl", COLUMNS)]
    return ReplayConfig(data=data, **extra)  # type: ignore[arg-type]


def test_chaining_keeps_the_files_in_order_as_segments(tmp_path: Path) -> None:
    config = _config(tmp_path)
    traffic = chain(config.data, seed=1)
    assert [(s.name, s.start, s.end) for s in traffic.segments] == [("first", 0, 60), ("second", 60, 120)]
    assert all("message" in r.text for r in traffic.rows[:60]) and all("note" in r.text for r in traffic.rows[60:])
    assert [r.text for r in chain(config.data, seed=1).rows] == [r.text for r in traffic.rows]  # seeded shuffle
    limited = chain([DataSpec(config.data[0].path, "jsonl", COLUMNS, limit=7)], shuffle=False)
    assert [r.text for r in limited.rows] == [f"message {i} {'zap' if i % 3 == 0 else 'calm'}" for i in range(7)]


def test_feedback_carries_labels_or_a_verdict() -> None:
    labelled = LabelledText("x", labels={"S1": 1}, unsafe=True)
    assert feedback_event(labelled, ["S1", "S8"], "r1", "t").labels == {"S1": 1.0}
    assert feedback_event(LabelledText("x", unsafe=False), ["S1", "S8"], "r1", "t").labels == {"S1": 0.0, "S8": 0.0}
    assert feedback_event(LabelledText("x", unsafe=True), ["S1"], "r1", "t").label == "unsafe"
    assert feedback_event(LabelledText("x"), ["S1"], "r1", "t") is None


def test_replay_writes_the_report_with_learners_experts_and_oracles(tmp_path: Path) -> None:
    result = run_replay(_config(tmp_path, learners=["default", "hedge"]), experts(), ReplayCache(None))
    report = result.report
    assert set(report["learners"]) == {"default", "hedge"}
    assert set(report["experts"]) == {"red", "blue"}
    assert {"best_fixed_loss", "best_switching_loss"} <= set(report["oracles"])
    assert report["categories"] == ["S1", "S8"]
    assert [s["name"] for s in report["segments"]] == ["first", "second"]
    feedback = {"sent": 120, "applied": 120, "queued": 0, "duplicate": 0, "rejected": {}}
    assert report["learners"]["default"]["feedback"] == feedback
    # after the shift blue is the right expert for S1: the adaptive ensemble moves its weight there
    final = report["learners"]["default"]["weights"]["final"]["global"]["S1"]
    assert final["blue"] > final["red"]
    files = write_replay_outputs(result, tmp_path / "out")
    assert {p.name for p in files} >= {"report.json", "summary.md", "loss.png", "weights.png"}
    assert "Per segment" in (tmp_path / "out" / "summary.md").read_text()


def test_feedback_that_never_arrives_in_time_leaves_the_uniform_average(tmp_path: Path) -> None:
    result = run_replay(_config(tmp_path, feedback_delay=10_000), experts(), ReplayCache(None))
    run = result.runs["default"]
    uniform = np.nanmean(result.stream.outputs[0], axis=2)
    np.testing.assert_allclose(run.predictions[0], uniform, atol=1e-12)
    assert result.report["learners"]["default"]["feedback"]["applied"] == 120  # delivered at the end all the same


def test_delayed_feedback_slows_the_shift_down(tmp_path: Path) -> None:
    fast = run_replay(_config(tmp_path, learners=["default"]), experts(), ReplayCache(None))
    slow = run_replay(_config(tmp_path, learners=["default"], feedback_delay=30), experts(), ReplayCache(None))
    loss = [r.report["learners"]["default"]["cumulative_loss"] for r in (fast, slow)]
    assert loss[0] < loss[1]


def test_the_cache_means_experts_run_once(tmp_path: Path) -> None:
    config = _config(tmp_path, learners=["default"])
    path = tmp_path / "cache.jsonl"
    first_experts = experts()
    first = run_replay(config, first_experts, ReplayCache(path))
    assert [e.calls for e in first_experts] == [120, 120]
    again = experts()
    second = run_replay(config, again, ReplayCache(path))
    assert [e.calls for e in again] == [0, 0]
    np.testing.assert_array_equal(first.stream.outputs, second.stream.outputs)
    assert (
        first.report["learners"]["default"]["cumulative_loss"]
        == second.report["learners"]["default"]["cumulative_loss"]
    )


def test_the_cache_survives_a_cut_line_and_keys_on_the_expert(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    red, blue = experts()
    cache = ReplayCache(path)
    cache.put(expert_fingerprint(red), "hello", "red", {"S1": 0.25})
    cache.flush()
    with path.open("a") as handle:
        handle.write('{"k": "abc", "s": {"S1"')  # an interrupted write
    reread = ReplayCache(path)
    assert reread.skipped_lines == 1
    assert reread.get(expert_fingerprint(red), "hello") == {"S1": 0.25}
    assert reread.get(expert_fingerprint(blue), "hello") is None
    assert expert_fingerprint(red) != expert_fingerprint(blue)


def test_bandit_replay_queries_fewer_experts(tmp_path: Path) -> None:
    config = _config(tmp_path, learners=["default", "exp3-ix"], bandit_k=1)
    report = run_replay(config, experts(), ReplayCache(None)).report
    assert report["learners"]["exp3-ix"]["expert_calls"] == 120
    assert report["bandit"]["exp3-ix"]["call_savings"] == pytest.approx(0.5)
    assert report["bandit"]["exp3-ix"]["loss_ratio_to_full_information"] > 0


def test_unknown_learner_or_category_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown learner"):
        run_replay(_config(tmp_path, learners=["nope"]), experts(), ReplayCache(None))
    with pytest.raises(ValueError, match="unknown categories"):
        run_replay(_config(tmp_path, categories=["S99"]), experts(), ReplayCache(None))


def test_an_expert_that_does_not_cover_a_category_is_left_out_of_its_weights(tmp_path: Path) -> None:
    from .stubs import KeywordExpert

    only_s8 = KeywordExpert("green", {"S8": ["grr"]})
    result = run_replay(_config(tmp_path, learners=["default"]), [*experts(), only_s8], ReplayCache(None))
    weights = result.report["learners"]["default"]["weights"]
    final = weights["final"]["global"]
    assert set(final["S1"]) == {"red", "blue"} and set(final["S8"]) == {"red", "blue", "green"}
    assert sum(final["S1"].values()) == pytest.approx(1.0)  # renormalised over the experts that score S1
    green = result.stream.experts.index("green")
    assert all(np.isnan(sample[green]) for sample in weights["by_category"]["S1"])  # null in report.json, not 0.5
    assert all(np.isfinite(sample[green]) for sample in weights["by_category"]["S8"])


def test_cascade_replay_calls_the_expensive_expert_only_when_escalated(tmp_path: Path) -> None:
    config = _config(tmp_path, learners=["default"], cascade=["blue"], cascade_target=0.5)
    result = run_replay(config, experts(), ReplayCache(None))
    cascade = result.report["cascade"]["default+cascade"]
    log = result.logs["default+cascade"]
    blue = result.stream.experts.index("blue")
    assert 0 < log.escalated.sum() < len(log.escalated)  # some requests escalated, not all
    assert np.array_equal(log.queried[:, blue], log.escalated)  # blue answered exactly the escalated ones
    assert log.queried[:, result.stream.experts.index("red")].all()  # the cheap expert every time
    assert cascade["expensive_calls"] == log.escalated.sum()
    assert cascade["calls_by_tier"] == {
        "cheap": {"red": len(log.escalated)},
        "expensive": {"blue": log.escalated.sum()},
    }
    assert cascade["expensive_calls_saved"] == pytest.approx(1 - log.escalated.mean())
    assert cascade["full_information_learner"] == "default" and cascade["loss_ratio"] > 0
    with pytest.raises(ValueError, match="unknown experts"):
        run_replay(_config(tmp_path, cascade=["green"]), experts(), ReplayCache(None))
    with pytest.raises(ValueError, match="leave at least one cheap"):
        run_replay(_config(tmp_path, cascade=["red", "blue"]), experts(), ReplayCache(None))
