"""The verdict prefixes reach the right token under the backends' shared reading rule.

Response checks of NemoGuard and WildGuard put their verdict after others the model writes first; their prefixes
are the text written just before it, which the backends look for inside the generated text.
"""

from __future__ import annotations

import math

import pytest

from aegis_online.experts.guards import NemoGuardContentSafety, WildGuard

backend_verdict = pytest.importorskip("aegis_online.experts.backends.verdict_logprobs")


def _steps(tokens: list[str], at: str, candidates: dict[str, float]) -> list[tuple[str, dict[str, float]]]:
    """Generated tokens, with ``candidates`` as the logprobs at the first token equal to ``at``."""
    index = tokens.index(at)
    return [(t, candidates if i == index else {t: 0.0}) for i, t in enumerate(tokens)]


def test_nemoguard_response_prefix_reads_the_response_verdict_not_the_user_one(response_item) -> None:
    (query,) = NemoGuardContentSafety().queries(response_item)
    tokens = [
        '{"',
        "User",
        " Safety",
        '":',
        ' "',
        "unsafe",
        '",',
        ' "',
        "Response",
        " Safety",
        '":',
        ' "',
        "safe",
        '"}',
    ]
    steps = _steps(tokens, "safe", {"safe": -0.1, "unsafe": -2.4})
    p = backend_verdict.verdict_probability(steps, query.positive, query.negative, query.verdict_prefix)
    assert p == pytest.approx(1 / (1 + math.exp(2.3)), rel=1e-9)


def test_nemoguard_prompt_prefix_reads_the_user_verdict(prompt_item) -> None:
    (query,) = NemoGuardContentSafety().queries(prompt_item)
    tokens = ['{"', "User", " Safety", '":', ' "', "unsafe", '",', ' "', "Safety", " Categories", '":', ' "', "Threat"]
    steps = _steps(tokens, "unsafe", {"unsafe": -0.05, "safe": -3.0})
    assert backend_verdict.verdict_probability(steps, query.positive, query.negative, query.verdict_prefix) > 0.9


def test_wildguard_response_prefix_reads_the_third_line(response_item) -> None:
    (query,) = WildGuard().queries(response_item)
    tokens = ["Harm", "ful", " request", ":", " yes", "\n", "Response", " refusal", ":", " no", "\n"]
    tokens += ["Response", " harmful", ":", " no"]
    steps = [(t, {t: 0.0}) for t in tokens[:-1]] + [(" no", {" no": -0.2, " yes": -1.9})]
    p = backend_verdict.verdict_probability(steps, query.positive, query.negative, query.verdict_prefix)
    assert p == pytest.approx(1 / (1 + math.exp(1.7)), rel=1e-9)
