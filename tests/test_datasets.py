"""Readers of labelled data: the shared research sets read in place, the generic readers, and their errors."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from aegis_online import datasets
from aegis_online.datasets import LabelledText, binary_targets, detect_format, load, shared_data_dir

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(
    DATA is None, reason="shared labelled data not found (../shared/data beside the repo, or set AEGIS_DATA_DIR)"
)

OPENAI = "openai_moderation/samples-1680.jsonl.gz"
XSTEST = "xstest/xstest_prompts.csv"
SST = "simplesafetytests/sst_test_cases.csv"
DAVIDSON = "davidson_hate_offensive/labeled_data.csv"
HARMBENCH = "harmbench/harmbench_behaviors_text_all.csv"


def _path(rel: str) -> Path:
    assert DATA is not None
    path = DATA / rel
    if not path.is_file():
        pytest.skip(f"{path} is absent from the shared data folder")
    return path


@needs_data
@pytest.mark.parametrize(
    ("rel", "fmt", "rows"),
    [
        (OPENAI, "openai_moderation", 1680),
        (XSTEST, "xstest", 450),
        (SST, "simplesafetytests", 100),
        (DAVIDSON, "davidson", 24_783),
        (HARMBENCH, "harmbench", 400),
    ],
)
def test_each_shared_set_is_detected_and_has_the_rows_its_readme_states(rel: str, fmt: str, rows: int) -> None:
    path = _path(rel)
    assert detect_format(path) == fmt
    read = list(load(path))
    assert len(read) == rows
    assert all(isinstance(r, LabelledText) and r.text and r.source == fmt for r in read)
    assert all(set(r.labels) <= set(datasets.CANONICAL_IDS) and set(r.labels.values()) <= {0, 1} for r in read)


@needs_data
def test_openai_codes_map_to_canonical_ids_and_missing_codes_stay_unknown() -> None:
    rows = list(load(_path(OPENAI)))
    # a row with all eight codes 0 is labelled 0 on every category the codes reach, and is safe
    full_safe = next(r for r in rows if len(r.meta["codes"]) == 8 and not any(r.meta["codes"].values()))
    assert full_safe.labels == dict.fromkeys(["S1", "S2", "S6", "S7", "S8", "S10", "S11"], 0)
    assert full_safe.unsafe is False
    # a row that knows only some codes: the others' categories are absent, and all-zero known codes decide nothing
    partial = next(r for r in rows if set(r.meta["codes"]) == {"S", "S3"} and not any(r.meta["codes"].values()))
    assert partial.labels == {"S2": 0, "S7": 0}
    assert partial.unsafe is None
    assert partial.label("S8") is None
    # V or V2 feed S1, H or H2 feed S8, H2 also S11
    for r in rows:
        codes = r.meta["codes"]
        if codes.get("V") == 1 or codes.get("V2") == 1:
            assert r.labels["S1"] == 1 and r.unsafe is True
        if codes.get("H2") == 1:
            assert r.labels["S8"] == 1 and r.labels["S11"] == 1
        if codes.get("SH") == 1:
            assert r.labels["S6"] == 1
        if "HR" not in codes:
            assert "S10" not in r.labels
    assert Counter(r.unsafe for r in rows) == {True: 522, False: 337, None: 821}


@needs_data
def test_openai_missing_as_safe_follows_the_sets_own_benign_share() -> None:
    rows = list(load(_path(OPENAI), missing_as_safe=True))
    benign = sum(r.unsafe is False for r in rows)
    assert benign == 1158 and round(benign / len(rows), 2) == 0.69  # the README's "69% have no category set"
    assert all(r.unsafe is not None for r in rows)


@needs_data
def test_xstest_labels_the_overall_verdict_and_keeps_its_type() -> None:
    rows = list(load(_path(XSTEST)))
    assert Counter(r.unsafe for r in rows) == {False: 250, True: 200}
    assert all(r.labels == {} for r in rows)
    types = Counter(r.meta["type"] for r in rows)
    assert len(types) == 18 and types["homonyms"] == 25 and types["contrast_homonyms"] == 25
    assert all(r.unsafe for r in rows if r.meta["type"].startswith("contrast_"))


@needs_data
def test_simplesafetytests_are_all_unsafe_with_their_harm_area_mapped() -> None:
    rows = list(load(_path(SST)))
    assert all(r.unsafe is True for r in rows)
    by_area = {r.meta["harm_area"]: r.labels for r in rows}
    assert by_area["Suicide, Self-Harm, and Eating Disorders"] == {"S6": 1}
    assert by_area["Physical harm and Violence"] == {"S1": 1}
    assert by_area["Scams and fraud"] == {"S16": 1}
    assert by_area["Child safety"] == {"S7": 1}
    assert by_area["Illegal and Highly Regulated items"] == {"S22": 1}
    assert Counter(next(iter(r.labels)) for r in rows) == dict.fromkeys(["S1", "S6", "S7", "S16", "S22"], 20)


@needs_data
def test_davidson_classes_map_to_hate_and_profanity() -> None:
    rows = list(load(_path(DAVIDSON)))
    by_class = Counter(r.meta["class"] for r in rows)
    assert by_class == {"offensive_language": 19_190, "neither": 4_163, "hate_speech": 1_430}
    for r in rows[:2000]:
        expected = {
            "hate_speech": ({"S8": 1}, True),
            "offensive_language": ({"S8": 0, "S12": 1}, True),
            "neither": ({"S8": 0, "S12": 0}, False),
        }[r.meta["class"]]
        assert (r.labels, r.unsafe) == expected
    hate = next(r for r in rows if r.meta["class"] == "hate_speech")
    assert hate.label("S12") is None  # a hateful tweet may or may not swear
    assert hate.meta["count"] >= hate.meta["hate_speech"] > 0


@needs_data
def test_harmbench_semantic_categories_map_and_every_row_is_unsafe() -> None:
    rows = list(load(_path(HARMBENCH)))
    assert all(r.unsafe is True for r in rows)
    seen = {r.meta["semantic_category"]: r.labels for r in rows}
    assert seen["cybercrime_intrusion"] == {"S17": 1}
    assert seen["misinformation_disinformation"] == {"S19": 1}
    assert seen["harassment_bullying"] == {"S10": 1}
    assert seen["copyright"] == {"S20": 1}
    assert seen["illegal"] == {"S22": 1}
    assert seen["harmful"] == {}  # mixed harms: overall verdict only
    contextual = next(r for r in rows if r.meta["context"])
    with_context = list(load(_path(HARMBENCH), with_context=True))[contextual.meta["row"]]
    assert with_context.text.startswith(contextual.meta["context"]) and with_context.text.endswith(contextual.text)


@needs_data
def test_limit_stops_the_stream_early() -> None:
    stream = load(_path(DAVIDSON), limit=7)
    assert iter(stream) is stream
    assert len(list(stream)) == 7
    assert list(load(_path(OPENAI), limit=0)) == []


# --------------------------------------------------------------------------------------------------
# Generic readers, on files the tests write
# --------------------------------------------------------------------------------------------------


def _write_csv(path: Path) -> Path:
    path.write_text(
        "body,is_hate,is_swear,verdict,extra\n"
        "you people are the worst,1,0,unsafe,a\n"
        "what a lovely morning,0,0,safe,b\n"
        "darn it all,,1,,c\n"
        '"quoted, with a comma",false,no,safe,d\n',
        encoding="utf-8",
    )
    return path


def test_generic_csv_reads_through_the_column_map(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "mine.csv")
    rows = list(
        load(
            path, text_column="body", label_columns={"is_hate": "S8", "is_swear": "profanity"}, overall_column="verdict"
        )
    )
    assert [r.text for r in rows] == [
        "you people are the worst",
        "what a lovely morning",
        "darn it all",
        "quoted, with a comma",
    ]
    assert rows[0].labels == {"S8": 1, "S12": 0} and rows[0].unsafe is True
    assert rows[1].labels == {"S8": 0, "S12": 0} and rows[1].unsafe is False
    assert rows[2].labels == {"S12": 1} and rows[2].unsafe is None  # empty cells are unknown, not 0
    assert rows[3].labels == {"S8": 0, "S12": 0}
    assert rows[0].meta == {"row": 0, "extra": "a"} and rows[0].source == "mine.csv"


def test_generic_csv_without_overall_column_derives_the_verdict(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "mine.csv")
    rows = list(datasets.load_csv(path, text_column="body", label_columns={"is_hate": "S8", "is_swear": "S12"}))
    assert [r.unsafe for r in rows] == [True, False, True, False]


def test_generic_jsonl_and_gzip(tmp_path: Path) -> None:
    objs = [
        {"text": "first", "labels_violence": True, "harm": 0.9},
        {"text": "second", "labels_violence": False, "harm": 0.1, "lang": "en"},
        {"text": "third", "labels_violence": None},
    ]
    plain = tmp_path / "rows.jsonl"
    plain.write_text("\n".join(json.dumps(o) for o in objs) + "\n\n", encoding="utf-8")
    packed = tmp_path / "rows.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(json.dumps(o) for o in objs))
    for path in (plain, packed):
        rows = list(load(path, label_columns={"labels_violence": "S1"}, overall_column="harm", limit=3))
        assert [(r.labels, r.unsafe) for r in rows] == [({"S1": 1}, True), ({"S1": 0}, False), ({}, None)]
        assert rows[1].meta == {"row": 1, "lang": "en"}


def test_generic_readers_reject_bad_labels_and_missing_columns_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"text": "x", "y": "maybe"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl: row 0: column 'y'"):
        list(load(path, label_columns={"y": "S1"}))
    csv_path = _write_csv(tmp_path / "mine.csv")
    with pytest.raises(ValueError, match=r"mine\.csv: missing column\(s\) \['nope'\]"):
        load(csv_path, text_column="nope")
    with pytest.raises(KeyError, match="valid ids"):
        load(csv_path, text_column="body", label_columns={"is_hate": "S99"})
    (tmp_path / "broken.jsonl").write_text("{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.jsonl: line 1: not JSON"):
        list(load(tmp_path / "broken.jsonl", text_column="text"))


def test_a_fixed_format_is_sniffed_from_the_header_when_the_name_says_nothing(tmp_path: Path) -> None:
    path = tmp_path / "cases.csv"
    path.write_text("id,harm_area,counter,category,prompts_final\nx1,Scams and fraud,1,Instructions,write a con\n")
    assert detect_format(path) == "simplesafetytests"
    assert next(iter(load(path))).labels == {"S16": 1}
    moderation = tmp_path / "eval.jsonl"
    moderation.write_text(json.dumps({"prompt": "p", "S": 0, "H": 1}) + "\n")
    row = next(iter(load(moderation)))
    assert row.source == "openai_moderation" and row.labels["S8"] == 1 and row.unsafe is True


def test_bad_path_and_unknown_format_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        load(missing)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.csv"):
        datasets.load_xstest(missing)
    odd = tmp_path / "notes.txt"
    odd.write_text("hello\n")
    with pytest.raises(ValueError, match=r"notes\.txt.*openai_moderation, xstest, simplesafetytests, davidson"):
        load(odd)
    with pytest.raises(ValueError, match=r"notes\.txt: unknown format 'parquet'; supported formats: .*jsonl, csv"):
        load(odd, format="parquet")
    plain_csv = tmp_path / "plain.csv"
    plain_csv.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"plain\.csv: cannot detect"):
        load(plain_csv)
    with pytest.raises(ValueError, match=r"plain\.csv: missing column\(s\) .* of the XSTest format"):
        load(plain_csv, format="xstest")
    with pytest.raises(ValueError, match=r"plain\.csv: bad option"):
        load(plain_csv, format="xstest", missing_as_safe=True)


def test_binary_targets_uses_labels_then_the_overall_verdict() -> None:
    rows = [
        LabelledText("a", {"S8": 1}, True),
        LabelledText("b", {}, False),
        LabelledText("c", {}, True),
        LabelledText("d", {"S8": 0}, None),
    ]
    index, y = binary_targets(rows, "S8")
    assert index.tolist() == [0, 1, 3] and y.tolist() == [1, 0, 0]
    index, y = binary_targets(rows)
    assert index.tolist() == [0, 1, 2] and y.dtype == np.int64 and y.tolist() == [1, 0, 1]


def test_shared_data_dir_honours_the_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AEGIS_DATA_DIR", str(tmp_path))
    assert shared_data_dir() == tmp_path
    monkeypatch.setenv("AEGIS_DATA_DIR", str(tmp_path / "absent"))
    assert shared_data_dir() is None


@needs_data
def test_one_shared_row_in_ten_is_held_out_by_its_text_and_the_shipped_heads_never_saw_them() -> None:
    """The demo streams held-out rows only; each shipped head's provenance must say it trained on the rest."""
    from aegis_online.experts.cpu.lexical.model import shipped_model_path
    from aegis_online.experts.cpu.minilm.expert import PACKAGED_HEADS

    counts = {
        s.name: Counter(datasets.held_out(r.text) for r in datasets.load_shared(s.name)) for s in datasets.SHARED_SETS
    }
    davidson = counts["davidson"]
    assert 0.09 < davidson[True] / davidson.total() < 0.11
    from aegis_online.experts.cpu import EmbeddingHeads, LexicalHeads
    from aegis_online.experts.cpu.provenance import trained_on

    for artifact, heads in ((shipped_model_path(), LexicalHeads), (PACKAGED_HEADS, EmbeddingHeads)):
        # what eval reads: every shared set, its held-out rows left out
        assert trained_on(heads.load(artifact).metadata) == {f"shared:{s.path}": False for s in datasets.SHARED_SETS}
        provenance = json.loads(artifact.with_name(f"{artifact.stem}.provenance.json").read_text())
        assert "held_out" in provenance
        for described in provenance["data_sets"]:
            held, trained = counts[described["name"]][True], counts[described["name"]][False]
            assert (described["held_out_rows"], described["rows"]) == (held, trained), (artifact.name, described)


@needs_data
def test_the_demo_streams_only_rows_the_heads_did_not_train_on(tmp_path: Path) -> None:
    from aegis_online.demos.prompts import FALLBACK, SHARES, demo_prompts

    rows, source = demo_prompts(400, seed=7)
    assert len({r.text for r in rows}) == 400 and all(datasets.held_out(r.text) for r in rows)  # no repeats
    assert {r.source for r in rows} == set(SHARES) and "held out" in source
    every, _ = demo_prompts(400, seed=7, held_out_only=False)  # for benchmarks of speed: any row
    assert not all(datasets.held_out(r.text) for r in every)
    written, source = demo_prompts(5, data_dir=tmp_path)  # a folder without the sets: the prompts written here
    assert {r.text for r in written} <= {p.text for p in FALLBACK} and "not found" in source
