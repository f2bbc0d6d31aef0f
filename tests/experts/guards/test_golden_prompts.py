"""Every family renders exactly the prompts stored in golden/ (read against the model cards when written).

Run with ``AEGIS_UPDATE_GOLDEN=1`` to rewrite the files after a deliberate prompt change, then review the diff.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from aegis_online.experts.guards import make_family
from aegis_online.experts.guards.base import GuardQuery

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("AEGIS_UPDATE_GOLDEN") == "1"

CASES = [
    (family, mode)
    for family in (
        "llama_guard_3",
        "llama_guard_4",
        "shieldgemma",
        "nemoguard",
        "wildguard",
        "granite_guardian",
        "qwen3guard_gen",
        "nemotron_content_safety",
        "gpt_oss_safeguard",
    )
    for mode in ("prompt", "response", "custom")
    if not (family in ("wildguard", "qwen3guard_gen") and mode == "custom")  # no free-form policy
]


def render_queries(queries: Sequence[GuardQuery]) -> str:
    """All queries of an item as text: a header with the query's fields, the prompt verbatim, an end marker."""
    parts = []
    for n, q in enumerate(queries, start=1):
        form = "raw prompt" if q.prompt is not None else "messages: " + ", ".join(m["role"] for m in q.messages)
        parts.append(
            f"=== query {n}/{len(queries)} | key={q.key!r} | positive={q.positive!r} | negative={q.negative!r} "
            f"| verdict_prefix={q.verdict_prefix!r} | max_new_tokens={q.max_new_tokens} | {form}"
            + (f" | verdict_occurrence={q.verdict_occurrence!r}" if q.verdict_occurrence != "first" else "")
            + (f" | other_verdicts={q.other_verdicts!r}" if q.other_verdicts else "")
            + (f" | template_kwargs={dict(q.template_kwargs)!r}" if q.template_kwargs else "")
            + " ===\n"
        )
        body = q.prompt if q.prompt is not None else "\n".join(m["content"] for m in q.messages)
        parts.append(body)
        parts.append(f"\n=== end of query {n} ===\n")
    return "".join(parts)


@pytest.mark.parametrize(("family", "mode"), CASES, ids=[f"{f}-{m}" for f, m in CASES])
def test_rendered_prompts_match_golden_file(family: str, mode: str, request: pytest.FixtureRequest) -> None:
    item = request.getfixturevalue(f"{mode}_item")
    rendered = render_queries(make_family(family).queries(item))
    path = GOLDEN / f"{family}_{mode}.txt"
    if UPDATE:
        path.write_text(rendered, encoding="utf-8", newline="")
    assert path.exists(), f"missing golden file {path.name}; run with AEGIS_UPDATE_GOLDEN=1 to create it"
    assert rendered == path.read_text(encoding="utf-8")


def test_every_golden_file_belongs_to_a_case() -> None:
    expected = {f"{family}_{mode}.txt" for family, mode in CASES}
    assert {p.name for p in GOLDEN.glob("*.txt")} == expected
