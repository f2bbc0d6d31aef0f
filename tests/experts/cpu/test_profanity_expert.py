"""ProfanityExpert: the async interface, its categories, and its AUROC on the shared data (field notes section 8)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from aegis_online.datasets import load, shared_data_dir
from aegis_online.experts.base import ExpertInput, score_with_deadline
from aegis_online.schemas import Message
from aegis_online.taxonomy import category, custom_category

pytest.importorskip("profanity_check", reason="ProfanityExpert needs alt-profanity-check (the 'experts' extra)")
roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score

from aegis_online.datasets import LabelledText  # noqa: E402
from aegis_online.experts.cpu import ProfanityExpert  # noqa: E402
from aegis_online.experts.cpu.profanity_calibration import (  # noqa: E402
    CategoryMap,
    ProfanityCalibration,
    fit_profanity_calibration,
)

#: Measured 0.844 on all 1,680 rows (benign = no category set, the set's own convention); field notes: .84.
OPENAI_AUROC_MIN = 0.83


def _input(text: str, *ids: str) -> ExpertInput:
    cats = (*(category(i) for i in ids), custom_category("pets", "Content about cats and dogs."))
    return ExpertInput(messages=(Message(role="user", content=text),), check="prompt", categories=cats)


def _data(rel: str):
    base = shared_data_dir()
    if base is None or not (base / rel).is_file():
        pytest.skip(f"shared data file {rel} not found (../shared/data beside the repo, or set AEGIS_DATA_DIR)")
    return base / rel


def test_scores_only_the_categories_it_covers_and_swearing_scores_higher() -> None:
    expert = ProfanityExpert()
    batch = [
        _input("what the fuck is this shit, you stupid asshole", "S12", "S10", "S8", "S1"),
        _input("Could you share a recipe for lentil soup?", "S12", "S10", "S8", "S1"),
        _input("no swearing categories asked here", "S1"),
    ]
    rude, polite, none = asyncio.run(expert.score(batch))
    assert set(rude.scores) == {"S8", "S10", "S12"} and none.scores == {} and rude.ok
    assert rude.scores["S12"] > 0.8 > 0.2 > polite.scores["S12"]
    # each category is the same signal through its own calibration map: monotone, so ranking is kept
    assert all(rude.scores[c] > polite.scores[c] for c in ("S12", "S10", "S8"))
    cal = expert.calibration
    p = expert.offensive_probability(["what the fuck is this shit, you stupid asshole"])
    assert rude.scores["S8"] == pytest.approx(float(cal.apply("S8", p)[0]))
    assert rude.expert == "profanity-check" and rude.latency_ms > 0


def test_an_empty_batch_and_the_deadline_wrapper() -> None:
    only_s12 = ProfanityCalibration({"S12": CategoryMap(slope=1.0, intercept=0.0)})
    expert = ProfanityExpert(name="swears", calibration=only_s12)
    assert asyncio.run(expert.score([])) == []
    (out,) = asyncio.run(score_with_deadline(expert, [_input("damn it", "S12", "S8")], deadline_s=30))
    assert out.ok and set(out.scores) == {"S12"} and out.expert == "swears"


def test_bad_settings_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        ProfanityExpert(batch_size=0)
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"format": "something-else"}')
    with pytest.raises(ValueError, match=r"foreign\.json: not a profanity-calibration file"):
        ProfanityExpert(calibration=foreign)
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        ProfanityExpert(calibration=tmp_path / "missing.json")


def test_the_shipped_calibration_is_honest_and_says_where_it_came_from(tmp_path) -> None:
    """Each category is a fitted probability, not a fixed fraction: the map is fitted (slope, intercept), its
    provenance names the sets and the command, and a save/load round trip keeps it."""
    cal = ProfanityCalibration.load()
    assert cal.categories == {"S12", "S10", "S8"}
    assert {"openai_moderation", "davidson", "xstest"} <= set(cal.provenance["sources"])
    assert "profanity_calibration" in cal.provenance["command"]
    for c in cal.categories:
        entry = cal.provenance["categories"][c]
        assert entry["weighted_log_loss_calibrated"] < entry["weighted_log_loss_raw"]
    again = ProfanityCalibration.load(cal.save(tmp_path / "cal.json"))
    p = np.linspace(0.0, 1.0, 11)
    for c in cal.categories:
        assert np.allclose(again.apply(c, p), cal.apply(c, p))
        assert np.all(np.diff(cal.apply(c, p)) > 0)  # monotone: the ranking (AUROC) of P(offensive) is kept


def test_the_fit_recovers_a_known_map_and_refuses_data_without_both_classes() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.99, 4000)
    truth = CategoryMap(slope=2.0, intercept=-1.0)
    y = rng.uniform(size=p.size) < truth(p)
    rows = [LabelledText(text=str(i), labels={"S12": int(v)}) for i, v in enumerate(y)]
    fitted = fit_profanity_calibration({"synthetic": rows}, {"synthetic": p}, categories=["S12"])
    m = fitted.maps["S12"]
    assert m.slope == pytest.approx(2.0, abs=0.25) and m.intercept == pytest.approx(-1.0, abs=0.2)
    negatives_only = [LabelledText(text=str(i), labels={"S12": 0}) for i in range(100)]
    with pytest.raises(ValueError, match="no category"):
        fit_profanity_calibration({"neg": negatives_only}, {"neg": p[:100]}, categories=["S12"])


def test_auroc_harmful_vs_benign_on_openai_moderation_meets_the_field_notes() -> None:
    rows = list(load(_data("openai_moderation/samples-1680.jsonl.gz"), missing_as_safe=True))
    batch = [_input(r.text, "S12", "S10", "S8") for r in rows]
    outputs = asyncio.run(ProfanityExpert().score(batch))
    score = np.array([max(o.scores.values()) for o in outputs])
    auroc = roc_auc_score([r.unsafe for r in rows], score)
    assert auroc >= OPENAI_AUROC_MIN, f"profanity AUROC on OpenAI moderation {auroc:.3f}"


def test_auroc_profanity_on_davidson_tweets() -> None:
    rows = list(load(_data("davidson_hate_offensive/labeled_data.csv"), limit=5000))
    probs = ProfanityExpert().offensive_probability([r.text for r in rows])
    auroc = roc_auc_score(
        [r.labels["S12"] for r in rows if "S12" in r.labels], probs[[("S12" in r.labels) for r in rows]]
    )
    assert auroc >= 0.97, f"profanity AUROC for S12 on Davidson {auroc:.3f}"  # measured 0.989 on all rows
