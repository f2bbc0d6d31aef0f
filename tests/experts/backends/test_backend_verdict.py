"""The one verdict-reading rule every backend shares: where the verdict is, and which candidates spell it."""

from __future__ import annotations

import math

import pytest

from aegis_online.experts.backends.verdict_logprobs import (
    best_logprob,
    verdict_probability,
    verdict_shares,
    verdict_step,
)


def renormalised(lp_pos: float, lp_neg: float) -> float:
    return math.exp(lp_pos) / (math.exp(lp_pos) + math.exp(lp_neg))


def test_verdict_first_renormalises_over_the_two_verdict_words() -> None:
    steps = [("unsafe", {"unsafe": -0.4, "safe": -1.3, "hello": -3.0})]
    assert verdict_probability(steps, "unsafe", "safe") == pytest.approx(renormalised(-0.4, -1.3))


def test_safe_as_suffix_of_unsafe_never_counts_as_unsafe() -> None:
    steps = [("safe", {"safe": -0.1, "unsafe": -2.5})]
    assert verdict_probability(steps, "unsafe", "safe") == pytest.approx(renormalised(-2.5, -0.1))
    assert best_logprob({"safe": -0.1}, "unsafe", "safe") is None


def test_blank_lines_before_the_verdict_are_skipped_as_llama_guard_3_emits_them() -> None:
    steps = [
        ("\n\n", {"\n\n": -0.01, "unsafe": -6.0, "safe": -7.0}),
        ("unsafe", {"unsafe": -0.2, "safe": -2.0}),
        ("\n", {"\n": -0.1}),
        ("S1", {"S1": -0.3}),
    ]
    assert verdict_step(steps) == 1
    assert verdict_probability(steps, "unsafe", "safe") == pytest.approx(renormalised(-0.2, -2.0))


@pytest.mark.parametrize("blank", [" ", "\n", "\t\n ", "▁", "ĊĊ", ""])
def test_every_whitespace_only_token_is_skipped(blank: str) -> None:
    steps = [(blank, {blank: -0.1}), ("No", {"No": -0.5, "Yes": -1.5})]
    assert verdict_step(steps) == 1


def test_split_verdict_word_is_read_from_its_first_piece() -> None:
    steps = [("uns", {"uns": -0.3, "safe": -1.0, "un": -4.0}), ("afe", {"afe": -0.01})]
    assert verdict_probability(steps, "unsafe", "safe") == pytest.approx(renormalised(-0.3, -1.0))


def test_best_candidate_wins_among_spellings_with_space_or_sentencepiece_marker() -> None:
    candidates = {" unsafe": -0.9, "▁unsafe": -0.5, "Ġunsafe": -2.0, "uns": -3.0, "safe": -1.5, " safe": -1.2}
    assert best_logprob(candidates, "unsafe", "safe") == -0.5
    assert best_logprob(candidates, "safe", "unsafe") == -1.2


def test_pieces_that_start_both_verdicts_count_for_neither() -> None:
    candidates = {"un": -0.1, "unsure": -2.0, "unsafe": -1.0}
    assert best_logprob(candidates, "unsafe", "unsure") == -1.0
    assert best_logprob(candidates, "unsure", "unsafe") == -2.0


def test_an_exact_verdict_word_counts_for_itself_even_when_it_starts_the_other() -> None:
    candidates = {"No": -0.7, "Nope": -1.7}
    assert best_logprob(candidates, "No", "Nope") == -0.7
    assert best_logprob(candidates, "Nope", "No") == -1.7


def test_verdict_words_are_case_sensitive() -> None:
    assert best_logprob({"yes": -0.1, "YES": -0.2}, "Yes", "No") is None


def test_json_prefix_moves_the_verdict_after_it() -> None:
    prefix = '{"User Safety": "'
    steps = [
        ("{", {"{": -0.01}),
        ('"', {'"': -0.01}),
        ("User", {"User": -0.01}),
        (" Safety", {" Safety": -0.01, "safe": -3.0}),
        ('":', {'":': -0.01}),
        (' "', {' "': -0.01}),
        ("unsafe", {"unsafe": -0.7, "safe": -0.9}),
        ('"', {'"': -0.01}),
    ]
    assert verdict_step(steps, prefix) == 6
    assert verdict_probability(steps, "unsafe", "safe", prefix) == pytest.approx(renormalised(-0.7, -0.9))


def test_prefix_match_ignores_whitespace_differences() -> None:
    prefix = '{"User Safety": "'
    steps = [('{"User', {}), ("Safety", {}), ('":"', {}), ("safe", {"safe": -0.2, "unsafe": -1.7})]
    assert verdict_step(steps, prefix) == 3


def test_prefix_match_reads_raw_byte_level_tokens_as_spaced_text() -> None:
    verdict = ("Ġunsafe", {"Ġunsafe": -0.1, "Ġsafe": -3.0})
    steps = [('{"', {}), ("User", {}), ("ĠSafety", {}), ('":', {}), ('Ġ"', {}), verdict]
    assert verdict_step(steps, '{"User Safety": "') == 5
    assert verdict_probability(steps, "unsafe", "safe", '{"User Safety": "') == pytest.approx(renormalised(-0.1, -3.0))


def test_prefix_never_generated_gives_none() -> None:
    steps = [("unsafe", {"unsafe": -0.1, "safe": -2.0})]
    assert verdict_step(steps, '{"User Safety": "') is None
    assert verdict_probability(steps, "unsafe", "safe", '{"User Safety": "') is None


def test_generation_that_ends_at_the_prefix_gives_none() -> None:
    steps = [("Answer", {}), (":", {})]
    assert verdict_probability(steps, "Yes", "No", "Answer:") is None


def test_no_steps_gives_none() -> None:
    assert verdict_probability([], "Yes", "No") is None


def test_only_blank_steps_give_none() -> None:
    assert verdict_probability([("\n", {"\n": -0.1}), ("\n\n", {"Yes": -3.0})], "Yes", "No") is None


def test_missing_negative_gives_the_unnormalised_positive_probability() -> None:
    steps = [("Yes", {"Yes": -0.25, "Sure": -2.0})]
    assert verdict_probability(steps, "Yes", "No") == pytest.approx(math.exp(-0.25))


def test_missing_positive_gives_its_largest_possible_renormalised_value() -> None:
    candidates = {"No": -0.1, "Nah": -3.0, "never": -6.0}
    bound = min(math.exp(-6.0), 1.0 - sum(math.exp(v) for v in candidates.values()))
    p = verdict_probability([("No", candidates)], "Yes", "No")
    assert p == pytest.approx(bound / (bound + math.exp(-0.1)))
    assert 0.0 < p < 0.01


def test_missing_positive_with_a_lone_candidate_is_bounded_by_the_mass_left() -> None:
    p = verdict_probability([("No", {"No": math.log(0.9)})], "Yes", "No")
    assert p == pytest.approx(0.1 / (0.1 + 0.9))


def test_neither_verdict_among_candidates_gives_none() -> None:
    steps = [("hello", {"hello": -0.1, "world": -2.0})]
    assert verdict_probability(steps, "Yes", "No") is None


def test_extreme_logprobs_stay_finite_and_in_range() -> None:
    assert verdict_probability([("Yes", {"Yes": 0.0, "No": -2000.0})], "Yes", "No") == 1.0
    assert verdict_probability([("No", {"Yes": -2000.0, "No": 0.0})], "Yes", "No") == 0.0
    assert verdict_probability([("Yes", {"Yes": -1500.0, "No": -1501.0})], "Yes", "No") == pytest.approx(
        renormalised(0.0, -1.0)
    )


def test_candidates_matter_at_the_verdict_step_only() -> None:
    steps = [("\n", {"Yes": -0.01, "No": -9.0}), ("No", {"Yes": -3.0, "No": -0.05})]
    assert verdict_probability(steps, "Yes", "No") == pytest.approx(renormalised(-3.0, -0.05))


# A model that reasons before answering (Nemotron's thinking trace, gpt-oss' analysis channel) may write the prefix
# in its reasoning; its answer ends the output, so such a query reads the verdict after the prefix's last occurrence.
QUOTED_THEN_ANSWERED = [
    ("<think>", {}),
    ("Benign requests get Safety:", {}),
    (" safe", {" safe": -0.1, " unsafe": -2.5}),
    ("</think>", {}),
    ("Safety:", {}),
    ("\n", {"\n": -0.1, "safe": -0.2}),
    (" unsafe", {" unsafe": -0.2, " safe": -1.9}),
]


def test_the_last_occurrence_reads_the_verdict_after_the_prefix_written_last() -> None:
    assert verdict_step(QUOTED_THEN_ANSWERED, "Safety:") == 2
    assert verdict_step(QUOTED_THEN_ANSWERED, "Safety:", "last") == 6
    p = verdict_probability(QUOTED_THEN_ANSWERED, "unsafe", "safe", "Safety:", "last")
    assert p == pytest.approx(renormalised(-0.2, -1.9))
    shares = verdict_shares(QUOTED_THEN_ANSWERED, ["unsafe", "safe"], "Safety:", "last")
    assert shares == pytest.approx({"unsafe": renormalised(-0.2, -1.9), "safe": renormalised(-1.9, -0.2)})


def test_a_last_prefix_with_no_verdict_after_it_gives_none_not_an_earlier_verdict() -> None:
    stopped = [*QUOTED_THEN_ANSWERED[:5], ("\n", {"\n": -0.1})]
    assert verdict_step(stopped, "Safety:", "last") is None
    assert verdict_probability(stopped, "unsafe", "safe", "Safety:", "last") is None


def test_without_a_prefix_the_last_occurrence_is_the_first_verdict_too() -> None:
    steps = [("\n", {}), ("unsafe", {"unsafe": -0.2, "safe": -2.0}), ("\n", {}), ("S1", {"S1": -0.1})]
    assert verdict_step(steps, "", "last") == verdict_step(steps) == 1
