"""The vLLM backend: its output conversion on stand-ins shaped like vLLM's, and the engine itself where vLLM runs."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from aegis_online.experts.backends.vllm_backend import (
    VLLMGuardBackend,
    answer_from_request_output,
    steps_from_completion,
)
from aegis_online.experts.guards.base import GuardQuery

VLLM_MISSING = importlib.util.find_spec("vllm") is None


def logprob(value: float, text: str | None, rank: int = 1) -> SimpleNamespace:
    """Stand-in for ``vllm.logprobs.Logprob``."""
    return SimpleNamespace(logprob=value, rank=rank, decoded_token=text)


def request_output(
    text: str,
    steps: list[dict[int, SimpleNamespace]],
    token_ids: list[int] | None = None,
    finish_reason: str | None = "stop",
):
    """Stand-in for ``vllm.RequestOutput`` with one ``CompletionOutput``."""
    completion = SimpleNamespace(index=0, text=text, logprobs=steps, finish_reason=finish_reason)
    if token_ids is not None:
        completion.token_ids = token_ids
    return SimpleNamespace(request_id="0", outputs=[completion])


LLAMA_GUARD = GuardQuery(key="q", positive="unsafe", negative="safe", messages=({"role": "user", "content": "x"},))


def test_blank_line_then_verdict_is_read_at_the_verdict_token() -> None:
    output = request_output(
        "\n\nunsafe",
        [
            {271: logprob(-0.01, "\n\n"), 198: logprob(-5.0, "\n", 2)},
            {39257: logprob(-0.3, "unsafe"), 19193: logprob(-1.4, "safe", 2), 100: logprob(-4.0, " Unsafe", 3)},
        ],
        token_ids=[271, 39257],
    )
    answer = answer_from_request_output(output, LLAMA_GUARD)
    assert answer.text == "\n\nunsafe"
    assert answer.p_positive == pytest.approx(math.exp(-0.3) / (math.exp(-0.3) + math.exp(-1.4)))


def test_steps_keep_the_sampled_token_text_and_every_candidate() -> None:
    output = request_output(
        "Yes",
        [{7: logprob(-0.2, "Yes"), 8: logprob(-1.9, "No", 2), 9: logprob(-3.0, " Yes", 3)}],
        token_ids=[7],
    )
    (step,) = steps_from_completion(output.outputs[0])
    assert step == ("Yes", {"Yes": -0.2, "No": -1.9, " Yes": -3.0})


def test_without_token_ids_the_greedy_token_is_the_likeliest_candidate() -> None:
    output = request_output("No", [{8: logprob(-1.9, "Yes", 2), 7: logprob(-0.2, "No", 1)}])
    assert steps_from_completion(output.outputs[0])[0][0] == "No"


def test_sampled_token_outside_top_k_is_still_its_step_text() -> None:
    # vLLM returns the sampled token besides the top k, with its own rank.
    output = request_output("{", [{1: logprob(-0.5, "uns"), 2: logprob(-0.9, "safe", 2), 3: logprob(-9.0, "{", 40)}])
    output.outputs[0].token_ids = [3]
    assert steps_from_completion(output.outputs[0])[0][0] == "{"


def test_json_prefix_verdict_from_vllm_steps() -> None:
    query = GuardQuery(
        key="q", positive="unsafe", negative="safe", prompt="p", verdict_prefix='{"User Safety": "', max_new_tokens=9
    )
    pieces = ['{"', "User", " Safety", '":', ' "']
    steps = [{i: logprob(-0.01, piece)} for i, piece in enumerate(pieces)]
    steps.append({50: logprob(-0.6, "safe"), 51: logprob(-0.8, "uns", 2)})
    output = request_output('{"User Safety": "safe', steps, token_ids=[0, 1, 2, 3, 4, 50])
    answer = answer_from_request_output(output, query)
    assert answer.p_positive == pytest.approx(math.exp(-0.8) / (math.exp(-0.8) + math.exp(-0.6)))


def test_missing_decoded_text_and_missing_logprobs_give_no_verdict() -> None:
    assert answer_from_request_output(request_output("safe", []), LLAMA_GUARD).p_positive is None
    output = request_output("safe", [{5: logprob(-0.1, None)}], token_ids=[5])
    assert answer_from_request_output(output, LLAMA_GUARD).p_positive is None


@pytest.mark.parametrize(("finish_reason", "truncated"), [("length", True), ("stop", False), (None, False)])
def test_a_completion_stopped_at_max_tokens_is_truncated(finish_reason: str | None, truncated: bool) -> None:
    """vLLM's ``finish_reason``: ``"length"`` at ``max_tokens``, ``"stop"`` at an end or stop token; anything but
    ``"length"`` is not a cut."""
    output = request_output("safe", [{5: logprob(-0.1, "safe")}], token_ids=[5], finish_reason=finish_reason)
    assert answer_from_request_output(output, LLAMA_GUARD).truncated is truncated


def test_constructing_without_vllm_raises_import_error_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes ``import vllm`` fail even where vLLM is installed
    with pytest.raises(ImportError, match=r"pip install 'aegis-online\[vllm\]' on a GPU machine"):
        VLLMGuardBackend("any/model")


@pytest.mark.skipif(VLLM_MISSING, reason="vllm is not installed: it is CUDA-only; this runs on a GPU machine")
def test_real_engine_matches_the_transformers_backend_on_the_tiny_guard(tiny_guard_path: Path) -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("vllm is installed but no CUDA device is visible")
    from aegis_online.experts.backends.transformers_backend import TransformersGuardBackend

    queries = [
        GuardQuery(key="a", positive="unsafe", negative="safe", messages=({"role": "user", "content": "hello"},)),
        GuardQuery(key="b", positive="Yes", negative="No", prompt="hello world", max_new_tokens=3),
    ]
    engine = VLLMGuardBackend(str(tiny_guard_path), gpu_memory_utilization=0.2, max_model_len=256)
    reference = TransformersGuardBackend(str(tiny_guard_path))
    for got, want in zip(engine.answer(queries), reference.answer(queries), strict=True):
        assert got.text.split() == want.text.split()
        assert got.p_positive == pytest.approx(want.p_positive, abs=1e-3)
