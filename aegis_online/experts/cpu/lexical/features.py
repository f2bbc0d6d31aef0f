"""TF-IDF features computed from stored vocabularies and idf weights, so that no fitted sklearn object is pickled.

A ``TfidfBlock`` is one fixed vocabulary (word n-grams or ``char_wb`` n-grams) with its idf weights. Its features
are exactly sklearn's ``TfidfVectorizer(sublinear_tf=True)`` ones with that vocabulary and idf (``test_lexical``
compares them): term counts, then ``1 + log(count)``, times idf, each row scaled to unit L2 norm. Word n-grams come
from sklearn's own analyzer (nothing fitted) and are looked up in the vocabulary with ``dict.get``; character
n-grams are counted in numpy (``_CharCounter``), since making one Python string per n-gram was most of the
expert's time. The expert's features are the blocks side by side (``LexicalFeatures``). Computing them here rather
than unpickling a vectoriser keeps the shipped file free of code and its predictions a function of the stored
arrays alone; ``fit_block`` is the one place that chooses a vocabulary (training only, with sklearn's
``CountVectorizer``).

Imports only numpy and, lazily, scipy and scikit-learn.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import repeat
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from scipy import sparse

__all__ = ["Analyzer", "LexicalFeatures", "TfidfBlock", "char_wb_ngrams", "fit_block"]

Analyzer = Literal["word", "char_wb"]


def char_wb_ngrams(text: str, ngram_range: tuple[int, int]) -> list[str]:
    """sklearn's ``analyzer="char_wb"`` n-grams (lowercased, each word padded with one space), in its order.

    The reference for ``_CharCounter`` (which counts the same n-grams without making them) and the fallback when
    a vocabulary's alphabet is too large for it; ``test_lexical`` checks both against sklearn's analyzer. A padded
    word no longer than ``n`` counts once, whole, as sklearn counts it.

    >>> char_wb_ngrams("Hi  there", (2, 3))
    [' h', 'hi', 'i ', ' hi', 'hi ', ' t', 'th', 'he', 'er', 're', 'e ', ' th', 'the', 'her', 'ere', 're ']
    """
    low, high = ngram_range
    grams: list[str] = []
    for word in text.lower().split():
        padded = f" {word} "
        size = len(padded)
        for n in range(low, high + 1):
            if size <= n:
                grams.append(padded)
                break
            grams.extend([padded[i : i + n] for i in range(size - n + 1)])
    return grams


def _csr_counts(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> sparse.csr_matrix:
    """The count matrix of (row, column) occurrences, built canonical (sorted, summed) by one ``np.unique``."""
    from scipy import sparse as sp

    keys, counts = np.unique(rows * n_cols + cols, return_counts=True)
    row, col = np.divmod(keys, n_cols) if n_cols else (keys, keys)
    indptr = np.searchsorted(row, np.arange(n_rows + 1, dtype=np.int64))
    matrix = sp.csr_matrix((counts.astype(np.float64), col, indptr), shape=(n_rows, n_cols))
    matrix.has_canonical_format = True
    return matrix


class _CharCounter:
    """Counts ``char_wb`` n-grams of a fixed vocabulary in numpy, without making a string per n-gram.

    Each character of the vocabulary gets a code ``1..K`` (any other character 0), and an n-gram the integer
    ``sum(code[k] * (K + 1) ** k)``: distinct n-grams, of any length, get distinct integers, and an n-gram with a
    character outside the vocabulary's alphabet cannot be a term. A batch's words, each padded with one space as
    sklearn pads them, are laid end to end; every window that fits inside one padded word is an n-gram (a padded
    word shorter than the smallest ``n`` counts once, whole); the windows' integers are looked up by binary search
    in the sorted term integers. It gives ``char_wb_ngrams``'s counts (``test_lexical`` checks it on every shared
    text) about four times faster than a dict lookup per n-gram string, which was most of the expert's time.
    """

    def __init__(self, vocabulary: Sequence[str], ngram_range: tuple[int, int]) -> None:
        alphabet = sorted({ch for term in vocabulary for ch in term})
        self.base = len(alphabet) + 1
        self.low, self.high = ngram_range
        if self.base**self.high >= 2**63:
            raise OverflowError("alphabet too large for int64 n-gram codes")
        self.table = np.zeros(0x110000, dtype=np.int32)  # code point -> code
        self.table[[ord(ch) for ch in alphabet]] = np.arange(1, len(alphabet) + 1)
        code = {ch: i + 1 for i, ch in enumerate(alphabet)}
        keys = np.asarray(
            [sum(code[ch] * self.base**k for k, ch in enumerate(term)) for term in vocabulary], dtype=np.int64
        )
        self.order = np.argsort(keys, kind="stable")
        self.keys = keys[self.order]
        self.size = len(vocabulary)

    def _windows(self, codes: np.ndarray, starts: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        value = np.zeros(len(starts), dtype=np.int64)
        valid = np.ones(len(starts), dtype=bool)
        for k in range(n):
            c = codes[starts + k]
            valid &= c > 0
            value += c * self.base**k
        return value, valid

    def counts(self, texts: Sequence[str]) -> sparse.csr_matrix:
        words = [text.lower().split() for text in texts]
        per_text = np.asarray([len(w) for w in words], dtype=np.int64)
        flat = [w for ws in words for w in ws]
        joined = "".join(f" {w} " for w in flat)
        points = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        codes = self.table[points].astype(np.int64)
        length = np.asarray([len(w) + 2 for w in flat], dtype=np.int64)
        first = np.cumsum(length) - length
        word_row = np.repeat(np.arange(len(texts), dtype=np.int64), per_text)
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        short = length < self.low  # padded words shorter than the smallest n: once, whole
        for size in np.unique(length[short]).tolist():
            same = length == size
            value, valid = self._windows(codes, first[same], size)
            rows.append(word_row[same][valid])
            cols.append(value[valid])
        for n in range(self.low, self.high + 1):
            fits = length >= n  # every window of n characters inside the padded word
            count = length[fits] - n + 1
            offsets = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(np.cumsum(count) - count, count)
            value, valid = self._windows(codes, np.repeat(first[fits], count) + offsets, n)
            rows.append(np.repeat(word_row[fits], count)[valid])
            cols.append(value[valid])
        row = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        value = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.keys, value), max(self.size - 1, 0))
        hit = self.keys[at] == value if self.size else np.zeros(len(value), dtype=bool)
        return _csr_counts(row[hit], self.order[at[hit]], len(texts), self.size)


@dataclass
class TfidfBlock:
    """One TF-IDF feature block: a fixed vocabulary (term -> column ``i`` = its position) and idf per term.

    The analyzer settings are sklearn's defaults otherwise (lowercase, ``token_pattern`` for words), so the block
    is fully described by ``analyzer``, ``ngram_range``, ``vocabulary`` and ``idf``.
    """

    analyzer: Analyzer
    ngram_range: tuple[int, int]
    vocabulary: tuple[str, ...]
    idf: np.ndarray
    _analyze: Any = field(default=None, init=False, repr=False, compare=False)
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)
    _fast: Any = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.vocabulary = tuple(self.vocabulary)
        self.ngram_range = (int(self.ngram_range[0]), int(self.ngram_range[1]))
        self.idf = np.asarray(self.idf, dtype=np.float64).reshape(-1)
        if self.analyzer not in ("word", "char_wb"):
            raise ValueError(f"analyzer must be 'word' or 'char_wb', got {self.analyzer!r}")
        if self.idf.shape != (len(self.vocabulary),):
            raise ValueError(f"idf has shape {self.idf.shape}; the vocabulary has {len(self.vocabulary)} terms")
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("vocabulary terms must be unique")

    @property
    def size(self) -> int:
        return len(self.vocabulary)

    def settings(self) -> dict[str, Any]:
        """What, besides the arrays, the file must record to rebuild the block."""
        return {"analyzer": self.analyzer, "ngram_range": list(self.ngram_range), "size": self.size}

    def _analyzer_and_index(self) -> tuple[Callable[[str], list[str]], dict[str, int]]:
        with self._lock:
            if self._analyze is None:
                if self.analyzer == "char_wb":
                    self._analyze = partial(char_wb_ngrams, ngram_range=self.ngram_range)
                else:
                    from sklearn.feature_extraction.text import CountVectorizer

                    self._analyze = CountVectorizer(analyzer="word", ngram_range=self.ngram_range).build_analyzer()
                self._index = {term: i for i, term in enumerate(self.vocabulary)}
            return self._analyze, self._index

    def counts(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Term counts, shape ``(len(texts), size)`` (sparse).

        The same counts as ``CountVectorizer(vocabulary=...).transform``: character n-grams by ``_CharCounter``
        (``char_wb_ngrams`` and a dict if the alphabet is too large for it); word n-grams by sklearn's analyzer,
        looked up with ``dict.get`` in C (``map``) rather than one caught KeyError per unknown n-gram, as sklearn
        does; the matrix assembled in numpy.
        """
        if self.analyzer == "char_wb" and self._fast is not False:
            with self._lock:
                if self._fast is None:
                    try:
                        self._fast = _CharCounter(self.vocabulary, self.ngram_range)
                    except OverflowError:
                        self._fast = False
            if self._fast:
                return self._fast.counts(list(texts))
        analyze, index = self._analyzer_and_index()
        ids: list[int] = []
        lengths = np.zeros(len(texts), dtype=np.int64)
        for row, text in enumerate(texts):
            before = len(ids)
            ids.extend(map(index.get, analyze(text), repeat(-1)))
            lengths[row] = len(ids) - before
        columns = np.asarray(ids, dtype=np.int64)
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        known = columns >= 0
        return _csr_counts(rows[known], columns[known], len(texts), self.size)

    def weigh(self, counts: sparse.spmatrix) -> sparse.csr_matrix:
        """Sublinear tf times idf, rows scaled to unit L2 norm (an all-zero row stays zero); on the CSR arrays."""
        from scipy import sparse as sp

        X = sp.csr_matrix(counts, dtype=np.float64, copy=True)
        X.sum_duplicates()
        X.data = (np.log(X.data) + 1.0) * self.idf[X.indices]
        row = np.repeat(np.arange(X.shape[0], dtype=np.int64), np.diff(X.indptr))
        norms = np.sqrt(np.bincount(row, weights=X.data * X.data, minlength=X.shape[0]))
        norms[norms == 0.0] = 1.0
        X.data /= norms[row]
        return X

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """TF-IDF features, shape ``(len(texts), size)``."""
        return self.weigh(self.counts(texts))


def fit_block(
    texts: Sequence[str],
    analyzer: Analyzer,
    ngram_range: tuple[int, int],
    *,
    max_features: int,
    min_df: int = 2,
) -> tuple[TfidfBlock, sparse.csr_matrix]:
    """Choose a block's vocabulary and idf on ``texts``; return it and the texts' features (one pass of counting).

    The vocabulary is sklearn's choice (``CountVectorizer(min_df, max_features)``: the ``max_features`` most
    frequent terms found in at least ``min_df`` texts), terms holding a NUL dropped (numpy string arrays cannot
    keep a trailing one). idf is sklearn's smoothed one, ``ln((1 + n) / (1 + df)) + 1``.
    """
    from sklearn.feature_extraction.text import CountVectorizer

    counter = CountVectorizer(
        analyzer=analyzer, ngram_range=ngram_range, min_df=min_df, max_features=max_features, dtype=np.float64
    )
    counts = counter.fit_transform(list(texts)).tocsc()
    terms = counter.get_feature_names_out()
    keep = np.asarray([i for i, t in enumerate(terms) if "\x00" not in t], dtype=np.int64)
    counts = counts[:, keep].tocsr()
    vocabulary = tuple(str(terms[i]) for i in keep)
    df = np.bincount(counts.indices, minlength=len(vocabulary)).astype(np.float64)
    idf = np.log((1.0 + counts.shape[0]) / (1.0 + df)) + 1.0
    block = TfidfBlock(analyzer=analyzer, ngram_range=ngram_range, vocabulary=vocabulary, idf=idf)
    return block, block.weigh(counts)


@dataclass
class LexicalFeatures:
    """Feature blocks side by side: word n-grams then character n-grams, each block unit-normalised on its own."""

    blocks: tuple[TfidfBlock, ...]

    def __post_init__(self) -> None:
        self.blocks = tuple(self.blocks)

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blocks)

    def transform(self, texts: Sequence[str]) -> sparse.csr_matrix:
        """Features, shape ``(len(texts), size)``."""
        from scipy import sparse as sp

        return sp.csr_matrix(sp.hstack([b.transform(texts) for b in self.blocks], format="csr"))
