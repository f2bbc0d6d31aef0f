"""The arrows point one way: a module imports only layers below it (DEVELOPERS.md, architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "aegis_online"

#: Layer of each top-level module or sub-package; a module may import only strictly lower layers (or its own).
LAYERS = {
    "taxonomy": 0,
    "errors": 0,
    "schemas": 1,
    "datasets": 1,
    "learn": 2,
    "policy": 3,
    "ensemble": 3,
    "experts": 4,
    "state": 5,
    "engine": 6,
    "config": 6,
    "simulate": 7,
    "feedback": 7,
    "serve": 8,
    "deploy": 9,
    "cli": 10,
}
#: Third-party packages a layer must never import (learn/ is pure numpy: no pydantic in the hot loop).
FORBIDDEN = {"learn": {"pydantic", "yaml", "rich", "typer"}, "taxonomy": {"numpy", "pydantic"}}


def _unit(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


MODULES = [p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_import_only_lower_layers(path: Path) -> None:
    unit = _unit(path)
    assert unit in LAYERS, f"{unit} has no layer: add it to LAYERS"
    for name in _imports(path):
        top = name.split(".")[0]
        if top == "aegis_online" and name != "aegis_online":
            target = name.split(".")[1]
            assert target == unit or LAYERS[target] < LAYERS[unit], f"{path.name}: {unit} must not import {target}"
        assert top not in FORBIDDEN.get(unit, set()), f"{path.name}: {unit} must not import {top}"
