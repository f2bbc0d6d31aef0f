"""The expert catalog: every shipped entry loads, bad entries name the file and the field, entries build experts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aegis_online.catalog import CatalogError, cpu_expert_specs, default_catalog_dir, load_catalog, load_spec
from aegis_online.experts import ExpertInput
from aegis_online.experts.build import build_expert
from aegis_online.schemas import Message
from aegis_online.taxonomy import category

REQUIRED = {
    "llama-guard-3-1b",
    "llama-guard-3-8b",
    "llama-guard-4-12b",
    "shieldgemma-2b",
    "shieldgemma-9b",
    "nemoguard-8b-content-safety",
    "wildguard-7b",
    "granite-guardian-3-8b",
    "profanity-check",
    "minilm-embedding",
    "minilm-heads",
    "lexical-heads",
}

#: The default CPU tier: what the embedded service and `make demo` run.
DEFAULT_TIER = {"profanity-check", "minilm-embedding", "minilm-heads", "lexical-heads"}


def test_the_shipped_catalog_has_every_required_expert_and_validates() -> None:
    specs = {s.name: s for s in load_catalog(default_catalog_dir())}
    assert set(specs) >= REQUIRED
    assert {s.name for s in cpu_expert_specs(specs.values())} == DEFAULT_TIER
    assert specs["llama-guard-3-8b"].hardware.gpus > 0 and specs["llama-guard-3-8b"].family == "llama_guard_3"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("name: bad\nbackend: warp-drive\ncost: cpu\n", "backend"),
        ("name: bad\nbackend: vllm\nmodel: m\ncost: gpu-large\nhardware: {gpus: 1}\n", "family"),
        ("name: bad\nbackend: vllm\nfamily: nope\nmodel: m\ncost: gpu-large\nhardware: {gpus: 1}\n", "family"),
        ("name: bad\nbackend: minilm\ncost: cpu\ncategories: [S99]\n", "categories"),
        ("name: bad\nbackend: minilm\ncost: gpu-small\n", "hardware.gpus"),
        ("name: bad\nbackend: minilm\ncost: cpu\ncategory_map: {x: [S77]}\n", "category_map"),
        ("name: bad\nbackend: minilm\ncost: cpu\ncolour: red\n", "colour"),
        ("name: bad\nbackend: openai-chat\nfamily: nemoguard\nmodel: m\ncost: remote\n", "backend_options.base_url"),
        ("name: other\nbackend: minilm\ncost: cpu\n", "name"),
        ("- just\n- a list\n", "mapping"),
        ("name: [unclosed\n", "YAML"),
    ],
)
def test_a_bad_entry_fails_naming_the_file_and_the_field(tmp_path: Path, body: str, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(CatalogError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert str(path) in message and field in message, message


def test_an_empty_or_missing_catalog_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no expert files"):
        load_catalog(tmp_path)
    with pytest.raises(CatalogError, match="not found"):
        load_catalog(tmp_path / "absent")


def test_a_vllm_entry_without_vllm_installed_says_how_to_install_it() -> None:
    pytest.importorskip("torch")
    spec = next(s for s in load_catalog(default_catalog_dir()) if s.name == "llama-guard-3-1b")
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"aegis-online\[vllm\]"):
            build_expert(spec)
    else:
        pytest.skip("vllm is installed: building would load real weights")


def test_a_transformers_entry_builds_a_working_guard_expert(tmp_path: Path, tiny_guard_path: Path) -> None:
    path = tmp_path / "tiny-shieldgemma.yaml"
    path.write_text(
        "name: tiny-shieldgemma\nbackend: transformers\nfamily: shieldgemma\n"
        f"model: {tiny_guard_path}\ncost: cpu\ncategories: [S8, S2]\n"
    )
    expert = build_expert(load_spec(path))
    assert expert.name == "tiny-shieldgemma" and expert.categories == frozenset({"S8", "S2"})
    item = ExpertInput(
        messages=(Message(role="user", content="tell me a story about cats"),),
        check="prompt",
        categories=(category("S8"), category("S2")),
    )
    [output] = asyncio.run(expert.score([item]))
    assert output.error is None, output.error
    assert set(output.scores) == {"S8", "S2"} and all(0.0 <= p <= 1.0 for p in output.scores.values())


def test_an_entry_cannot_claim_categories_its_expert_does_not_cover(tmp_path: Path) -> None:
    path = tmp_path / "profanity-everything.yaml"
    path.write_text("name: profanity-everything\nbackend: profanity-check\ncost: cpu-light\ncategories: [S17]\n")
    with pytest.raises(CatalogError, match="S17"):
        build_expert(load_spec(path))


@pytest.mark.parametrize(
    ("host", "why"),
    [("absent-expert", "is not in the catalog"), ("a", "is itself"), ("b", "shares too")],
)
def test_an_expert_shares_a_replica_only_with_another_catalog_expert_that_does_not_share(
    tmp_path: Path, host: str, why: str
) -> None:
    """``shares_replica_with`` names the deployment that serves this expert: it must exist and host no one else's."""
    entry = "backend: profanity-check\ncost: cpu-light\n"
    (tmp_path / "a.yaml").write_text(f"name: a\n{entry}shares_replica_with: {host}\n")
    (tmp_path / "b.yaml").write_text(f"name: b\n{entry}shares_replica_with: c\n")
    (tmp_path / "c.yaml").write_text(f"name: c\n{entry}")
    with pytest.raises(CatalogError, match=rf"a\.yaml: shares_replica_with: '{host}' {why}"):
        load_catalog(tmp_path)
    (tmp_path / "a.yaml").write_text(f"name: a\n{entry}shares_replica_with: c\n")
    assert {s.name: s.shares_replica_with for s in load_catalog(tmp_path)} == {"a": "c", "b": "c", "c": None}


def test_the_two_qwen3guard_views_read_one_served_model() -> None:
    """The loose entry says the two views cost one model: both must then ask the same server for the same model
    (an in-process vLLM engine per entry would load it twice)."""
    specs = {s.name: s for s in load_catalog(default_catalog_dir())}
    strict, loose = specs["qwen3guard-gen-8b-strict"], specs["qwen3guard-gen-8b-loose"]
    assert (strict.family_options, loose.family_options) == ({"view": "strict"}, {"view": "loose"})
    assert strict.backend == loose.backend == "openai-chat" and strict.model == loose.model
    assert strict.backend_options["base_url"] == loose.backend_options["base_url"]
    assert strict.cost == loose.cost == "remote" and strict.hardware == loose.hardware
