"""The import contracts hold on the tree, and fail where it matters.

The contracts live in one place, ``[tool.importlinter]`` of pyproject.toml: the code layers (README.md quotes the
list) and what a subsystem must never import. ``lint-imports`` checks them (``make lint``, ``make test``); these
tests run it on the tree, one test per contract so that a broken one is named, and on a copy of the package with
planted violations: a relative import and ``from aegis_online import X`` pointing up, a forbidden third-party
package, and a module with no layer must each break a contract.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from importlinter.api import read_configuration

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
CONTRACTS = {c["id"]: c for c in read_configuration(str(PYPROJECT))["contracts_options"]}


def _lint_imports(root: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the ``aegis_online`` found under ``root``, with ``root``'s pyproject.toml."""
    script = Path(sys.executable).with_name("lint-imports")
    command = [
        str(script) if script.exists() else "lint-imports",
        "--no-cache",
        "--no-logo",
        str(root / PYPROJECT.name),
    ]
    for contract in contracts:
        command += ["--contract", contract]
    # root first on the path: grimp must find this tree's package, not the installed one
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "COLUMNS": "250", "NO_COLOR": "1"}
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120, check=False)


def _verdicts(report: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Contract name -> KEPT or BROKEN, from lint-imports' summary."""
    names = {c["name"]: cid for cid, c in CONTRACTS.items()}
    found = re.findall(r"^(.+) (KEPT|BROKEN)$", report.stdout, flags=re.MULTILINE)
    return {names[name]: verdict for name, verdict in found if name in names}


@pytest.fixture(scope="module")
def tree_report() -> subprocess.CompletedProcess[str]:
    return _lint_imports(ROOT)


@pytest.mark.parametrize("contract", sorted(CONTRACTS))
def test_the_tree_keeps_the_contract(tree_report: subprocess.CompletedProcess[str], contract: str) -> None:
    verdicts = _verdicts(tree_report)
    assert contract in verdicts, f"lint-imports did not check {contract}:\n{tree_report.stdout}{tree_report.stderr}"
    assert verdicts[contract] == "KEPT", tree_report.stdout[tree_report.stdout.find("Broken contracts") :]


def test_planted_violations_break_the_contracts(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "aegis_online", tmp_path / "aegis_online", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(PYPROJECT, tmp_path)
    package = tmp_path / "aegis_online"
    (package / "learn" / "_planted.py").write_text(
        "from aegis_online import engine\nfrom ..serve import app\nimport yaml\n\n__all__ = ['app', 'engine', 'yaml']\n"
    )
    with (package / "taxonomy.py").open("a") as taxonomy:
        taxonomy.write("\nimport numpy  # planted\n")
    (package / "_unplaced.py").write_text('"""A module with no layer."""\n')

    report = _lint_imports(tmp_path, "layers", "learn-pure-numpy", "taxonomy-plain")

    assert report.returncode == 1, report.stdout + report.stderr
    assert _verdicts(report) == {"layers": "BROKEN", "learn-pure-numpy": "BROKEN", "taxonomy-plain": "BROKEN"}
    for violation in (
        "aegis_online.learn._planted -> aegis_online.engine (l.1)",  # `from aegis_online import X`
        "aegis_online.learn._planted -> aegis_online.serve.app (l.2)",  # relative import
        "aegis_online.learn._planted -> yaml (l.3)",
        "aegis_online.taxonomy -> numpy",
        "- aegis_online._unplaced",  # a new module fails until it has a layer
    ):
        assert violation in report.stdout, f"{violation!r} not reported:\n{report.stdout}"


def test_readme_quotes_the_layer_contract() -> None:
    readme = (ROOT / "README.md").read_text()
    # the first ```text block after "Code layers", with no other block between them
    quote = re.search(r"^Code layers(?:(?!```).)*```text\n(.*?)```", readme, flags=re.MULTILINE | re.DOTALL)
    assert quote, "README.md: no ```text block quoting the layers after 'Code layers'"
    assert quote.group(1).splitlines() == CONTRACTS["layers"]["layers"]
