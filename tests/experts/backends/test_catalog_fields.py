"""Catalog fields that change what an expert does (issue 12, section 4): ``category_map`` re-reads an expert's own
labels, ``backend_options.tensor_parallel_size`` must match ``hardware.gpus``, ``family_options`` reach the family,
``description`` and ``package`` are what ``experts list`` shows, and ``hardware.gpu_memory_gb`` (never read) is gone."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from aegis_online.catalog import CatalogError, default_catalog_dir, load_spec
from aegis_online.experts import ExpertInput
from aegis_online.experts.build import build_expert, build_family
from aegis_online.experts.guards.base import GuardAnswer
from aegis_online.schemas import Message
from aegis_online.taxonomy import CANONICAL, LLAMA_GUARD_3_MAP, SHIELDGEMMA_MAP, category


def entry(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / f"{fields['name']}.yaml"
    path.write_text(yaml.safe_dump(fields))
    return path


def guard(tmp_path: Path, family: str, **fields: Any) -> Path:
    base = {"name": "g", "backend": "vllm", "model": "m", "family": family, "cost": "gpu-small"}
    return entry(tmp_path, **(base | {"hardware": {"gpus": 0.25}} | fields))


def item(*ids: str) -> ExpertInput:
    chosen = tuple(category(i) for i in ids) if ids else CANONICAL
    return ExpertInput(messages=(Message(role="user", content="hello"),), check="prompt", categories=chosen)


def test_category_map_rereads_llama_guard_hazard_codes(tmp_path: Path) -> None:
    declared = build_family(load_spec(guard(tmp_path, "llama_guard_3")))
    amended = build_family(load_spec(guard(tmp_path, "llama_guard_3", category_map={"S2": ["S16"], "S12": ["S12"]})))
    assert "S12" not in declared.categories and "S12" in amended.categories
    asked = item("S3", "S16", "S17")
    answer = [GuardAnswer("unsafe\nS2", 0.8)]
    # declared: S2 (non-violent crimes) reaches S3, S16, S17, ...; amended: fraud (S16) only
    assert declared.parse(asked, declared.queries(asked), answer) == {"S3": 0.8, "S16": 0.8, "S17": 0.8}
    assert amended.parse(asked, amended.queries(asked), answer) == {"S3": 0.0, "S16": 0.8, "S17": 0.0}
    assert LLAMA_GUARD_3_MAP["S2"] >= {"S3", "S16", "S17"}  # what the declared reading rests on


def test_category_map_rereads_shieldgemma_harm_types(tmp_path: Path) -> None:
    family = build_family(load_spec(guard(tmp_path, "shieldgemma", category_map={"Harassment": ["S10"]})))
    asked = item("S10", "S11")
    queries = family.queries(asked)
    assert [q.key for q in queries] == ["Harassment"]  # S11 (threat) is no longer a harassment question
    assert family.parse(asked, queries, [GuardAnswer("Yes", 0.7)]) == {"S10": 0.7}
    assert SHIELDGEMMA_MAP["Harassment"] == {"S10", "S11"}


def test_category_map_rereads_openai_moderation_labels(tmp_path: Path) -> None:
    pytest.importorskip("httpx")
    path = entry(
        tmp_path,
        name="omni",
        backend="openai-moderations",
        cost="remote",
        category_map={"harassment": ["S10", "S12"]},
        backend_options={"base_url": "http://127.0.0.1:9/v1"},
    )
    expert = build_expert(load_spec(path))
    assert "S12" in expert.categories

    async def answer(_path: str, _body: dict[str, Any]) -> dict[str, Any]:
        return {"results": [{"category_scores": {"harassment": 0.6, "hate": 0.1}}]}

    expert._http.post_json = answer  # type: ignore[method-assign]
    [output] = asyncio.run(expert.score([item("S8", "S10", "S12")]))
    assert output.scores == {"S8": 0.1, "S10": 0.6, "S12": 0.6}


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"backend": "minilm", "cost": "cpu", "category_map": {"S1": ["S1"]}}, "has no labels to map"),
        ({"family": "nemoguard", "category_map": {"S1": ["S1"]}}, "has no labels to map"),
        ({"family": "llama_guard_3", "category_map": {"S99": ["S1"]}}, "['S99'] are not labels of llama_guard_3"),
        ({"category_map": "llama_guard_3"}, "category_map"),  # the name-only form restated the family's own map
        ({"hardware": {"gpus": 1, "gpu_memory_gb": 20}}, "gpu_memory_gb"),  # removed: nothing read it
        ({"backend_options": {"tensor_parallel_size": 2}}, "hardware.gpus: tensor_parallel_size 2"),
        ({"backend_options": {"tensor_parallel_size": 1.5}}, "tensor_parallel_size: a whole number"),
    ],
)
def test_fields_that_cannot_take_effect_are_refused_at_load(tmp_path: Path, fields: dict, needle: str) -> None:
    base = {"name": "g", "backend": "vllm", "model": "m", "family": "llama_guard_3", "cost": "gpu-small"}
    body = base | {"hardware": {"gpus": 0.25}} | fields
    if body["backend"] != "vllm":
        body = {k: v for k, v in body.items() if k not in ("model", "family")} | {"hardware": {"gpus": 0}}
    with pytest.raises(CatalogError) as caught:
        load_spec(entry(tmp_path, **body))
    assert needle in str(caught.value)


def test_sharded_entries_load_and_the_shipped_catalog_maps_only_what_it_reads() -> None:
    for path in sorted(default_catalog_dir().glob("*.yaml")):
        spec = load_spec(path)
        assert spec.category_map is None or spec.own_labels is not None, spec.name
        assert spec.tensor_parallel_size == 1 or spec.hardware.gpus == spec.tensor_parallel_size


def test_family_options_and_sharding_reach_what_is_built(tmp_path: Path) -> None:
    small = build_family(load_spec(guard(tmp_path, "llama_guard_3", family_options={"variant": "1b"})))
    assert small.codes[-1] == "S13"
    sharded = guard(tmp_path, "llama_guard_3", hardware={"gpus": 2}, backend_options={"tensor_parallel_size": 2})
    assert load_spec(sharded).tensor_parallel_size == 2  # the deployment's bundles: tests/serve/test_sharded_experts.py


def test_description_and_package_are_what_experts_list_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from aegis_online.experts import cli

    fields = {"backend": "minilm", "cost": "cpu", "package": "pkg-with-weights", "description": "Tiny summary."}
    entry(tmp_path, name="documented", **fields)
    # wide enough that no cell wraps: the console was sized at import, from whatever COLUMNS the process had then
    monkeypatch.setattr(cli.console, "width", 250)
    result = CliRunner().invoke(cli.experts_app, ["list", "--catalog", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "pkg-with-weights" in result.output and "Tiny summary." in result.output
