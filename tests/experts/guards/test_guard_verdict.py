"""Turning a written verdict and a backend probability into one probability."""

from __future__ import annotations

import math

import pytest

from aegis_online.experts.guards.answers import verdict_probability, yes_no, yes_no_probability
from aegis_online.experts.guards.base import GuardAnswer, GuardParseError


def test_without_probability_the_verdict_scores_one_or_zero() -> None:
    assert verdict_probability("f", True, None, verdict="unsafe") == 1.0
    assert verdict_probability("f", False, None, verdict="safe") == 0.0


def test_probability_consistent_with_the_verdict_is_kept() -> None:
    assert verdict_probability("f", True, 0.97, verdict="unsafe") == 0.97
    assert verdict_probability("f", False, 0.03, verdict="safe") == 0.03
    assert verdict_probability("f", False, 0.54, verdict="safe") == 0.54  # within numerical slack


def test_unnormalised_low_probability_under_a_positive_verdict_is_kept() -> None:
    # Backends report exp(logprob) of the positive when the negative is missing from the top-k.
    assert verdict_probability("f", True, 0.4, verdict="unsafe") == 0.4


def test_high_probability_under_a_negative_verdict_is_a_parse_error() -> None:
    with pytest.raises(GuardParseError, match=r"f: p_positive=0\.800 contradicts the generated verdict 'safe'"):
        verdict_probability("f", False, 0.8, verdict="safe")


@pytest.mark.parametrize("p", [-0.1, 1.01, math.nan])
def test_probability_outside_zero_one_is_a_parse_error(p: float) -> None:
    with pytest.raises(GuardParseError, match="probability in"):
        verdict_probability("f", True, p, verdict="unsafe")


@pytest.mark.parametrize(("text", "said"), [("Yes", True), (" no.", False), ("YES\nbecause", True), ("Nope", None)])
def test_yes_no_reads_the_first_word(text: str, said: bool | None) -> None:
    assert yes_no(text) is said


def test_yes_no_probability_needs_text_or_probability() -> None:
    assert yes_no_probability("f", "k", GuardAnswer("Yes", None)) == 1.0
    assert yes_no_probability("f", "k", GuardAnswer("", 0.3)) == 0.3
    with pytest.raises(GuardParseError, match="f: answer to 'k' must start with 'Yes' or 'No', got ''"):
        yes_no_probability("f", "k", GuardAnswer("", None))
