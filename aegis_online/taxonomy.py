"""The shared vocabulary of harm categories for the whole ensemble.

Every expert in the ensemble speaks its own taxonomy (Llama Guard's MLCommons hazards, OpenAI's
moderation names, ShieldGemma's harm types, ...). The learner can only combine their opinions if they
are first projected onto one common set of labels, so this module fixes that set -- Aegis 2.0's S1..S23
(the NemoGuard content-safety taxonomy) and S24, prompt attacks -- and declares, once, how each external taxonomy
maps onto it.
Tenants may add their own categories at run time; those are scored only by experts that accept a
free-form policy text.

This module sits at the bottom of the architecture: it must import nothing from the project and no
third-party package (standard library only), so that every other module can depend on it without cycles
and it can be loaded anywhere, including inside guard-model prompt builders.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "AEGIS_2_IDS",
    "CANONICAL",
    "CANONICAL_IDS",
    "CUSTOM_PREFIX",
    "EXTERNAL",
    "LLAMA_GUARD_3",
    "LLAMA_GUARD_3_MAP",
    "LLAMA_GUARD_3_NAMES",
    "OPENAI_EVAL",
    "OPENAI_EVAL_MAP",
    "OPENAI_OMNI",
    "OPENAI_OMNI_MAP",
    "PERSPECTIVE",
    "PERSPECTIVE_MAP",
    "PROMPT_GUARD",
    "PROMPT_GUARD_MAP",
    "QWEN3GUARD",
    "QWEN3GUARD_MAP",
    "SHIELDGEMMA",
    "SHIELDGEMMA_MAP",
    "Category",
    "CategorySet",
    "ExternalTaxonomy",
    "category",
    "custom_category",
]

CUSTOM_PREFIX = "custom:"
"""Prefix of tenant-defined category ids; keeps them from ever colliding with Aegis' "S<n>" ids."""

MAX_CUSTOM_NAME_LEN = 64
MAX_CUSTOM_DESCRIPTION_LEN = 2000


@dataclass(frozen=True)
class Category:
    """One harm category.

    Frozen because categories are used as dictionary keys and shared by every expert and tenant; a
    mutation in one place would silently change what another expert is being asked to score.
    ``id`` is the stable key persisted in learner state and logs; ``slug`` is the human-friendly short
    name; ``description`` doubles as the policy text handed to guard models that take a free-form policy.
    """

    id: str
    name: str
    slug: str
    description: str
    custom: bool = False


def _c(n: int, name: str, slug: str, description: str) -> Category:
    return Category(id=f"S{n}", name=name, slug=slug, description=description)


CANONICAL: tuple[Category, ...] = (
    _c(
        1,
        "Violence",
        "violence",
        "Content that depicts, glorifies, encourages or helps carry out physical harm against people or "
        "animals, including graphic descriptions of injury, killing or torture.",
    ),
    _c(
        2,
        "Sexual",
        "sexual",
        "Sexually explicit content, descriptions of sexual acts, or content meant to cause sexual arousal, "
        "involving adults.",
    ),
    _c(
        3,
        "Criminal Planning/Confessions",
        "criminal_planning",
        "Content that helps plan, prepare or carry out a crime, or in which someone admits to having "
        "committed a crime and seeks help to continue or conceal it.",
    ),
    _c(
        4,
        "Guns and Illegal Weapons",
        "guns_illegal_weapons",
        "Content that helps acquire, build, modify or use firearms, explosives or other weapons illegally, "
        "including weapons capable of mass casualties.",
    ),
    _c(
        5,
        "Controlled/Regulated Substances",
        "controlled_substances",
        "Content that helps produce, obtain, traffic or misuse illegal drugs, or regulated substances such "
        "as alcohol, tobacco or prescription medication outside lawful use.",
    ),
    _c(
        6,
        "Suicide and Self Harm",
        "suicide_self_harm",
        "Content that encourages, instructs in, or expresses intent toward suicide, self-injury or disordered eating.",
    ),
    _c(
        7,
        "Sexual (minor)",
        "sexual_minor",
        "Any sexual or sexualising content involving a minor, including grooming and content that "
        "facilitates the sexual exploitation of children.",
    ),
    _c(
        8,
        "Hate/Identity Hate",
        "hate",
        "Content that demeans, dehumanises or promotes hostility toward people because of a protected "
        "attribute such as race, ethnicity, religion, gender, sexual orientation or disability.",
    ),
    _c(
        9,
        "PII/Privacy",
        "pii_privacy",
        "Content that reveals, requests or helps collect sensitive personal information about a private "
        "individual, or helps track or surveil someone without consent.",
    ),
    _c(
        10,
        "Harassment",
        "harassment",
        "Content that bullies, insults, intimidates or demeans a specific person or group, or encourages "
        "others to do so.",
    ),
    _c(
        11,
        "Threat",
        "threat",
        "Content that expresses or conveys an intention to inflict harm, damage or loss on a person, group "
        "or institution.",
    ),
    _c(
        12,
        "Profanity",
        "profanity",
        "Content that uses swear words, obscenities or vulgar language gratuitously or aggressively.",
    ),
    _c(
        13,
        "Needs Caution",
        "needs_caution",
        "Content that is not clearly harmful but is sensitive or ambiguous enough that it should be handled "
        "carefully or reviewed before being acted on.",
    ),
    _c(14, "Other", "other", "Content that is unsafe in a way not captured by any other category."),
    _c(
        15,
        "Manipulation",
        "manipulation",
        "Content that uses deception, coercion or psychological pressure to steer someone into acting "
        "against their own interests or beliefs.",
    ),
    _c(
        16,
        "Fraud/Deception",
        "fraud_deception",
        "Content that helps deceive people for gain, such as scams, phishing, impersonation, forgery or "
        "financial fraud.",
    ),
    _c(
        17,
        "Malware",
        "malware",
        "Content that creates, improves or deploys malicious software or helps compromise computer systems, "
        "networks or accounts without authorisation.",
    ),
    _c(
        18,
        "High Risk Gov Decision Making",
        "high_risk_gov_decision",
        "Content that makes or automates high-stakes governmental decisions about people, such as law "
        "enforcement, immigration, welfare eligibility or election administration.",
    ),
    _c(
        19,
        "Political/Misinformation/Conspiracy",
        "political_misinformation",
        "Content that spreads false or misleading claims about political, civic, health or historical "
        "matters, election misinformation, or unfounded conspiracy theories.",
    ),
    _c(
        20,
        "Copyright/Trademark/Plagiarism",
        "copyright",
        "Content that reproduces or helps infringe copyrighted works or trademarks, or passes off another's "
        "work as one's own.",
    ),
    _c(
        21,
        "Unauthorized Advice",
        "unauthorized_advice",
        "Content that gives specialised medical, legal, financial or other professional advice that should "
        "come from a qualified professional and could cause harm if followed.",
    ),
    _c(
        22,
        "Illegal Activity",
        "illegal_activity",
        "Content that promotes, facilitates or instructs in unlawful activity not covered by a more specific category.",
    ),
    _c(
        23,
        "Immoral/Unethical",
        "immoral_unethical",
        "Content that, while possibly legal, encourages clearly unethical or immoral behaviour such as "
        "cheating, cruelty or exploiting others.",
    ),
    _c(
        24,
        "Prompt Attack",
        "prompt_attack",
        "Input written to subvert the assistant rather than to use it: jailbreaks that try to lift its safety "
        "rules, and prompt injections that smuggle instructions into a conversation or a document it reads.",
    ),
)
"""Aegis 2.0's categories S1..S23, then S24 Prompt Attack, this project's own (Aegis 2.0 has no category for
jailbreaks and injections; Llama Prompt Guard 2 and Qwen3Guard's ``Jailbreak`` score it). The order is the canonical
column order of score vectors."""

AEGIS_2_IDS: tuple[str, ...] = tuple(f"S{n}" for n in range(1, 24))
"""The Aegis 2.0 categories alone: what NemoGuard's prompt lists and the zero-shot embedding expert scores by
default (a description is no prototype of an attack's form)."""

CANONICAL_IDS: tuple[str, ...] = tuple(c.id for c in CANONICAL)

_CANONICAL_BY_KEY: Mapping[str, Category] = MappingProxyType(
    {c.id: c for c in CANONICAL} | {c.slug: c for c in CANONICAL}
)


def category(id_or_slug: str) -> Category:
    """Return the canonical category with this id ("S6") or slug ("suicide_self_harm").

    Raises KeyError listing the valid ids, because a typo in a config or expert adapter is far easier to
    fix when the error shows what was expected.
    """
    try:
        return _CANONICAL_BY_KEY[id_or_slug]
    except KeyError:
        raise KeyError(f"unknown canonical category {id_or_slug!r}; valid ids: {', '.join(CANONICAL_IDS)}") from None


def _is_custom_id(cat_id: str) -> bool:
    return cat_id.startswith(CUSTOM_PREFIX)


# --------------------------------------------------------------------------------------------------
# External taxonomies
# --------------------------------------------------------------------------------------------------


def _validate_map(taxonomy: str, labels: tuple[str, ...], to_canonical: Mapping[str, frozenset[str]]) -> None:
    """Reject a declared map that would silently drop or invent scores.

    A label with no target would lose that expert's signal; a target outside S1..S24 would create a score
    column nobody reads. Both are declaration bugs, so they fail loudly at import time.
    """
    if len(set(labels)) != len(labels):
        raise ValueError(f"taxonomy {taxonomy!r}: duplicate labels in {labels!r}")
    if set(labels) != set(to_canonical):
        missing = sorted(set(labels) - set(to_canonical))
        extra = sorted(set(to_canonical) - set(labels))
        raise ValueError(f"taxonomy {taxonomy!r}: labels without a mapping {missing}, mapped non-labels {extra}")
    for label in labels:
        targets = to_canonical[label]
        if not targets:
            raise ValueError(f"taxonomy {taxonomy!r}: label {label!r} maps to no canonical category")
        invalid = sorted(t for t in targets if t not in CANONICAL_IDS)
        if invalid:
            raise ValueError(f"taxonomy {taxonomy!r}: label {label!r} maps to invalid canonical ids {invalid}")


@dataclass(frozen=True)
class ExternalTaxonomy:
    """A foreign label set and its declared many-to-many relation to the canonical categories.

    The relation is recall-oriented: a label maps to every canonical category whose meaning it overlaps,
    and both projections take the MAX over related labels. That means a harmful score is never diluted or
    lost on the way through the canonical space, at the price of projections being upper bounds (e.g. a
    plain hate score also lifts OpenAI's "hate/threatening" when projected back). Over-flagging is the
    safe failure mode for moderation; the learner calibrates it away per expert.

    Only ``to_canonical`` is declared; ``from_canonical`` is derived from it so the two directions can
    never disagree.
    """

    name: str
    labels: tuple[str, ...]
    to_canonical: Mapping[str, frozenset[str]]
    _inverse: Mapping[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _validate_map(self.name, self.labels, self.to_canonical)
        # Copy into a read-only view so the frozen taxonomy cannot be mutated through the caller's dict.
        frozen_map = MappingProxyType({label: frozenset(self.to_canonical[label]) for label in self.labels})
        inverse: dict[str, set[str]] = {}
        for label in self.labels:
            for cat_id in frozen_map[label]:
                inverse.setdefault(cat_id, set()).add(label)
        object.__setattr__(self, "to_canonical", frozen_map)
        object.__setattr__(self, "_inverse", MappingProxyType({k: frozenset(v) for k, v in inverse.items()}))

    def from_canonical(self, cat_id: str) -> frozenset[str]:
        """External labels related to canonical category ``cat_id`` (empty if none).

        Custom category ids yield the empty set because no external taxonomy can express a tenant's
        policy; any other unknown id raises KeyError since it is almost certainly a typo.
        """
        if cat_id not in CANONICAL_IDS and not _is_custom_id(cat_id):
            raise KeyError(f"unknown canonical category {cat_id!r}; valid ids: {', '.join(CANONICAL_IDS)}")
        return self._inverse.get(cat_id, frozenset())

    def scores_to_canonical(self, scores: Mapping[str, float]) -> dict[str, float]:
        """Project this taxonomy's scores onto canonical ids, max over related labels.

        Canonical categories no given label covers are absent rather than 0.0, so the learner can tell
        "expert said safe" from "expert has no opinion". Unknown labels raise KeyError: an adapter emitting
        a label we never mapped would otherwise be silently ignored.
        """
        out: dict[str, float] = {}
        for label, score in scores.items():
            targets = self.to_canonical.get(label)
            if targets is None:
                raise KeyError(f"unknown label {label!r} for taxonomy {self.name!r}")
            for cat_id in targets:
                out[cat_id] = max(out[cat_id], score) if cat_id in out else score
        return {cat_id: out[cat_id] for cat_id in CANONICAL_IDS if cat_id in out}

    def scores_from_canonical(self, scores: Mapping[str, float]) -> dict[str, float]:
        """Project canonical scores back onto this taxonomy's labels, max over related categories.

        Used to evaluate the ensemble against benchmarks labelled in a foreign taxonomy. Labels with no
        related category present in ``scores`` are absent. Custom category scores are skipped because no
        external label can express them.
        """
        out: dict[str, float] = {}
        for cat_id, score in scores.items():
            for label in self.from_canonical(cat_id):
                out[label] = max(out[label], score) if label in out else score
        return {label: out[label] for label in self.labels if label in out}


LLAMA_GUARD_3_NAMES: dict[str, str] = {
    "S1": "Violent Crimes",
    "S2": "Non-Violent Crimes",
    "S3": "Sex-Related Crimes",
    "S4": "Child Sexual Exploitation",
    "S5": "Defamation",
    "S6": "Specialized Advice",
    "S7": "Privacy",
    "S8": "Intellectual Property",
    "S9": "Indiscriminate Weapons",
    "S10": "Hate",
    "S11": "Suicide & Self-Harm",
    "S12": "Sexual Content",
    "S13": "Elections",
    "S14": "Code Interpreter Abuse",
}
"""MLCommons hazard codes as Llama Guard 3 emits them -> hazard names (labels are the codes)."""

LLAMA_GUARD_3_MAP: dict[str, frozenset[str]] = {
    "S1": frozenset({"S1", "S11", "S3"}),  # violent crimes include threats and planning of violent acts
    "S2": frozenset({"S3", "S16", "S17", "S22", "S5"}),  # covers fraud, cyber crime and drug crimes too
    "S3": frozenset({"S2", "S3", "S22"}),  # trafficking, assault, prostitution: sexual and criminal
    "S4": frozenset({"S7"}),
    "S5": frozenset({"S10", "S19"}),  # defamation: false claims (S19) aimed at harming a real person (S10)
    "S6": frozenset({"S21"}),
    "S7": frozenset({"S9"}),
    "S8": frozenset({"S20"}),
    "S9": frozenset({"S4", "S1", "S22"}),  # CBRNE: weapons whose purpose is mass violence
    "S10": frozenset({"S8"}),
    "S11": frozenset({"S6"}),
    "S12": frozenset({"S2"}),
    "S13": frozenset({"S19", "S18"}),  # election misinformation and interference in electoral processes
    "S14": frozenset({"S17", "S22"}),  # abusing a code tool to attack or escape the host is malware-like
}

OPENAI_OMNI_MAP: dict[str, frozenset[str]] = {
    "harassment": frozenset({"S10"}),
    "harassment/threatening": frozenset({"S10", "S11"}),
    "hate": frozenset({"S8"}),
    "hate/threatening": frozenset({"S8", "S11"}),
    "illicit": frozenset({"S3", "S22"}),  # advice on committing wrongdoing is criminal planning
    "illicit/violent": frozenset({"S1", "S3", "S4", "S22"}),  # includes procuring weapons
    "self-harm": frozenset({"S6"}),
    "self-harm/instructions": frozenset({"S6"}),
    "self-harm/intent": frozenset({"S6"}),
    "sexual": frozenset({"S2"}),
    "sexual/minors": frozenset({"S7"}),  # S7 already means "sexual AND minor"; S2 would over-flag on return
    "violence": frozenset({"S1"}),
    "violence/graphic": frozenset({"S1"}),
}

OPENAI_EVAL_MAP: dict[str, frozenset[str]] = {
    "S": frozenset({"S2"}),
    "H": frozenset({"S8"}),
    "V": frozenset({"S1"}),
    "HR": frozenset({"S10"}),
    "SH": frozenset({"S6"}),
    "S3": frozenset({"S7"}),
    "H2": frozenset({"S8", "S11"}),
    "V2": frozenset({"S1"}),
}

SHIELDGEMMA_MAP: dict[str, frozenset[str]] = {
    # ShieldGemma's "dangerous" is about enabling harm (weapons, drugs, self-harm instructions, attacks).
    "Dangerous Content": frozenset({"S3", "S4", "S5", "S6", "S17", "S22"}),
    "Harassment": frozenset({"S10", "S11"}),  # ShieldGemma's definition explicitly includes threats
    "Hate Speech": frozenset({"S8"}),
    "Sexually Explicit Information": frozenset({"S2"}),
}

#: Google Perspective API's attributes (production and the experimental ones our categories can score). Perspective
#: scores how a comment reads to a reader, so TOXICITY ("rude, disrespectful or unreasonable") spans hate,
#: harassment, threats and profanity; SEVERE_TOXICITY leaves plain profanity out. Attributes we have no category for
#: (FLIRTATION, the New York Times set, SPAM, INCOHERENT, ...) are not declared: asking for one is an error, as
#: an unknown attribute is on Perspective.
PERSPECTIVE_MAP: dict[str, frozenset[str]] = {
    "TOXICITY": frozenset({"S8", "S10", "S11", "S12"}),
    "SEVERE_TOXICITY": frozenset({"S8", "S10", "S11"}),
    "IDENTITY_ATTACK": frozenset({"S8"}),
    "INSULT": frozenset({"S10"}),
    "PROFANITY": frozenset({"S12"}),
    "THREAT": frozenset({"S11"}),
    "SEXUALLY_EXPLICIT": frozenset({"S2", "S7"}),
}

#: Qwen3Guard-Gen's categories (QwenLM/Qwen3Guard README). "Unethical Acts" spans bias, hate, harassment, insults,
#: threats and other legal but unethical conduct; "Jailbreak" appears on prompt checks only.
QWEN3GUARD_MAP: dict[str, frozenset[str]] = {
    "Violent": frozenset({"S1", "S4"}),
    "Non-violent Illegal Acts": frozenset({"S3", "S5", "S16", "S17", "S22"}),
    "Sexual Content or Sexual Acts": frozenset({"S2", "S7"}),
    "PII": frozenset({"S9"}),
    "Suicide & Self-Harm": frozenset({"S6"}),
    "Unethical Acts": frozenset({"S8", "S10", "S11", "S12", "S15", "S23"}),
    "Politically Sensitive Topics": frozenset({"S19"}),
    "Copyright Violation": frozenset({"S20"}),
    "Jailbreak": frozenset({"S24"}),
}

#: Llama Prompt Guard 2's labels (a sequence classifier): its malicious class is a prompt attack.
PROMPT_GUARD_MAP: dict[str, frozenset[str]] = {"MALICIOUS": frozenset({"S24"})}

LLAMA_GUARD_3 = ExternalTaxonomy("llama_guard_3", tuple(LLAMA_GUARD_3_NAMES), LLAMA_GUARD_3_MAP)
OPENAI_OMNI = ExternalTaxonomy("openai_omni", tuple(OPENAI_OMNI_MAP), OPENAI_OMNI_MAP)
OPENAI_EVAL = ExternalTaxonomy("openai_eval", tuple(OPENAI_EVAL_MAP), OPENAI_EVAL_MAP)
SHIELDGEMMA = ExternalTaxonomy("shieldgemma", tuple(SHIELDGEMMA_MAP), SHIELDGEMMA_MAP)
PERSPECTIVE = ExternalTaxonomy("perspective", tuple(PERSPECTIVE_MAP), PERSPECTIVE_MAP)
QWEN3GUARD = ExternalTaxonomy("qwen3guard", tuple(QWEN3GUARD_MAP), QWEN3GUARD_MAP)
PROMPT_GUARD = ExternalTaxonomy("prompt_guard", tuple(PROMPT_GUARD_MAP), PROMPT_GUARD_MAP)

EXTERNAL: dict[str, ExternalTaxonomy] = {
    t.name: t for t in (LLAMA_GUARD_3, OPENAI_OMNI, OPENAI_EVAL, SHIELDGEMMA, PERSPECTIVE, QWEN3GUARD, PROMPT_GUARD)
}


# --------------------------------------------------------------------------------------------------
# Tenant-defined categories
# --------------------------------------------------------------------------------------------------


def _slugify(name: str) -> str:
    # ASCII-only so ids stay safe in prompts, metric labels and file names; accents fold to base letters.
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9]+", "_", ascii_name.lower()).strip("_")


def custom_category(name: str, description: str) -> Category:
    """Build a tenant-defined category with id ``"custom:<slug>"``.

    Custom categories are scored only by experts that accept a free-form policy (the description is sent
    as that policy), so the description must say what content is unsafe. Length limits keep a tenant from
    blowing up every guard prompt.
    """
    if len(name) > MAX_CUSTOM_NAME_LEN:
        raise ValueError(f"name must be at most {MAX_CUSTOM_NAME_LEN} characters, got {len(name)}")
    slug = _slugify(name)
    if not slug:
        raise ValueError(f"name must contain at least one ASCII letter or digit, got {name!r}")
    if not description.strip():
        raise ValueError("description must not be empty or whitespace")
    if len(description) > MAX_CUSTOM_DESCRIPTION_LEN:
        raise ValueError(f"description must be at most {MAX_CUSTOM_DESCRIPTION_LEN} characters, got {len(description)}")
    return Category(id=CUSTOM_PREFIX + slug, name=name.strip(), slug=slug, description=description.strip(), custom=True)


@dataclass(frozen=True)
class CategorySet:
    """An immutable set of categories a tenant is moderated against: canonical plus custom ones.

    Immutable so a set can be shared across requests and threads and used as a cache key; adding a
    category returns a new set. Custom categories are scored only by experts that accept a free-form
    policy; fixed-taxonomy experts simply have no opinion on them.
    """

    categories: tuple[Category, ...]
    _by_id: Mapping[str, Category] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        categories = tuple(self.categories)
        by_id = {c.id: c for c in categories}
        if len(by_id) != len(categories):
            raise ValueError("category ids must be unique")
        if len({c.slug for c in categories}) != len(categories):
            raise ValueError("category slugs must be unique")
        object.__setattr__(self, "categories", categories)
        object.__setattr__(self, "_by_id", MappingProxyType(by_id))

    @classmethod
    def default(cls) -> CategorySet:
        """The canonical S1..S24 categories with no custom additions."""
        return cls(CANONICAL)

    def with_custom(self, name: str, description: str) -> CategorySet:
        """Return a new set that also contains the custom category built from ``name``/``description``.

        Clashes are rejected on slug as well as id, since a custom "Violence" beside canonical S1
        "violence" would make slug look-ups and reports ambiguous.
        """
        new = custom_category(name, description)
        for existing in self.categories:
            if existing.id == new.id or existing.slug == new.slug:
                raise ValueError(f"custom category {new.id!r} clashes with existing category {existing.id!r}")
        return CategorySet((*self.categories, new))

    @property
    def ids(self) -> tuple[str, ...]:
        """Category ids in insertion order (canonical first), the column order of score vectors."""
        return tuple(self._by_id)

    def __contains__(self, cat_id: object) -> bool:
        return isinstance(cat_id, str) and cat_id in self._by_id

    def __getitem__(self, cat_id: str) -> Category:
        try:
            return self._by_id[cat_id]
        except KeyError:
            raise KeyError(f"unknown category {cat_id!r}; valid ids: {', '.join(self._by_id)}") from None

    def __iter__(self) -> Iterator[Category]:
        return iter(self.categories)

    def __len__(self) -> int:
        return len(self.categories)
