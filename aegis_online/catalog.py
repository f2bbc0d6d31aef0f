"""The expert catalog: one YAML file per expert in the repository's ``experts/`` folder, validated at load.

An entry says which backend runs the expert (a guard family on transformers, vLLM or an OpenAI-compatible server;
a CPU package), the model or package that holds its weights, the categories it covers, where its own labels should
mean something other than the declared map (``category_map``), its cost class and the hardware it needs. A bad entry
fails at load with a message that names the file and the field.

Only the entries live here, as data: building the expert an entry describes is ``experts.build``'s job. So the
service config and the feedback worker (which needs the expert names only) read the catalog without importing any
expert code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aegis_online.language import ANY_LANGUAGE, is_language_code
from aegis_online.taxonomy import (
    CANONICAL_IDS,
    LLAMA_GUARD_3,
    OPENAI_OMNI,
    PROMPT_GUARD,
    QWEN3GUARD,
    SHIELDGEMMA,
    ExternalTaxonomy,
)

GUARD_BACKENDS = ("transformers", "vllm", "openai-chat")
Backend = Literal[
    "transformers",
    "vllm",
    "openai-chat",
    "openai-moderations",
    "sequence-classifier",
    "profanity-check",
    "minilm",
    "lexical",
]
CostClass = Literal["cpu-light", "cpu", "gpu-small", "gpu-large", "remote"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
#: The guard families an entry may name (``experts.guards.FAMILIES`` registers one class under each).
GUARD_FAMILIES = (
    "gpt_oss_safeguard",
    "granite_guardian",
    "llama_guard_3",
    "llama_guard_4",
    "nemoguard",
    "nemotron_content_safety",
    "qwen3guard_gen",
    "shieldgemma",
    "wildguard",
)

#: Experts that read labels of their own (a guard family, or a backend) -> the declared map of those labels, which
#: ``category_map`` amends. The others score canonical ids directly and have nothing to map.
OWN_LABELS: dict[str, ExternalTaxonomy] = {
    "llama_guard_3": LLAMA_GUARD_3,
    "llama_guard_4": LLAMA_GUARD_3,
    "shieldgemma": SHIELDGEMMA,
    "qwen3guard_gen": QWEN3GUARD,
    "openai-moderations": OPENAI_OMNI,
    "sequence-classifier": PROMPT_GUARD,
}


class CatalogError(ValueError):
    """A catalog entry is invalid; the message names the file and the field."""


class Hardware(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: float = Field(
        default=0,
        ge=0,
        description="GPUs per replica (fractions share a GPU; vLLM's gpu_memory_utilization should match); with "
        "tensor parallelism, one whole GPU per shard.",
    )
    cpus: float = Field(default=0.1, gt=0, description="CPUs per replica (fractions for light experts).")
    memory_gb: float = Field(default=1, gt=0)


class ExpertSpec(BaseModel):
    """One catalog entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    backend: Backend
    model: str | None = Field(default=None, description="Hub id or local path of the weights (guard backends).")
    package: str | None = Field(default=None, description="Registry package that ships the weights (CPU experts).")
    family: str | None = Field(default=None, description="Guard-model family: how it is prompted and parsed.")
    family_options: dict[str, Any] = Field(default_factory=dict)
    backend_options: dict[str, Any] = Field(default_factory=dict)
    categories: list[str] | None = Field(default=None, description="Canonical ids to use; default: all it covers.")
    category_map: dict[str, list[str]] | None = Field(
        default=None,
        description="Its own labels -> canonical ids, for the labels that should mean something other than the "
        "declared map (taxonomy.py); the others keep it. Only for experts with labels of their own (OWN_LABELS).",
    )
    languages: list[str] | None = Field(
        default=None,
        description="ISO 639-1 codes of the languages it reads (its model card's); null or ['*']: any. The request "
        "path does not call it on a text identified as another language (missing kind 'language').",
    )
    shares_replica_with: str | None = Field(
        default=None,
        pattern=NAME_PATTERN,
        description="Another catalog expert on the same model. When both are served, this one is served by the "
        "other's deployment, in the same process, so each text is embedded once for both.",
    )
    cost: CostClass
    hardware: Hardware = Field(default_factory=Hardware)

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str | None) -> str | None:
        if value is not None and value not in GUARD_FAMILIES:
            raise ValueError(f"unknown family {value!r}; choose one of {list(GUARD_FAMILIES)}")
        return value

    @field_validator("categories")
    @classmethod
    def _canonical_categories(cls, value: list[str] | None) -> list[str] | None:
        unknown = [c for c in value or () if c not in CANONICAL_IDS]
        if unknown:
            raise ValueError(f"unknown canonical ids {unknown}; use S1..S24")
        return value

    @field_validator("languages")
    @classmethod
    def _language_codes(cls, value: list[str] | None) -> list[str] | None:
        if value is None or value == [ANY_LANGUAGE]:
            return value
        if not value:
            raise ValueError("an expert reads at least one language; ['*'] (or no field) for any")
        bad = [code for code in value if not is_language_code(code)]
        if bad:
            raise ValueError(f"{bad} are not ISO 639-1 codes (two lowercase letters, e.g. en) nor ['*'] alone (any)")
        return value

    @field_validator("category_map")
    @classmethod
    def _valid_map(cls, value: dict[str, list[str]] | None) -> dict[str, list[str]] | None:
        for label, targets in (value or {}).items():
            bad = [t for t in targets if t not in CANONICAL_IDS]
            if bad or not targets:
                raise ValueError(f"{label}: targets must be a non-empty list of canonical ids, got {targets}")
        return value

    @model_validator(mode="after")
    def _backend_needs(self) -> ExpertSpec:
        if self.backend in GUARD_BACKENDS:
            if self.family is None:
                raise ValueError(f"family: the {self.backend} backend needs a guard family")
            if self.model is None:
                raise ValueError(f"model: the {self.backend} backend needs a model id or path")
        if self.backend == "sequence-classifier" and self.model is None:
            raise ValueError("model: the sequence-classifier backend needs a model id or path")
        if self.backend == "openai-chat" and "base_url" not in self.backend_options:
            raise ValueError("backend_options.base_url: the openai-chat backend needs the server's base URL")
        if self.cost.startswith("gpu") and self.hardware.gpus <= 0:
            raise ValueError(f"hardware.gpus: a {self.cost} expert needs at least a fraction of a GPU")
        if self.category_map is not None:
            declared = self.own_labels
            if declared is None:
                raise ValueError(
                    "category_map: this expert scores canonical ids itself and has no labels to map; only "
                    f"{sorted(OWN_LABELS)} (family or backend) do"
                )
            unknown = sorted(set(self.category_map) - set(declared.labels))
            if unknown:
                raise ValueError(f"category_map: {unknown} are not labels of {declared.name}: {list(declared.labels)}")
        shards = self.backend_options.get("tensor_parallel_size", 1)
        if self.backend == "vllm" and (not isinstance(shards, int) or isinstance(shards, bool) or shards < 1):
            raise ValueError(f"backend_options.tensor_parallel_size: a whole number of GPUs (>= 1), got {shards!r}")
        if self.tensor_parallel_size > 1 and self.hardware.gpus != self.tensor_parallel_size:
            raise ValueError(
                f"hardware.gpus: tensor_parallel_size {self.tensor_parallel_size} runs one shard per whole GPU; "
                f"set gpus: {self.tensor_parallel_size}, not {self.hardware.gpus:g}"
            )
        return self

    @property
    def own_labels(self) -> ExternalTaxonomy | None:
        """The declared map of the labels this expert reads (None: it scores canonical ids directly)."""
        return OWN_LABELS.get(self.family or "") or OWN_LABELS.get(self.backend)

    @property
    def tensor_parallel_size(self) -> int:
        """GPUs one replica shards the model over (vLLM's ``tensor_parallel_size``; 1 for every other backend)."""
        return int(self.backend_options.get("tensor_parallel_size", 1)) if self.backend == "vllm" else 1

    @property
    def runs_on_cpu(self) -> bool:
        """True for experts that need no GPU and no remote server."""
        return self.hardware.gpus == 0 and self.cost in ("cpu-light", "cpu")

    @property
    def ships_its_weights(self) -> bool:
        """True for experts whose weights come with the installed packages (no ``model`` to fetch from a hub): what
        a fresh machine can run with no download."""
        return self.model is None

    @property
    def reads_languages(self) -> frozenset[str] | None:
        """The languages it reads (None: any)."""
        if self.languages is None or self.languages == [ANY_LANGUAGE]:
            return None
        return frozenset(self.languages)


def _error_lines(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(entry)'}: {e['msg']}" for e in error.errors())


def load_spec(path: Path) -> ExpertSpec:
    """Parse and validate one catalog file."""
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise CatalogError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise CatalogError(f"{path}: expected a mapping of fields, got {type(document).__name__}")
    try:
        spec = ExpertSpec.model_validate(document)
    except ValidationError as error:
        raise CatalogError(f"{path}: {_error_lines(error)}") from None
    if spec.name != path.stem:
        raise CatalogError(f"{path}: name: {spec.name!r} must match the file name {path.stem!r}")
    return spec


def load_catalog(directory: str | os.PathLike[str]) -> list[ExpertSpec]:
    """Every ``*.yaml`` in ``directory``, sorted by name."""
    folder = Path(directory)
    if not folder.is_dir():
        raise CatalogError(f"{folder}: expert catalog folder not found")
    specs = [load_spec(p) for p in sorted(folder.glob("*.yaml"))]
    if not specs:
        raise CatalogError(f"{folder}: no expert files (*.yaml)")
    by_name = {s.name: s for s in specs}
    for spec in specs:
        host = by_name.get(spec.shares_replica_with or "")
        if spec.shares_replica_with is None:
            continue
        if host is None or host.name == spec.name or host.shares_replica_with is not None:
            why = "is not in the catalog" if host is None else "is itself" if host.name == spec.name else "shares too"
            raise CatalogError(
                f"{folder / (spec.name + '.yaml')}: shares_replica_with: {spec.shares_replica_with!r} {why}; "
                "name another catalog expert that runs in a replica of its own"
            )
    return specs


def default_catalog_dir() -> Path:
    """The repository's ``experts/`` folder (``AEGIS_EXPERTS_DIR`` overrides)."""
    env = os.environ.get("AEGIS_EXPERTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "experts"


def cpu_expert_specs(specs: Iterable[ExpertSpec]) -> list[ExpertSpec]:
    """The default expert set of the embedded service: the catalog's CPU experts whose weights ship in packages
    (Prompt Guard runs on a CPU too, but its weights come from the hub: it is chosen by name)."""
    return [s for s in specs if s.runs_on_cpu and s.ships_its_weights]
