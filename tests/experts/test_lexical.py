"""LexicalExpert and train_lexical: learning on invented phrases, the no-pickle file format, skipped heads, the async
interface, the shipped artifact, and held-out AUROC on a shared set.

Every model here is small (a few hundred terms, two or three folds) so the module runs in seconds; the shipped
artifact is only loaded, never retrained.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from aegis_online.datasets import SHARED_SETS, LabelledText, load_shared, shared_data_dir
from aegis_online.experts.base import ExpertInput
from aegis_online.schemas import OVERALL, Message
from aegis_online.taxonomy import category, custom_category

pytest.importorskip("sklearn", reason="the lexical expert needs scikit-learn (the 'experts' extra)")
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.metrics import roc_auc_score

from aegis_online.experts.cpu import LexicalExpert, LexicalHeads
from aegis_online.experts.cpu.lexical import shipped_model_path, train_lexical
from aegis_online.experts.cpu.lexical.features import char_wb_ngrams, fit_block
from aegis_online.experts.cpu.minilm.training import HeadReport

#: Overall head trained on the odd rows of OpenAI moderation (840), scored on every fourth even row (420):
#: measured 0.876 (the shipped model's cross-validated AUROC on that set: .854). Chance is 0.5.
HELD_OUT_AUROC_MIN = 0.75
#: Small vocabularies: enough for the invented phrases, and fast.
SMALL = {"word_features": 400, "char_features": 600}

THINGS = ("lantern", "bicycle", "teapot", "window", "garden gnome", "mailbox", "scarecrow", "piano", "kettle", "canoe")
THREATS = ("I will smash your {} with a crowbar tonight", "we are going to crush the {} and hurt you badly")
CHORES = ("please water the plants beside the {} on tuesday", "could you polish the {} before lunch")
SLURS = ("you absolute glorbnak, your {} stinks", "shut up, filthy glorbnak, nobody wants your {}")


def _rows() -> list[LabelledText]:
    """Invented phrases: threats (S1), insults with an invented slur (S12), chores (safe), 3 scams (S16: too few)."""
    rows = [LabelledText(t.format(x), {"S1": 1}, True, "synthetic") for t in THREATS for x in THINGS]
    rows += [LabelledText(t.format(x), {"S12": 1}, True, "synthetic") for t in SLURS for x in THINGS]
    rows += [LabelledText(t.format(x), {}, False, "synthetic") for t in CHORES for x in THINGS]
    rows += [LabelledText(f"send me your bank pin for the {x}", {"S16": 1}, True, "synthetic") for x in THINGS[:3]]
    rows += [LabelledText(f"the {x} is blue", {}, None, "synthetic") for x in THINGS]  # no verdict: left out
    return rows


@pytest.fixture(scope="module")
def trained() -> tuple[LexicalHeads, list[HeadReport]]:
    return train_lexical(
        _rows(), categories=("S1", "S12", "S16"), min_positives=5, folds=3, sources=("invented",), **SMALL
    )


def _input(text: str, *cats) -> ExpertInput:
    return ExpertInput(messages=(Message(role="user", content=text),), check="prompt", categories=tuple(cats))


def test_training_on_invented_phrases_learns_to_separate_them(trained) -> None:
    model, reports = trained
    assert model.heads == (OVERALL, "S1", "S12") and model.categories == ("S1", "S12")
    by_head = {r.category: r for r in reports}
    assert by_head[OVERALL].positives == 43 and by_head[OVERALL].negatives == 20  # the 10 unlabelled rows left out
    for head in (OVERALL, "S1", "S12"):
        assert by_head[head].skipped is None and by_head[head].cv_auroc is not None and by_head[head].cv_auroc > 0.9
    probs = model.predict(
        ["I will smash your toaster with a crowbar", "you glorbnak, your toaster stinks", "please polish the toaster"],
        [OVERALL, "S1", "S12"],
    )
    threat, insult, chore = probs
    assert threat[0] > 0.5 > chore[0] and insult[0] > 0.5
    assert threat[1] > max(insult[1], chore[1]) and insult[2] > max(threat[2], chore[2])
    assert model.metadata["sources"] == ["invented"] and model.metadata["heads"]["S1"]["cv_auroc"] > 0.9


def test_reports_skip_heads_with_too_few_positives_with_a_reason(trained) -> None:
    _, reports = trained
    assert [r.category for r in reports] == [OVERALL, "S1", "S12", "S16"]
    scams = reports[-1]
    assert scams.positives == 3 and scams.cv_auroc is None
    assert scams.skipped is not None and "too few positives" in scams.skipped and "need 5" in scams.skipped
    model, _ = trained
    assert "S16" not in model and model.metadata["skipped"]["S16"] == scams.skipped


def test_features_are_sklearns_tfidf_recomputed_from_the_stored_vocabulary() -> None:
    texts = [r.text for r in _rows()]
    block, X = fit_block(texts, "char_wb", (2, 5), max_features=500)
    reference = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2, max_features=500)
    expected = reference.fit_transform(texts).toarray()
    assert tuple(reference.get_feature_names_out()) == block.vocabulary
    assert np.allclose(X.toarray(), expected, atol=1e-12)
    assert np.allclose(block.transform(texts[:7]).toarray(), expected[:7], atol=1e-12)


@pytest.mark.parametrize("ngram_range", [(2, 5), (4, 6)])
def test_char_ngram_counts_match_sklearns_analyzer(ngram_range: tuple[int, int]) -> None:
    texts = [r.text for r in _rows()]
    texts += ["", "  ", "a", "I", "a b c", "Ab  cd\tEFG\u00a0hi\u2003j", "ÉCOLE ß İ ǅ", "x\ud800y zz", "\U0001f600 q"]
    block, _ = fit_block(texts, "char_wb", ngram_range, max_features=300, min_df=1)
    reference = CountVectorizer(
        analyzer="char_wb", ngram_range=ngram_range, vocabulary={t: i for i, t in enumerate(block.vocabulary)}
    )
    expected = reference.transform(texts).toarray()
    assert np.array_equal(block.counts(texts).toarray(), expected)  # the numpy counter
    analyze = reference.build_analyzer()
    assert all(char_wb_ngrams(t, ngram_range) == analyze(t) for t in texts)  # the reference n-grams


def test_save_then_load_predicts_identically(trained, tmp_path: Path) -> None:
    model, _ = trained
    path = model.save(tmp_path / "heads.npz")
    assert path == tmp_path / "heads.npz" and path.is_file()
    loaded = LexicalHeads.load(path)
    texts = ["I will smash your kettle", "please water the canoe", "", "completely unseen words here"]
    assert loaded.heads == model.heads and loaded.metadata == model.metadata
    assert [b.vocabulary for b in loaded.features.blocks] == [b.vocabulary for b in model.features.blocks]
    assert np.array_equal(loaded.predict(texts), model.predict(texts))
    with np.load(path, allow_pickle=False) as data:  # every array reads without pickle
        assert {"heads", "coef", "intercept", "metadata", "word_vocabulary", "char_idf"} <= set(data.files)


def test_train_lexical_writes_its_output_and_keeps_the_command(tmp_path: Path) -> None:
    out = tmp_path / "lexical.npz"
    model, _ = train_lexical(
        _rows(), out, categories=("S1",), min_positives=5, folds=2, command="make lexical", **SMALL
    )
    loaded = LexicalHeads.load(out)
    assert loaded.metadata["command"] == "make lexical" and loaded.metadata["folds"] == 2
    assert loaded.metadata["sklearn"] and loaded.metadata["training_rows"] == len(_rows())
    assert np.array_equal(loaded.predict(["smash the piano"]), model.predict(["smash the piano"]))


def test_a_bad_or_foreign_file_is_a_value_error_naming_the_path(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a numpy file at all")
    with pytest.raises(ValueError, match=r"garbage\.npz"):
        LexicalHeads.load(garbage)
    foreign = tmp_path / "foreign.npz"
    with open(foreign, "wb") as handle:
        np.savez(handle, coef=np.zeros((1, 3)), metadata=np.asarray(json.dumps({"format": "someone-else/heads"})))
    with pytest.raises(ValueError, match=r"foreign\.npz.*someone-else"):
        LexicalHeads.load(foreign)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.npz"):
        LexicalHeads.load(empty)
    with pytest.raises(FileNotFoundError, match=r"missing\.npz"):
        LexicalHeads.load(tmp_path / "missing.npz")


def test_the_expert_scores_its_covered_categories_only(trained) -> None:
    model, _ = trained
    expert = LexicalExpert(model, name="lexical-test")
    assert expert.categories == frozenset({"S1", "S12"}) and not expert.free_form
    cats = (category("S1"), category("S12"), category("S8"), custom_category("pets", "Content about cats."))
    threat, chore = asyncio.run(
        expert.score([_input("I will smash your teapot with a crowbar", *cats), _input("polish the teapot", *cats)])
    )
    assert set(threat.scores) == {"S1", "S12"} == set(chore.scores)
    assert all(0.0 <= p <= 1.0 for out in (threat, chore) for p in out.scores.values())
    assert threat.scores["S1"] > chore.scores["S1"] and threat.expert == "lexical-test"
    assert asyncio.run(expert.score([])) == []
    assert expert.score_texts(["a", "b"], ["S12"]).shape == (2, 1)
    overall = expert.overall_probability(["I will smash your teapot", "polish the teapot"])
    assert overall.shape == (2,) and overall[0] > overall[1]
    assert LexicalExpert(model, categories=["S1"]).categories == frozenset({"S1"})
    with pytest.raises(ValueError, match="S8"):
        LexicalExpert(model, categories=["S8"])


def test_the_shipped_artifact_loads_with_an_overall_head_and_names_its_sources() -> None:
    path = shipped_model_path()
    expert = LexicalExpert()
    model = expert.model
    assert expert.name == "lexical-heads" and OVERALL in model and OVERALL not in expert.categories
    assert {"S1", "S8", "S12"} <= expert.categories
    assert path.stat().st_size < 3_000_000
    sources = " ".join(model.metadata["sources"])
    assert all(s.name in sources for s in SHARED_SETS)
    assert model.metadata["heads"][OVERALL]["cv_auroc"] > 0.9
    provenance = json.loads(path.with_name("lexical-heads.provenance.json").read_text())
    assert [d["name"] for d in provenance["data_sets"]] == [s.name for s in SHARED_SETS]
    assert "experts train-head --kind lexical --shared-data" in provenance["command"]
    assert set(provenance["heads"]) == set(model.heads) and provenance["bytes"] == path.stat().st_size
    threat, chore = expert.overall_probability(["I will kill you, you worthless idiot", "How do I bake bread?"])
    assert threat > 0.8 and chore < 0.2  # balanced classes: the pooled sets' 80% unsafe rows do not lift every score
    assert model.metadata["class_weight"] == "balanced"


def test_held_out_auroc_on_a_shared_set_is_clearly_above_chance() -> None:
    if shared_data_dir() is None:
        pytest.skip("shared data not found (../shared/data beside the repo, or set AEGIS_DATA_DIR)")
    rows = load_shared("openai_moderation")  # every row has a verdict (benign = no code set)
    train, test = rows[1::2], rows[::4]  # odd rows / every fourth even row: disjoint
    model, _ = train_lexical(train, categories=(), folds=2, word_features=5_000, char_features=5_000)
    scores = model.predict([r.text for r in test], [OVERALL])[:, 0]
    auroc = roc_auc_score([int(bool(r.unsafe)) for r in test], scores)
    assert auroc > HELD_OUT_AUROC_MIN, auroc


def test_train_head_on_the_shared_data_leaves_the_held_out_rows_out(tmp_path: Path) -> None:
    """``--shared-data`` trains on every shared row but one in ten (``datasets.held_out``), which the demo streams;
    the provenance counts both, per set."""
    from typer.testing import CliRunner

    from aegis_online.cli import app
    from aegis_online.datasets import held_out

    if shared_data_dir() is None:
        pytest.skip("shared data not found (../shared/data beside the repo, or set AEGIS_DATA_DIR)")
    out = tmp_path / "lexical.npz"
    argv = ["experts", "train-head", "--kind", "lexical", "--shared-data", "--limit", "120", "--folds", "2"]
    result = CliRunner().invoke(app, [*argv, "--category", "S12", "--out", str(out)])
    assert result.exit_code == 0, result.output
    provenance = json.loads(out.with_name("lexical.provenance.json").read_text())
    for described in provenance["data_sets"]:
        read = load_shared(described["name"], limit=120)
        held = sum(held_out(r.text) for r in read)
        assert held > 0 and (described["held_out_rows"], described["rows"]) == (held, len(read) - held), described
    assert provenance["training_rows"] == sum(d["rows"] for d in provenance["data_sets"])
