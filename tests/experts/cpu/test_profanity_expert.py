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

from aegis_online.experts.cpu import ProfanityExpert  # noqa: E402

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
    # the indirect categories are the same signal, scaled down
    assert rude.scores["S12"] > rude.scores["S10"] > rude.scores["S8"] > 0
    assert rude.scores["S8"] == pytest.approx(0.5 * rude.scores["S12"])
    assert rude.expert == "profanity-check" and rude.latency_ms > 0


def test_an_empty_batch_and_the_deadline_wrapper() -> None:
    expert = ProfanityExpert(name="swears", category_scale={"S12": 1.0})
    assert asyncio.run(expert.score([])) == []
    (out,) = asyncio.run(score_with_deadline(expert, [_input("damn it", "S12", "S8")], deadline_s=30))
    assert out.ok and set(out.scores) == {"S12"} and out.expert == "swears"


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ValueError, match="in \\(0, 1\\]"):
        ProfanityExpert(category_scale={"S12": 1.5})
    with pytest.raises(ValueError, match="at least one"):
        ProfanityExpert(category_scale={})


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
