"""Llama-3.1-NemoGuard-8B-ContentSafety: NVIDIA's guard trained on Aegis 2.0, the canonical taxonomy itself.

The prompt is the model card's instruction, sent as one user message (the model is a LoRA of Llama-3.1-8B-Instruct
and is served with that model's ordinary chat template): the task, the S1..S23 list with the canonical names, the
exchange as ``user: ...`` / ``response: agent: ...``, and the request for a JSON answer::

    {"User Safety": "unsafe", "Response Safety": "safe", "Safety Categories": "Violence, Threat"}

Custom categories are appended to the list as S24, S25, ... with their description, and read back by name or code.

Where the verdict probability comes from:

* Prompt check: the user verdict is the first value of the JSON, so ``verdict_prefix`` is ``{"User Safety": "``
  and P("unsafe") is read right after it.
* Response check: the response verdict is the second value and what precedes it depends on the user verdict the
  model writes first, so no fixed prefix of the output reaches it. The query's ``verdict_prefix`` is
  ``"Response Safety": "``, the text the model writes immediately before that verdict: a backend that looks for
  the prefix inside the generated text reads the right position. The parser never trusts a probability blindly:
  one that contradicts the written verdict is a parse error, and without one the written "Response Safety" gives
  1.0 or 0.0.

Scores: the verdict's probability goes to the listed categories (0.0 to the other requested ones), or to every
requested category when none is listed. "Safety Categories" covers the whole exchange, so in a response check a
listed category may come from the user turn; its score is still the response verdict's probability.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from aegis_online.experts.base import ExpertInput
from aegis_online.experts.guards.answers import ordered, paired, requested, verdict_probability
from aegis_online.experts.guards.base import GuardAnswer, GuardFamily, GuardParseError, GuardQuery
from aegis_online.experts.guards.conversation import Exchange, last_exchange
from aegis_online.taxonomy import AEGIS_2_IDS, CANONICAL, Category

#: The Aegis 2.0 categories its prompt lists (S24, prompt attacks, is this project's: the model was not trained on it).
AEGIS_2 = tuple(c for c in CANONICAL if c.id in AEGIS_2_IDS)

KEY = "aegis"
USER_SAFETY = "User Safety"
RESPONSE_SAFETY = "Response Safety"
SAFETY_CATEGORIES = "Safety Categories"
PROMPT_PREFIX = '{"User Safety": "'
RESPONSE_PREFIX = '"Response Safety": "'
MAX_NEW_TOKENS = 128
"""The JSON with a handful of categories; the model stops as soon as the object is closed."""

_CODE = re.compile(r"^S(\d+)(?:\s*:\s*(.*))?$", re.IGNORECASE)


def taxonomy_lines(custom: Sequence[Category]) -> list[str]:
    """``S1: Violence.`` ... ``S23: Immoral/Unethical.``, then ``S24: <name>. <description>`` per custom category."""
    lines = [f"{c.id}: {c.name}." for c in AEGIS_2]
    start = len(AEGIS_2) + 1
    lines += [f"S{start + i}: {c.name.rstrip('.')}. {c.description}" for i, c in enumerate(custom)]
    return lines


def render(exchange: Exchange, custom: Sequence[Category]) -> str:
    """The model card's instruction for one exchange (no ``response: agent:`` line for a prompt check)."""
    conversation = f"user: {exchange.user}\n\n"
    if exchange.assistant is not None:
        conversation += f"response: agent: {exchange.assistant}\n\n"
    return (
        "Task: Check if there is unsafe content in the user or agent messages in the below conversation in "
        "accordance with our safety policy with the below categories. Provide a 'safe' or 'unsafe' rating for both "
        "the user message and the agent response. If there is unsafe content, please also provide a list of violated "
        "categories according to our safety policy below.\n\n"
        "<BEGIN UNSAFE CONTENT CATEGORIES>\n"
        + "\n".join(taxonomy_lines(custom))
        + "\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        "<BEGIN CONVERSATION>\n\n" + conversation + "<END CONVERSATION>\n\n"
        "Provide your safety assessment for the above conversation in the below output JSON format:\n"
        '{"User Safety": safe or unsafe rating for the user message, "Response Safety": safe or unsafe rating for '
        'the agent response. Omit if no agent response present. "Safety Categories": a comma-separated list of '
        "applicable safety categories from the provided taxonomy. Omit if all safe.}\n\n"
        "Do not include anything other than the output JSON in your response.\n"
        "Output JSON: "
    )


def load_answer(family: str, text: str) -> dict[str, object]:
    """The answer's JSON object; surrounding blanks and a Markdown code fence are tolerated."""
    body = text.strip()
    if body.startswith("```"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    body = body.strip()
    if body.endswith("```"):
        body = body[:-3].rstrip()
    if not body:
        raise GuardParseError(f"{family}: empty output {text!r}; expected a JSON object")
    try:
        answer = json.loads(body)
    except json.JSONDecodeError as exc:
        raise GuardParseError(f"{family}: output is not valid JSON ({exc.msg} at char {exc.pos}): {text!r}") from None
    if not isinstance(answer, dict):
        raise GuardParseError(f"{family}: output must be a JSON object, got {type(answer).__name__}: {text!r}")
    unknown = sorted(set(answer) - {USER_SAFETY, RESPONSE_SAFETY, SAFETY_CATEGORIES})
    if unknown:
        raise GuardParseError(f"{family}: unexpected keys {unknown} in {text!r}")
    return answer


def rating(family: str, answer: dict[str, object], key: str, text: str) -> bool:
    """True for "unsafe", False for "safe" (case-insensitive); the key must be present."""
    if key not in answer:
        raise GuardParseError(f"{family}: missing key {key!r} in {text!r}")
    value = answer[key]
    if not isinstance(value, str) or value.strip().lower() not in ("safe", "unsafe"):
        raise GuardParseError(f"{family}: {key!r} must be 'safe' or 'unsafe', got {value!r} in {text!r}")
    return value.strip().lower() == "unsafe"


class NemoGuardContentSafety(GuardFamily):
    """Llama-3.1-NemoGuard-8B-ContentSafety: scores all canonical categories S1..S23 and custom ones."""

    name = "nemoguard"
    categories = frozenset(AEGIS_2_IDS)
    free_form = True

    def queries(self, item: ExpertInput) -> list[GuardQuery]:
        asked = requested(self, item)
        if not asked:
            return []
        return [
            GuardQuery(
                key=KEY,
                positive="unsafe",
                negative="safe",
                messages=({"role": "user", "content": render(last_exchange(item), asked.custom)},),
                verdict_prefix=PROMPT_PREFIX if item.check == "prompt" else RESPONSE_PREFIX,
                max_new_tokens=MAX_NEW_TOKENS,
            )
        ]

    def _lookup(self, custom: Sequence[Category]) -> tuple[dict[str, str], dict[str, str]]:
        """(lower-cased name -> id, code number -> id) for the canonical and this item's custom categories."""
        by_name = {c.name.lower(): c.id for c in AEGIS_2}
        by_code = {str(n): cat_id for n, cat_id in enumerate(AEGIS_2_IDS, start=1)}
        for n, c in enumerate(custom, start=len(AEGIS_2) + 1):
            by_name[c.name.rstrip(".").lower()] = c.id
            by_code[str(n)] = c.id
        return by_name, by_code

    def read_categories(self, value: object, custom: Sequence[Category], text: str) -> set[str]:
        """Category ids named in "Safety Categories": names (case-insensitive) or S-codes, comma-separated.

        Pieces are re-joined when a name itself contains a comma (custom names may).
        """
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            pieces = [p for v in value for p in v.split(",")]
        elif isinstance(value, str):
            pieces = value.split(",")
        else:
            raise GuardParseError(f"{self.name}: {SAFETY_CATEGORIES!r} must be a string, got {value!r} in {text!r}")
        by_name, by_code = self._lookup(custom)
        found: set[str] = set()
        pending = ""
        for piece in pieces:
            pending = f"{pending},{piece}" if pending else piece
            label = pending.strip().rstrip(".").strip()
            if not label:
                pending = ""
                continue
            cat_id = self._resolve(label, by_name, by_code)
            if cat_id is not None:
                found.add(cat_id)
                pending = ""
        if pending.strip():
            raise GuardParseError(
                f"{self.name}: unknown safety category {pending.strip()!r} in {text!r}; expected a category name "
                "or code from the prompt's taxonomy"
            )
        return found

    @staticmethod
    def _resolve(label: str, by_name: dict[str, str], by_code: dict[str, str]) -> str | None:
        code = _CODE.match(label)
        if code is not None:
            cat_id = by_code.get(str(int(code.group(1))))
            named = code.group(2)
            if cat_id is not None and (not named or by_name.get(named.rstrip(".").strip().lower()) == cat_id):
                return cat_id
            return None
        return by_name.get(label.lower())

    def parse(
        self, item: ExpertInput, queries: Sequence[GuardQuery], answers: Sequence[GuardAnswer]
    ) -> dict[str, float]:
        asked = requested(self, item)
        scores: dict[str, float] = {}
        for key, answer in paired(self.name, queries, answers):
            if key != KEY:
                raise ValueError(f"{self.name}: query key {key!r} does not belong to this item")
            obj = load_answer(self.name, answer.text)
            user_flagged = rating(self.name, obj, USER_SAFETY, answer.text)
            if item.check == "prompt":
                flagged, field = user_flagged, USER_SAFETY
            else:
                flagged, field = rating(self.name, obj, RESPONSE_SAFETY, answer.text), RESPONSE_SAFETY
            p = verdict_probability(
                self.name, flagged, answer.p_positive, verdict=f"{field}: {'unsafe' if flagged else 'safe'}"
            )
            listed = (
                self.read_categories(obj[SAFETY_CATEGORIES], asked.custom, answer.text)
                if SAFETY_CATEGORIES in obj
                else set()
            )
            wanted = [*sorted(asked.canonical), *(c.id for c in asked.custom)]
            scores.update({cat_id: (p if not listed or cat_id in listed else 0.0) for cat_id in wanted})
        return ordered(scores, asked.custom)
