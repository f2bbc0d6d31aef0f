"""Session fixtures of the backend tests: the tiny guard model is built once and loaded once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .backend_helpers import build_tiny_guard


@pytest.fixture(scope="session")
def tiny_guard_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    started = time.perf_counter()
    path = build_tiny_guard(tmp_path_factory.mktemp("tiny-guard"))
    print(f"\ntiny guard model built and saved in {time.perf_counter() - started:.2f} s")
    return path


@pytest.fixture(scope="session")
def transformers_backend(tiny_guard_path: Path):
    from aegis_online.experts.backends.transformers_backend import TransformersGuardBackend

    started = time.perf_counter()
    backend = TransformersGuardBackend(str(tiny_guard_path), max_batch_size=3)
    print(f"\ntiny guard model loaded in {time.perf_counter() - started:.2f} s")
    return backend
