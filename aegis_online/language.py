"""Which language a text is written in, so that the request path wakes only the experts that read it.

An expert reads the languages it was trained on (the CPU experts read English only): on anything else it still
answers, confidently and wrongly (a Russian insult scores 0.05 for profanity). The moderator therefore asks
``identify`` once per request and puts to sleep the experts that do not read the answer, which makes their
categories *unscored* (``on_unscored`` decides) instead of silently allowed.

The model is py3langid's naive Bayes over byte n-grams (about 140 labels; it ships inside the package, so it
works offline), loaded once per process on first use (``warm_up`` loads it ahead). Imports only the standard library
and, lazily, ``py3langid``: it sits in the lowest layer, next to ``taxonomy``.

The rule, and why (measured on the shared data, see README "Languages"):

* A wrong non-English answer for an English text is the expensive error: it puts the English experts to sleep and
  turns a clean prompt into a degraded, flagged one. So a language is claimed only when the evidence is strong, and
  otherwise the answer is ``"und"`` (undetermined), which every expert reads: experts are never put to sleep on a
  guess.
* A script other than Latin settles the question that matters (English or not) even for two letters: "Ты идиот",
  "אני אהרוג אותך" and "我要杀了你" cannot be English. When such a script has more letters than Latin (and than any
  other script), the answer is the script's language (Hebrew, Thai, Greek, Korean; Japanese for kana, with or
  without kanji) or, for a script several languages share (Cyrillic, Arabic, Devanagari, Han), the model's best
  among them when it holds 90% of their probability, else the script's most used one (Russian, Arabic, Hindi,
  Chinese): short texts flatten the model's answer, and the most used language is the likeliest. Two letters at
  least: one letter is no evidence.
* A Latin-script text shows its language only through its words, and short ones mislead (the model calls "That
  bitch a tha tha" Scottish Gaelic, and dialect English Nigerian Pidgin). py3langid's normalised probability is
  tempered by the square root of the text's length, so a short text rarely reaches a high one; the language is
  claimed when it is ``MIN_PROBABILITY`` (0.9) or more over at least ``MIN_LETTERS`` (8) letters, and is an ISO
  639-1 language not written only in another script (an English text quoting Japanese is not Japanese). Measured at
  0.9: no English prompt of XSTest, SimpleSafetyTests or HarmBench (950) is claimed for another language, and 1
  Davidson tweet in 24,783 is ("That bitch a tha tha": Scottish Gaelic; at 0.95 none is, but fewer short foreign
  texts are caught); of 38 short foreign threats and insults in ten Latin-script languages, the 16 the model is sure
  of (German, Portuguese, Turkish, Vietnamese, Polish, Dutch, ...) are caught, the others are ``"und"`` (their
  experts stay awake, as before).
* Labels with no ISO 639-1 code (Nigerian Pidgin ``pcm``, which the model gives to much dialect English; ``zxx``, no
  language) are ``"und"``; Chinese and Arabic varieties count as their macrolanguage (``yue``, ``wuu`` -> ``zh``;
  ``arz``, ``ary`` -> ``ar``).
* Only the first ``MAX_CHARS`` (500) characters are read: the model walks the bytes in Python, and a long text's
  language shows in its beginning; this bounds the cost per request (about 50 µs for a prompt, a few hundred for
  a long text, on one core of a shared 2-core machine).

>>> identify("Ты просто жалкий идиот")
'ru'
>>> identify("אני אהרוג אותך")
'he'
>>> identify("我要杀了你")
'zh'
>>> identify("Ich werde dich töten, du Idiot")
'de'
>>> identify("What is the best way to kill a Python process on Linux?")
'en'
>>> identify("How do I kill a Python process?")  # the model leans to Nigerian Pidgin: not sure, every expert reads it
'und'
>>> identify("ok")
'und'
"""

from __future__ import annotations

import bisect
import re
import threading
from typing import Any

#: The answer when the language cannot be told with confidence: every expert reads it.
UNDETERMINED = "und"
#: In a catalog entry's ``languages``: the expert reads every language.
ANY_LANGUAGE = "*"
#: What a language code looks like here: ISO 639-1, two lowercase letters.
LANGUAGE_CODE = re.compile(r"^[a-z]{2}$")

#: Least normalised probability for claiming the language of a Latin-script text.
MIN_PROBABILITY = 0.9
#: Least letters for claiming the language of a Latin-script text.
MIN_LETTERS = 8
#: Least letters of a non-Latin script for it to name the language.
MIN_SCRIPT_LETTERS = 2
#: Characters read from the start of a text.
MAX_CHARS = 500

#: Model labels that are varieties of an ISO 639-1 macrolanguage; other labels of three letters have none (``und``).
_MACROLANGUAGE = {"yue": "zh", "wuu": "zh", "arz": "ar", "ary": "ar", "hbo": "he"}

#: (first code point, last code point, script) of the non-Latin scripts that tell a language; sorted.
_SCRIPT_RANGES: tuple[tuple[int, int, str], ...] = (
    (0x0370, 0x03FF, "greek"),
    (0x0400, 0x052F, "cyrillic"),
    (0x0530, 0x058F, "armenian"),
    (0x0590, 0x05FF, "hebrew"),
    (0x0600, 0x06FF, "arabic"),
    (0x0750, 0x077F, "arabic"),
    (0x08A0, 0x08FF, "arabic"),
    (0x0900, 0x097F, "devanagari"),
    (0x0980, 0x09FF, "bengali"),
    (0x0A00, 0x0A7F, "gurmukhi"),
    (0x0A80, 0x0AFF, "gujarati"),
    (0x0B00, 0x0B7F, "oriya"),
    (0x0B80, 0x0BFF, "tamil"),
    (0x0C00, 0x0C7F, "telugu"),
    (0x0C80, 0x0CFF, "kannada"),
    (0x0D00, 0x0D7F, "malayalam"),
    (0x0D80, 0x0DFF, "sinhala"),
    (0x0E00, 0x0E7F, "thai"),
    (0x0E80, 0x0EFF, "lao"),
    (0x1000, 0x109F, "myanmar"),
    (0x10A0, 0x10FF, "georgian"),
    (0x1100, 0x11FF, "hangul"),
    (0x1200, 0x137F, "ethiopic"),
    (0x1780, 0x17FF, "khmer"),
    (0x1C80, 0x1C8F, "cyrillic"),
    (0x1F00, 0x1FFF, "greek"),
    (0x3040, 0x30FF, "kana"),
    (0x3130, 0x318F, "hangul"),
    (0x31F0, 0x31FF, "kana"),
    (0x3400, 0x4DBF, "han"),
    (0x4E00, 0x9FFF, "han"),
    (0xA640, 0xA69F, "cyrillic"),
    (0xAC00, 0xD7AF, "hangul"),
    (0xF900, 0xFAFF, "han"),
    (0xFB1D, 0xFB4F, "hebrew"),
    (0xFB50, 0xFDFF, "arabic"),
    (0xFE70, 0xFEFF, "arabic"),
    (0xFF66, 0xFF9F, "kana"),
    (0x20000, 0x2FFFF, "han"),
)
_RANGE_STARTS = [start for start, _, _ in _SCRIPT_RANGES]
#: The languages (of the model's labels, as ISO 639-1) each script is written in; the first is the script's own.
_SCRIPT_LANGUAGES: dict[str, tuple[str, ...]] = {
    "greek": ("el",),
    "cyrillic": ("ru", "uk", "bg", "sr", "mk", "be", "kk", "ky", "mn", "tg", "tt", "ba"),
    "armenian": ("hy",),
    "hebrew": ("he",),
    "arabic": ("ar", "fa", "ur", "ps", "ug", "ku"),
    "devanagari": ("hi", "mr", "ne", "sa"),
    "bengali": ("bn", "as"),
    "gurmukhi": ("pa",),
    "gujarati": ("gu",),
    "oriya": ("or",),
    "tamil": ("ta",),
    "telugu": ("te",),
    "kannada": ("kn",),
    "malayalam": ("ml",),
    "sinhala": ("si",),
    "thai": ("th",),
    "lao": ("lo",),
    "myanmar": ("my",),
    "georgian": ("ka",),
    "hangul": ("ko",),
    "ethiopic": ("am",),
    "khmer": ("km",),
    "kana": ("ja",),
    "han": ("zh", "ja"),
}
#: Languages written only in a script other than Latin: the model naming one for a mostly Latin text is a sign of a
#: mixed text (an English sentence quoting Japanese), not of its language.
_NON_LATIN_ONLY = frozenset(c for codes in _SCRIPT_LANGUAGES.values() for c in codes) - {"sr", "ku", "kk", "tt"}

_NON_ASCII_LETTER = re.compile(r"[^\W\d_\x00-\x7f]")
_ASCII_LETTER = re.compile(r"[A-Za-z]")

_identifier: Any = None
_lock = threading.Lock()


def is_language_code(value: str) -> bool:
    """True for an ISO 639-1 code as written here (two lowercase letters).

    >>> is_language_code("en"), is_language_code("EN"), is_language_code("eng")
    (True, False, False)
    """
    return bool(LANGUAGE_CODE.fullmatch(value))


def warm_up() -> None:
    """Load the model now (about half a second, once per process) rather than on the first text."""
    _model()


def _model() -> Any:
    global _identifier
    if _identifier is None:
        with _lock:
            if _identifier is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


def _iso(label: str) -> str | None:
    """A model label as an ISO 639-1 code (None: it has none)."""
    label = _MACROLANGUAGE.get(label, label)
    return label if is_language_code(label) else None


def _script_letters(sample: str) -> tuple[int, dict[str, int]]:
    """Latin letters, and letters per non-Latin script of ``_SCRIPT_RANGES`` (others count as ``other``)."""
    latin = len(_ASCII_LETTER.findall(sample))
    counts: dict[str, int] = {}
    for char in _NON_ASCII_LETTER.findall(sample):
        code = ord(char)
        i = bisect.bisect_right(_RANGE_STARTS, code) - 1
        if i >= 0 and code <= _SCRIPT_RANGES[i][1]:
            script = _SCRIPT_RANGES[i][2]
        elif code < 0x0370 or 0x1E00 <= code <= 0x1EFF:  # Latin-1, Latin Extended (é, ł, ş, ư, ...)
            latin += 1
            continue
        else:
            script = "other"
        counts[script] = counts.get(script, 0) + 1
    if counts.get("kana") and counts.get("han"):  # Japanese mixes kanji and kana: one script here
        counts["kana"] += counts.pop("han")
    return latin, counts


def identify(text: str) -> str:
    """The ISO 639-1 code of the language ``text`` is written in, or ``"und"`` when it cannot be told with
    confidence (see the module's docstring for the rule and why)."""
    sample = text[:MAX_CHARS]
    latin, scripts = _script_letters(sample)
    script, letters = max(scripts.items(), key=lambda item: item[1], default=("latin", 0))
    if letters > latin and script in _SCRIPT_LANGUAGES:
        if letters < MIN_SCRIPT_LETTERS:
            return UNDETERMINED
        candidates = _SCRIPT_LANGUAGES[script]
        if len(candidates) == 1:
            return candidates[0]
        shares: dict[str, float] = {}
        for label, probability in _model().rank(sample):
            code = _iso(label)
            if code in candidates:
                shares[code] = shares.get(code, 0.0) + probability
        best = max(shares, key=shares.__getitem__, default=candidates[0])
        total = sum(shares.values())
        return best if total > 0 and shares[best] >= MIN_PROBABILITY * total else candidates[0]
    if max(latin, letters) < MIN_LETTERS:
        return UNDETERMINED
    label, probability = _model().classify(sample)
    code = _iso(label)
    if code is None or probability < MIN_PROBABILITY or (letters <= latin and code in _NON_LATIN_ONLY):
        return UNDETERMINED
    return code
