"""Which turns a guard sees: up to the checked turn, user and assistant only."""

from __future__ import annotations

import pytest

from aegis_online.experts.guards.conversation import Exchange, checked_index, dialogue, last_exchange


def test_dialogue_stops_at_the_checked_user_turn_and_drops_system_and_tool(make_item) -> None:
    item = make_item(
        [("system", "s"), ("user", " a "), ("tool", "t"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]
    )
    assert dialogue(item) == [("user", "a"), ("assistant", "b"), ("user", "c")]


def test_response_dialogue_ends_with_the_last_assistant_turn(make_item) -> None:
    item = make_item([("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")], "response")
    assert checked_index(item) == 3
    assert dialogue(item)[-1] == ("assistant", "d")


def test_last_exchange_of_a_prompt_check_has_no_assistant(make_item) -> None:
    item = make_item([("user", "a"), ("assistant", "b"), ("user", "c")])
    assert last_exchange(item) == Exchange(user="c", assistant=None)


def test_last_exchange_of_a_response_pairs_it_with_the_user_turn_before(make_item) -> None:
    item = make_item([("user", "a"), ("assistant", "b"), ("assistant", "c")], "response")
    assert last_exchange(item) == Exchange(user="a", assistant="c")


def test_response_without_a_user_turn_has_an_empty_user(make_item) -> None:
    item = make_item([("system", "s"), ("assistant", "hello")], "response")
    assert last_exchange(item) == Exchange(user="", assistant="hello")


def test_checked_turn_must_exist(make_item) -> None:
    with pytest.raises(ValueError, match="needs at least one assistant message"):
        checked_index(make_item([("user", "a")], "response"))
