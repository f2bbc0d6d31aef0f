"""The verdict prefixes reach the right token under the backends' shared reading rule.

Response checks of NemoGuard and WildGuard put their verdict after others the model writes first; their prefixes
are the text written just before it, which the backends look for inside the generated text.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from aegis_online.experts.guards import NemoGuardContentSafety, WildGuard
from aegis_online.experts.guards.gpt_oss_safeguard import GptOssSafeguard
from aegis_online.experts.guards.nemotron_cs import NemotronContentSafety
from aegis_online.taxonomy import category
from tests.experts.guards.conftest import make_input

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


# ---------------------------------------------- models that reason first: the verdict of the answer, not the reasoning


def _vllm_output(tokens: list[tuple[str, dict[str, float]]]) -> SimpleNamespace:
    """A stand-in for vLLM's ``RequestOutput``: each token's text, its candidates' logprobs, ids by position."""
    steps = []
    for i, (text, candidates) in enumerate(tokens):
        step = {i * 100: SimpleNamespace(decoded_token=text, logprob=candidates.get(text, 0.0))}
        others = [(t, lp) for t, lp in candidates.items() if t != text]
        step.update({i * 100 + j: SimpleNamespace(decoded_token=t, logprob=lp) for j, (t, lp) in enumerate(others, 1)})
        steps.append(step)
    text = "".join(t for t, _ in tokens)
    return SimpleNamespace(
        outputs=[SimpleNamespace(text=text, logprobs=steps, token_ids=[i * 100 for i in range(len(tokens))])]
    )


def _chat_completion(tokens: list[tuple[str, dict[str, float]]], content: str) -> dict:
    """An OpenAI-compatible chat completion whose ``content`` is ``content`` and whose logprobs cover ``tokens``."""
    entries = [
        {"token": t, "logprob": c.get(t, 0.0), "top_logprobs": [{"token": k, "logprob": v} for k, v in c.items()]}
        for t, c in tokens
    ]
    return {"choices": [{"message": {"content": content}, "logprobs": {"content": entries}}]}


#: gpt-oss-safeguard restates the output format in its analysis (a 0), then answers 1 in the final channel;
#: special tokens are skipped in the decoded text, as vLLM's and transformers' decoding do by default.
SAFEGUARD_TOKENS = [
    ("analysis", {}),
    ("The policy says to output ", {}),
    ('{"violation":', {}),
    (" 0", {" 0": -0.05, " 1": -3.0}),
    (" if nothing applies. The user threatens to kill someone: S11.", {}),
    ("assistant", {}),
    ("final", {}),
    ('{"violation":', {}),
    (" 1", {" 1": -0.01, " 0": -5.0}),
    (', "policy_category": "S11"}', {}),
]
#: Nemotron 3.5 with thinking: the trace quotes the answer format with a safe verdict, the answer is unsafe.
NEMOTRON_TOKENS = [
    ("<think>", {}),
    ("Benign requests get User Safety:", {}),
    (" safe", {" safe": -0.02, " unsafe": -4.0}),
    (". This one threatens a person.</think>\n", {}),
    ("User Safety:", {}),
    (" unsafe", {" unsafe": -0.01, " safe": -5.0}),
    ("\nSafety Categories: Threat", {}),
]


@pytest.mark.parametrize("reader", ["vllm", "openai"])
@pytest.mark.parametrize(
    ("family", "tokens", "expected"),
    [
        (GptOssSafeguard("low"), SAFEGUARD_TOKENS, {"S1": 0.0, "S11": 1 / (1 + math.exp(-4.99))}),
        (NemotronContentSafety(thinking=True), NEMOTRON_TOKENS, {"S1": 0.0, "S11": 1 / (1 + math.exp(-4.99))}),
    ],
    ids=["gpt-oss-safeguard", "nemotron-thinking"],
)
def test_a_model_that_reasons_first_is_read_at_its_answers_verdict(family, tokens, expected, reader: str) -> None:
    """The reasoning quotes the verdict's prefix with the opposite verdict: the probability is the answer's."""
    from aegis_online.experts.backends.openai_http import answer_from_chat_completion
    from aegis_online.experts.backends.vllm_backend import answer_from_request_output

    item = make_input((("user", "I will kill my neighbour"),), "prompt", (category("S1"), category("S11")))
    (query,) = family.queries(item)
    if reader == "vllm":
        answer = answer_from_request_output(_vllm_output(tokens), query)
    else:  # a server that returns the final channel alone as the content, and logprobs for every token
        final = "".join(t for t, _ in tokens).rsplit("assistantfinal", 1)[-1]
        answer = answer_from_chat_completion(_chat_completion(tokens, final), query)
    assert family.parse(item, [query], [answer]) == pytest.approx(expected, rel=1e-9)
