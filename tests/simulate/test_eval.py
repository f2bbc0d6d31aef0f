"""``aegis-online eval``: the metrics from score matrices, and the command end to end on small invented files.

The command runs through the real CLI app with the real profanity-check expert (fast, CPU); the texts are made up
here: rude ones full of swearing and polite ones about soup and weather, which it separates perfectly.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from aegis_online.cli import app
from aegis_online.policy import TenantPolicy
from aegis_online.simulate.data_options import data_specs, parse_data_argument
from aegis_online.simulate.evaluation import ENSEMBLE, ENSEMBLE_WEIGHTS, WeightsSnapshot, evaluate_outputs
from aegis_online.simulate.predictor_metrics import auroc, binary_metrics
from aegis_online.simulate.traffic import DataSpec, chain, dataset_name

runner = CliRunner()
RUDE = [
    "what the fuck is this shit, you stupid asshole",
    "shut the fuck up you dumb bitch",
    "you are a fucking idiot and a piece of shit",
    "fuck off, asshole",
]
POLITE = [
    "Could you share a recipe for lentil soup?",
    "The weather is lovely in the park today.",
    "Please send me the meeting notes from Tuesday.",
    "My cat sleeps on the windowsill every afternoon.",
]


# -- metrics on matrices ---------------------------------------------------------------------------------------------
def _matrices() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Six rows, categories S1 and S8; expert ``sharp`` separates S8 perfectly, ``dull`` is inverted on it, and only
    ``dull`` covers S1 (which the data does not label)."""
    unsafe = np.array([1, 1, 1, 0, 0, 0], dtype=float)
    sharp = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    dull = 1.0 - sharp
    outputs = np.full((6, 2, 2), np.nan)
    outputs[:, 1, 0], outputs[:, 1, 1] = sharp, dull  # S8
    outputs[:, 0, 1] = 0.4  # S1: dull only
    truth = np.full((6, 2), np.nan)
    truth[:, 1] = unsafe
    return outputs, truth, unsafe


def test_metrics_of_a_separating_expert_an_inverted_one_and_the_ensemble() -> None:
    outputs, truth, unsafe = _matrices()
    result = evaluate_outputs(outputs, truth, unsafe, experts=["sharp", "dull"], categories=["S1", "S8"])
    assert result["predictors"] == ["sharp", "dull", ENSEMBLE]
    assert result["rows"] == 6 and result["unsafe_rows"] == 3 and result["categories"] == ["S8"]
    sharp = result["sharp"]
    assert sharp["overall"]["auroc"] == 1.0 and sharp["overall"]["auprc"] == 1.0
    assert sharp["overall"]["f1"] == 1.0 and sharp["overall"]["fpr"] == 0.0 and sharp["overall"]["rows"] == 6
    assert set(sharp["categories"]) == {"S8"}  # S1: not covered by sharp, and not labelled by the data
    assert sharp["categories"]["S8"]["auroc"] == 1.0 and sharp["categories"]["S8"]["positives"] == 3
    # dull's whole-request score is its highest category score: max(S8, 0.4 on S1)
    assert result["dull"]["overall"]["auroc"] == 0.0
    assert set(result["dull"]["categories"]) == {"S8"}  # S1 is covered but unlabelled: no metrics, no 0.5
    # uniform combination of sharp and 1 - sharp on S8 is 0.5 everywhere: no ranking at all
    assert result[ENSEMBLE]["categories"]["S8"]["auroc"] == 0.5
    corr = result["error_correlation"]
    assert corr["sharp"]["sharp"] == 1.0 and corr["sharp"]["dull"] == corr["dull"]["sharp"]
    assert corr["sharp"]["dull"] is not None and -1.0 <= corr["sharp"]["dull"] <= 1.0


def test_one_class_data_gives_null_not_nan() -> None:
    outputs, truth, _ = _matrices()
    unsafe = np.ones(6)
    truth[:, 1] = 1.0
    result = evaluate_outputs(outputs, truth, unsafe, experts=["sharp", "dull"], categories=["S1", "S8"])
    overall = result["sharp"]["overall"]
    assert overall["auroc"] is None and overall["fpr"] is None and overall["recall"] == 0.5
    assert overall["auprc"] == 1.0 and overall["positives"] == 6
    assert not any(isinstance(v, float) and math.isnan(v) for v in overall.values())


def test_policy_thresholds_decide() -> None:
    outputs, truth, unsafe = _matrices()
    strict = TenantPolicy(tenant="t", threshold=0.05)
    result = evaluate_outputs(outputs, truth, unsafe, experts=["sharp", "dull"], categories=["S1", "S8"], policy=strict)
    assert result["sharp"]["overall"]["fpr"] == 1.0 and result["sharp"]["overall"]["recall"] == 1.0


def test_a_weights_snapshot_weighs_the_ensemble() -> None:
    outputs, truth, unsafe = _matrices()
    snapshot = WeightsSnapshot(
        tenant="global",
        learner="default+adaptive",
        experts=("sharp", "dull"),
        categories={"S8": {"sharp": 0.9, "dull": 0.1}, "overall": {"sharp": 0.9, "dull": 0.1}},
    )
    result = evaluate_outputs(
        outputs, truth, unsafe, experts=["sharp", "dull"], categories=["S1", "S8"], weights=snapshot
    )
    weighted = result[ENSEMBLE_WEIGHTS]
    assert weighted["categories"]["S8"]["auroc"] == 1.0 and weighted["overall"]["auroc"] == 1.0
    assert weighted["uniform_fallback"] == []
    with pytest.raises(ValueError, match="no weights for expert"):
        evaluate_outputs(outputs, truth, unsafe, experts=["sharp", "other"], categories=["S1", "S8"], weights=snapshot)


def test_auroc_and_binary_metrics_agree_with_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = rng.integers(0, 7, 300) / 7  # many ties
    assert auroc(y, s) == pytest.approx(metrics.roc_auc_score(y, s))
    m = binary_metrics(y.astype(float), s, 0.5)
    assert m["auprc"] == pytest.approx(metrics.average_precision_score(y, s))
    assert m["f1"] == pytest.approx(metrics.f1_score(y, s >= 0.5))
    assert m["precision"] == pytest.approx(metrics.precision_score(y, s >= 0.5))


# -- data options ----------------------------------------------------------------------------------------------------
def test_data_sets_are_named_after_their_files(tmp_path: Path) -> None:
    assert dataset_name(Path("x/samples-1680.jsonl.gz")) == "samples-1680"
    assert dataset_name(Path("xstest_prompts.csv")) == "xstest_prompts"
    first = _jsonl(tmp_path / "chat.jsonl", [("a calm line", 0), ("a zap line", 1)])
    other = tmp_path / "b"
    other.mkdir()
    second = _jsonl(other / "chat.jsonl", [("another line", 0)])
    specs = data_specs([str(first), str(second), str(first)], text_column="text", overall_column="unsafe")
    names = [s.name for s in chain(specs, shuffle=False).segments]
    assert names == ["chat", "chat (2)", "chat (3)"]  # " (2)" only on real collisions


def test_per_file_column_maps_and_their_errors(tmp_path: Path) -> None:
    path, columns = parse_data_argument(f"{tmp_path}/a.csv::text=comment,overall=toxic,label=insult:S10,format=csv")
    assert path == tmp_path / "a.csv" and columns.text == "comment" and columns.labels == {"insult": "S10"}
    assert columns.overall == "toxic" and columns.format == "csv"
    with pytest.raises(ValueError, match="unknown key 'txt'"):
        parse_data_argument("a.csv::txt=comment")
    with pytest.raises(ValueError, match="COLUMN:CATEGORY"):
        parse_data_argument("a.csv::label=insult")
    with pytest.raises(ValueError, match="unknown category 'S99'"):
        parse_data_argument("a.csv::label=insult:S99")


def test_missing_as_safe_reads_unlabelled_generic_rows_as_safe(tmp_path: Path) -> None:
    path = tmp_path / "marks.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [{"text": "a", "hate": 1}, {"text": "b", "hate": None}]) + "\n")
    plain = chain(data_specs([str(path)], label=["hate=S8"]), shuffle=False).rows
    safe = chain(data_specs([str(path)], label=["hate=S8"], missing_as_safe=True), shuffle=False).rows
    assert [r.unsafe for r in plain] == [True, None]
    assert [r.unsafe for r in safe] == [True, False]


# -- the command -------------------------------------------------------------------------------------------------------
def _jsonl(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("".join(json.dumps({"text": t, "unsafe": u, "insult": u}) + "\n" for t, u in rows))
    return path


def _csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["comment", "toxic"])
        writer.writerows(rows)
    return path


@pytest.fixture
def profanity() -> None:
    pytest.importorskip("profanity_check", reason="eval builds the catalog's profanity-check expert")


def _eval(tmp_path: Path, *args: str) -> tuple[int, str, dict | None]:
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["eval", *args, "--experts", "profanity-check", "--cache", str(tmp_path / "cache.jsonl"), "--out", str(out)],
    )
    report = json.loads((out / "eval.json").read_text()) if (out / "eval.json").exists() else None
    return result.exit_code, result.output, report


def test_eval_on_a_jsonl_and_a_csv_with_their_own_column_maps(profanity: None, tmp_path: Path) -> None:
    chat = _jsonl(tmp_path / "chat.jsonl", [(t, 1) for t in RUDE] + [(t, 0) for t in POLITE])
    forum = _csv(tmp_path / "forum.csv", [(t, 1) for t in RUDE])  # unsafe rows only
    code, output, report = _eval(
        tmp_path,
        "--data",
        f"{chat}::text=text,overall=unsafe,label=insult:S10",
        "--data",
        f"{forum}::text=comment,overall=toxic",
    )
    assert code == 0, output
    assert report is not None and set(report["datasets"]) == {"chat", "forum"}
    chat_entry = report["datasets"]["chat"]
    assert chat_entry["predictors"] == ["profanity-check", ENSEMBLE]
    for predictor in chat_entry["predictors"]:
        assert set(chat_entry[predictor]["overall"]) >= {"auroc", "auprc", "f1", "precision", "recall", "fpr"}
    assert chat_entry["profanity-check"]["overall"]["auroc"] == 1.0  # it separates the invented texts perfectly
    assert chat_entry["rows"] == 8 and chat_entry["profanity-check"]["overall"]["positives"] == 4
    assert set(chat_entry["profanity-check"]["categories"]) == {"S10"}  # labelled and covered; nothing else
    # one expert: the initial-weight ensemble is that expert
    assert chat_entry[ENSEMBLE]["overall"]["auroc"] == 1.0
    assert chat_entry["error_correlation"] == {"profanity-check": {"profanity-check": 1.0}}
    forum_entry = report["datasets"]["forum"]
    assert forum_entry["profanity-check"]["overall"]["auroc"] is None  # one class: undefined, null
    assert forum_entry["profanity-check"]["overall"]["fpr"] is None
    assert forum_entry["profanity-check"]["categories"] == {}  # the forum labels no category
    assert "chat" in output and "AUROC" in output
    markdown = (tmp_path / "out" / "eval.md").read_text()
    assert "## chat" in markdown and "| profanity-check |" in markdown
    assert "NaN" not in (tmp_path / "out" / "eval.json").read_text()


def test_eval_uses_the_cache_and_a_weights_snapshot(profanity: None, tmp_path: Path) -> None:
    chat = _jsonl(tmp_path / "chat.jsonl", [(t, 1) for t in RUDE] + [(t, 0) for t in POLITE])
    snapshot = tmp_path / "weights.json"
    snapshot.write_text(
        json.dumps(
            {
                "tenant": "global",
                "learner": "default+adaptive",
                "experts": ["profanity-check"],
                "categories": {"S10": {"scope": "global", "weights": {"profanity-check": 1.0}}},
            }
        )
    )
    args = ("--data", str(chat), "--text-column", "text", "--overall-column", "unsafe", "--weights", str(snapshot))
    code, output, report = _eval(tmp_path, *args)
    assert code == 0, output
    assert report is not None
    lines = (tmp_path / "cache.jsonl").read_text().splitlines()
    assert len(lines) == 8  # one line per text and expert, like replay's cache
    entry = report["datasets"]["chat"]
    assert entry["predictors"] == ["profanity-check", ENSEMBLE, ENSEMBLE_WEIGHTS]
    assert entry[ENSEMBLE_WEIGHTS]["overall"]["auroc"] == 1.0
    assert "overall" in entry[ENSEMBLE_WEIGHTS]["uniform_fallback"]
    assert _eval(tmp_path, *args)[0] == 0
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 8  # nothing scored twice


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "MISSING"], "--data: "),
        (["--data", "CHAT", "--label", "insult"], "--label: takes COLUMN=CATEGORY"),
        (["--data", "CHAT", "--label", "insult=S99"], "--label: insult=S99: unknown category"),
        (["--data", "CHAT::txt=text"], "unknown key 'txt'"),
        (["--data", "CHAT", "--text-column", "text", "--weights", "MISSING"], "--weights: "),
        ([], "--data: give at least one"),
    ],
)
def test_eval_refuses_bad_input_naming_the_option(tmp_path: Path, args: list[str], message: str) -> None:
    chat = _jsonl(tmp_path / "chat.jsonl", [("hello", 0)])
    args = [a.replace("MISSING", str(tmp_path / "none.jsonl")).replace("CHAT", str(chat)) for a in args]
    result = runner.invoke(app, ["eval", *args, "--experts", "profanity-check", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1, result.output
    assert message in result.output.replace("\n", "")
    if args and "none.jsonl" in args[1]:
        assert "no such file" in result.output


def test_replay_and_eval_share_their_data_options() -> None:
    import inspect

    from aegis_online.simulate import cli

    replay = inspect.signature(cli.replay_command).parameters
    evaluate = inspect.signature(cli.eval_command).parameters
    names = ("data", "data_format", "limit", "text_column", "label", "overall_column", "missing_as_safe")
    for name in (*names, "held_out_rows"):
        assert replay[name].default is evaluate[name].default


def test_data_spec_keeps_a_given_name(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "x.jsonl", [("a", 0)])
    assert DataSpec(path, name="mine").label() == "mine" and DataSpec(path).label() == "x"


# -- in-sample figures -----------------------------------------------------------------------------------------------
def test_a_head_that_saw_every_row_stays_in_sample_on_the_held_out_rows(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from aegis_online.datasets import data_file_id
    from aegis_online.simulate.evaluation import in_sample

    path = _jsonl(tmp_path / "mine.jsonl", [("a", 0)])
    own = SimpleNamespace(name="own", trained_on={data_file_id(path): True})  # trained with --data mine.jsonl
    shipped = SimpleNamespace(name="shipped", trained_on={data_file_id(path): False})  # held-out rows left out
    other = SimpleNamespace(name="other", trained_on={"shared:elsewhere.csv": True})
    entry = {"predictors": ["own", "shipped", "other", ENSEMBLE]}
    assert in_sample([own, shipped, other], DataSpec(path), entry) == ["own", "shipped", ENSEMBLE]  # type: ignore[list-item]
    assert in_sample([own, shipped, other], DataSpec(path, held_out_only=True), entry) == ["own", ENSEMBLE]  # type: ignore[list-item]
    assert in_sample([shipped, other], DataSpec(path, held_out_only=True), entry) == []  # type: ignore[list-item]


def test_eval_stars_the_shipped_heads_on_their_training_set_and_held_out_rows_clear_them(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="lexical-heads needs scikit-learn (the 'experts' extra)")
    from aegis_online.datasets import held_out, load_shared, shared_data_dir

    base = shared_data_dir()
    if base is None:
        pytest.skip("shared data not found (../shared/data beside the repo, or set AEGIS_DATA_DIR)")

    def run(*extra: str) -> tuple[str, dict]:
        out = tmp_path / f"out{len(extra)}"
        args = ["eval", "--data", str(base / "xstest/xstest_prompts.csv"), "--experts", "lexical-heads"]
        result = runner.invoke(app, [*args, "--no-cache", "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        return result.output, json.loads((out / "eval.json").read_text())["datasets"]["xstest_prompts"]

    output, entry = run()
    assert entry["in_sample"] == ["lexical-heads", ENSEMBLE] and entry["rows"] == 450
    assert "lexical-heads *" in output and "in-sample" in output
    output, entry = run("--held-out-rows")
    assert entry["in_sample"] == [] and "in-sample" not in output
    assert entry["rows"] == sum(held_out(r.text) for r in load_shared("xstest")) == 42


def test_replay_names_the_experts_fitted_on_each_data_set(tmp_path: Path) -> None:
    pytest.importorskip("sklearn", reason="lexical-heads needs scikit-learn (the 'experts' extra)")
    from aegis_online.datasets import shared_data_dir

    base = shared_data_dir()
    if base is None:
        pytest.skip("shared data not found (../shared/data beside the repo, or set AEGIS_DATA_DIR)")
    args = ["replay", "--data", str(base / "xstest/xstest_prompts.csv"), "--experts", "lexical-heads"]
    args += ["--learners", "default", "--no-plots", "--no-cache", "--limit", "100"]
    for extra, expected in (([], ["lexical-heads"]), (["--held-out-rows"], [])):
        out = tmp_path / f"out{len(extra)}"
        result = runner.invoke(app, [*args, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        data = json.loads((out / "report.json").read_text())["data"]
        assert [d["in_sample"] for d in data] == [expected]
        assert ("in-sample: lexical-heads" in result.output) == bool(expected)
