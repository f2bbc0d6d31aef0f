"""Guard-LLM families: how each family is prompted and how its answer is read, independent of where it runs.

``FAMILIES`` maps the catalog name of each family to its class; ``make_family`` builds one from catalog options.

Examples
--------
>>> make_family("llama_guard_3", variant="1b").name
'llama_guard_3'
>>> sorted(FAMILIES)[:2]
['gpt_oss_safeguard', 'granite_guardian']
"""

from __future__ import annotations

from typing import Any

from aegis_online.catalog import GUARD_FAMILIES
from aegis_online.experts.guards.base import GuardAnswer, GuardFamily, GuardParseError, GuardQuery
from aegis_online.experts.guards.gpt_oss_safeguard import GptOssSafeguard
from aegis_online.experts.guards.granite_guardian import GraniteGuardian
from aegis_online.experts.guards.llama_guard import LlamaGuard3, LlamaGuard4
from aegis_online.experts.guards.nemoguard import NemoGuardContentSafety
from aegis_online.experts.guards.nemotron_cs import NemotronContentSafety
from aegis_online.experts.guards.qwen3guard import Qwen3GuardGen
from aegis_online.experts.guards.shieldgemma import ShieldGemma
from aegis_online.experts.guards.wildguard import WildGuard

__all__ = [
    "FAMILIES",
    "GptOssSafeguard",
    "GraniteGuardian",
    "GuardAnswer",
    "GuardFamily",
    "GuardParseError",
    "GuardQuery",
    "LlamaGuard3",
    "LlamaGuard4",
    "NemoGuardContentSafety",
    "NemotronContentSafety",
    "Qwen3GuardGen",
    "ShieldGemma",
    "WildGuard",
    "make_family",
]

FAMILIES: dict[str, type[GuardFamily]] = {
    "llama_guard_3": LlamaGuard3,
    "llama_guard_4": LlamaGuard4,
    "shieldgemma": ShieldGemma,
    "nemoguard": NemoGuardContentSafety,
    "wildguard": WildGuard,
    "granite_guardian": GraniteGuardian,
    "qwen3guard_gen": Qwen3GuardGen,
    "nemotron_content_safety": NemotronContentSafety,
    "gpt_oss_safeguard": GptOssSafeguard,
}
"""Catalog name -> family class; each class's ``name`` is its key."""
if sorted(FAMILIES) != sorted(GUARD_FAMILIES):  # the catalog validates entries against its list of names
    raise ImportError(f"guard families {sorted(FAMILIES)} differ from the catalog's {sorted(GUARD_FAMILIES)}")


def make_family(name: str, **options: Any) -> GuardFamily:
    """Build the family registered as ``name`` with its constructor ``options``.

    Raises ValueError listing the valid names when ``name`` is unknown.
    """
    try:
        family = FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown guard family {name!r}; valid names: {', '.join(FAMILIES)}") from None
    return family(**options)
