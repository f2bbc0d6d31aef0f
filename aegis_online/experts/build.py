"""Build the expert a catalog entry (``aegis_online.catalog``) describes; heavy dependencies are imported then."""

from __future__ import annotations

import os

from aegis_online.catalog import GUARD_BACKENDS, CatalogError, ExpertSpec
from aegis_online.experts.base import Expert
from aegis_online.experts.guards import GuardFamily, make_family
from aegis_online.taxonomy import ExternalTaxonomy


def label_map(spec: ExpertSpec) -> ExternalTaxonomy | None:
    """The map an expert reads its own labels through: the declared one with ``category_map``'s labels replaced
    (None when the entry has no ``category_map``: the expert keeps its declared map)."""
    declared = spec.own_labels
    if spec.category_map is None or declared is None:
        return None
    amended = {**declared.to_canonical, **{label: frozenset(ids) for label, ids in spec.category_map.items()}}
    return ExternalTaxonomy(f"{spec.name}:{declared.name}", declared.labels, amended)


def build_family(spec: ExpertSpec) -> GuardFamily:
    """The guard family of a guard entry, reading its labels through ``label_map``."""
    labels = label_map(spec)
    return make_family(spec.family or "", **spec.family_options, **({"labels": labels} if labels else {}))


def build_expert(spec: ExpertSpec) -> Expert:
    """Instantiate the expert an entry describes (heavy dependencies are imported here)."""
    options = dict(spec.backend_options)
    if "api_key_env" in options:  # keys come from the environment, never from the catalog
        options["api_key"] = os.environ.get(options.pop("api_key_env"))
    expert: Expert
    if spec.backend in GUARD_BACKENDS:
        from aegis_online.experts import backends

        family = build_family(spec)
        if spec.backend == "transformers":
            backend = backends.TransformersGuardBackend(spec.model or "", **options)
        elif spec.backend == "vllm":
            backend = backends.VLLMGuardBackend(spec.model or "", **options)
        else:
            backend = backends.OpenAIChatGuardBackend(model=spec.model or "", **options)
        expert = backends.GuardExpert(family, backend, name=spec.name)
    elif spec.backend == "openai-moderations":
        from aegis_online.experts.backends import OpenAIModerationsExpert

        expert = OpenAIModerationsExpert(
            model=spec.model or "omni-moderation-latest", labels=label_map(spec), **options
        )
        expert.name = spec.name
    elif spec.backend == "sequence-classifier":
        from aegis_online.experts.backends.sequence_classifier import SequenceClassifierExpert

        labels = label_map(spec)
        expert = SequenceClassifierExpert(
            spec.model or "", name=spec.name, **options, **({"label_map": labels} if labels else {})
        )
    elif spec.backend == "profanity-check":
        from aegis_online.experts.cpu import ProfanityExpert

        expert = ProfanityExpert(name=spec.name, **options)
    elif spec.backend == "lexical":
        from aegis_online.experts.cpu import LexicalExpert

        expert = LexicalExpert(name=spec.name, **options)
    else:
        from aegis_online.experts.cpu import EmbeddingExpert

        expert = EmbeddingExpert(name=spec.name, **options)
    if spec.categories is not None:
        uncovered = sorted(set(spec.categories) - expert.categories)
        if uncovered:
            raise CatalogError(f"{spec.name}: categories: {uncovered} are not covered by this expert")
        expert.categories = frozenset(spec.categories)
    expert.languages = spec.reads_languages
    return expert
