"""The expert catalog: one YAML file per expert in the repository's ``experts/`` folder, validated at load.

An entry says which backend runs the expert (a guard family on transformers, vLLM or an OpenAI-compatible server;
a CPU package), the model or package that holds its weights, the categories it covers and how its own labels map
into the canonical taxonomy, its cost class and the hardware it needs. A bad entry fails at load with a message that
names the file and the field. Building an expert imports its backend's heavy dependencies only then.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aegis_online.experts.base import Expert
from aegis_online.experts.guards import FAMILIES, make_family
from aegis_online.taxonomy import CANONICAL_IDS, EXTERNAL

GUARD_BACKENDS = ("transformers", "vllm", "openai-chat")
Backend = Literal["transformers", "vllm", "openai-chat", "openai-moderations", "profanity-check", "minilm"]
CostClass = Literal["cpu-light", "cpu", "gpu-small", "gpu-large", "remote"]
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class CatalogError(ValueError):
    """A catalog entry is invalid; the message names the file and the field."""


class Hardware(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    gpus: float = Field(default=0, ge=0, description="GPUs per replica (fractions share a GPU).")
    gpu_memory_gb: float = Field(default=0, ge=0)
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
    category_map: str | dict[str, list[str]] | None = Field(
        default=None, description="Its own labels -> canonical ids: a taxonomy name from taxonomy.EXTERNAL, or a map."
    )
    cost: CostClass
    hardware: Hardware = Field(default_factory=Hardware)

    @field_validator("family")
    @classmethod
    def _known_family(cls, value: str | None) -> str | None:
        if value is not None and value not in FAMILIES:
            raise ValueError(f"unknown family {value!r}; choose one of {sorted(FAMILIES)}")
        return value

    @field_validator("categories")
    @classmethod
    def _canonical_categories(cls, value: list[str] | None) -> list[str] | None:
        unknown = [c for c in value or () if c not in CANONICAL_IDS]
        if unknown:
            raise ValueError(f"unknown canonical ids {unknown}; use S1..S23")
        return value

    @field_validator("category_map")
    @classmethod
    def _valid_map(cls, value: str | dict[str, list[str]] | None) -> str | dict[str, list[str]] | None:
        if isinstance(value, str) and value not in EXTERNAL:
            raise ValueError(f"unknown taxonomy {value!r}; choose one of {sorted(EXTERNAL)}")
        if isinstance(value, dict):
            for label, targets in value.items():
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
        if self.backend == "openai-chat" and "base_url" not in self.backend_options:
            raise ValueError("backend_options.base_url: the openai-chat backend needs the server's base URL")
        if self.cost.startswith("gpu") and self.hardware.gpus <= 0:
            raise ValueError(f"hardware.gpus: a {self.cost} expert needs at least a fraction of a GPU")
        return self

    @property
    def runs_on_cpu(self) -> bool:
        """True for experts the embedded service can run on a laptop (no GPU, no remote server)."""
        return self.hardware.gpus == 0 and self.cost in ("cpu-light", "cpu")


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
    return specs


def default_catalog_dir() -> Path:
    """The repository's ``experts/`` folder (``AEGIS_EXPERTS_DIR`` overrides)."""
    env = os.environ.get("AEGIS_EXPERTS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "experts"


def cpu_expert_specs(specs: Iterable[ExpertSpec]) -> list[ExpertSpec]:
    """The default expert set of the embedded service: the catalog's CPU experts."""
    return [s for s in specs if s.runs_on_cpu]


def build_expert(spec: ExpertSpec) -> Expert:
    """Instantiate the expert an entry describes (heavy dependencies are imported here)."""
    options = dict(spec.backend_options)
    if "api_key_env" in options:  # keys come from the environment, never from the catalog
        options["api_key"] = os.environ.get(options.pop("api_key_env"))
    expert: Expert
    if spec.backend in GUARD_BACKENDS:
        from aegis_online.experts import backends

        family = make_family(spec.family or "", **spec.family_options)
        if spec.backend == "transformers":
            backend = backends.TransformersGuardBackend(spec.model or "", **options)
        elif spec.backend == "vllm":
            backend = backends.VLLMGuardBackend(spec.model or "", **options)
        else:
            backend = backends.OpenAIChatGuardBackend(model=spec.model or "", **options)
        expert = backends.GuardExpert(family, backend, name=spec.name)
    elif spec.backend == "openai-moderations":
        from aegis_online.experts.backends import OpenAIModerationsExpert

        expert = OpenAIModerationsExpert(model=spec.model or "omni-moderation-latest", **options)
        expert.name = spec.name
    elif spec.backend == "profanity-check":
        from aegis_online.experts.cpu import ProfanityExpert

        expert = ProfanityExpert(name=spec.name, **options)
    else:
        from aegis_online.experts.cpu import EmbeddingExpert

        expert = EmbeddingExpert(name=spec.name, **options)
    if spec.categories is not None:
        uncovered = sorted(set(spec.categories) - expert.categories)
        if uncovered:
            raise CatalogError(f"{spec.name}: categories: {uncovered} are not covered by this expert")
        expert.categories = frozenset(spec.categories)
    return expert
