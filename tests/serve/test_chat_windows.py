"""Windows of a streamed answer: never inside a word, every character checked once as new text, overlap from a word
start, whatever the deltas' sizes (property-based)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_online.demos.scripted_llm import HARMFUL, tokens
from aegis_online.serve.chat_windows import LONGEST_WORD_WINDOWS, SHORTEST_SENTENCE_WINDOW, AnswerWindows

words = st.text(alphabet=st.characters(categories=("Ll", "Lu", "Nd", "Po")), min_size=1, max_size=12)
answers = st.lists(words, min_size=1, max_size=80).map(" ".join)


def cut_points(answer: str, sizes: list[int]) -> list[int]:
    points, at = [], 0
    for size in sizes:
        at = min(at + size, len(answer))
        points.append(at)
    return [*points, len(answer)]


@settings(max_examples=200, deadline=None)
@given(answer=answers, sizes=st.lists(st.integers(1, 9), min_size=1, max_size=60), window=st.integers(20, 80))
def test_windows_never_split_a_word_and_cover_the_answer_once(answer: str, sizes: list[int], window: int) -> None:
    windows = AnswerWindows(window_chars=window, overlap_chars=window // 3)
    seen = []
    start = 0
    for end in cut_points(answer, sizes):
        seen += windows.feed(answer[start:end])
        start = end
    seen += windows.finish()
    # the new text of consecutive windows tiles the answer
    assert [w.start for w in seen] == [0, *[w.end for w in seen[:-1]]]
    assert seen[-1].end == len(answer) if answer.strip() else seen == []
    for w in seen:
        if w.end < len(answer):  # a boundary inside the answer is a space (no word runs past 4 windows here)
            assert answer[w.end] == " " or answer[w.end - 1] in ".!?"
        assert answer[w.start : w.end].strip() in w.text  # each window checks its new text whole


def test_a_word_longer_than_four_windows_is_cut_anyway() -> None:
    windows = AnswerWindows(window_chars=20, overlap_chars=5)
    long = "x" * (LONGEST_WORD_WINDOWS * 20)
    assert windows.feed(long[:-1]) == []
    assert [w.end for w in windows.feed(long[-1])] == [80]


def test_the_harmful_span_is_seen_whole_in_some_window_with_a_small_window() -> None:
    """Word-piece tokens split words ("kil" + "l you"): the windows, cut on spaces, still read "kill" whole."""
    windows = AnswerWindows(window_chars=30, overlap_chars=15)
    checked = [w.text for t in tokens(HARMFUL) for w in windows.feed(t)] + [w.text for w in windows.finish()]
    assert any("I will kill you" in text for text in checked)
    assert all(not text.endswith(("kil", "ki")) for text in checked)


def test_a_window_ends_at_the_first_sentence_end_past_a_quarter_of_its_size() -> None:
    """A sentence is checked without the start of the next one (which dilutes it), and as soon as it is complete
    (check_first holds it back until then); a sentence shorter than a quarter of a window joins the next."""
    windows = AnswerWindows(window_chars=120, overlap_chars=0)
    assert windows.feed("Ok. ") == []  # 3 characters: too short to be checked alone
    assert windows.feed("People like you are vermin and should all be exterminated.") == []  # no whitespace yet
    [window] = windows.feed(" That")
    assert window.text == "Ok. People like you are vermin and should all be exterminated."
    assert windows.feed(" is all I have to say") == [] and [w.text for w in windows.finish()] == [
        "That is all I have to say"
    ]
    assert len("Ok.") < SHORTEST_SENTENCE_WINDOW * 120
