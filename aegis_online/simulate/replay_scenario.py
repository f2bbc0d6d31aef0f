"""Multi-tenant replay scenarios: the ``replay`` command's tenant options kept in one YAML file.

A file in ``simulators/replay/`` (or any path) names the data files (relative to the scenario file, ``~`` and
``$VARS`` expanded), the column naming each row's tenant, each tenant's policy (inline, or a policy file) and the
mid-stream policy changes, plus the feedback delay and seed. ``aegis-online replay --scenario NAME|FILE`` runs it;
options given on the command line are added to it (more data, policies, changes). Validated at load: a bad file
fails with a message naming the file and the field, like the drift scenarios of ``scenario``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aegis_online.policy import TenantPolicy
from aegis_online.simulate.scenario import scenario_dir
from aegis_online.simulate.tenancy import PolicyChange, TenantInputError, load_policy_file, policy_from_mapping
from aegis_online.simulate.traffic import DataSpec


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataEntry(_Spec):
    """One data file: its path and, for generic jsonl/csv, the column map (as the ``replay`` options)."""

    path: str
    format: str | None = None
    limit: int | None = Field(default=None, ge=1)
    name: str | None = None
    text_column: str | None = None
    labels: dict[str, str] = Field(default_factory=dict, description="COLUMN: CATEGORY, as --label.")
    overall_column: str | None = None


class ChangeEntry(_Spec):
    """From request ``row`` on, ``policy`` (inline mapping or a policy file) applies to the tenant it names."""

    row: int = Field(ge=1)
    policy: dict[str, Any] | str


class ReplayScenario(_Spec):
    """A multi-tenant replay, see ``simulators/replay/*.yaml``."""

    name: str
    description: str = ""
    data: list[DataEntry] = Field(min_length=1)
    tenant_column: str = "tenant"
    policies: list[dict[str, Any] | str] = Field(default_factory=list)
    policy_changes: list[ChangeEntry] = Field(default_factory=list)
    feedback_delay: int = Field(default=0, ge=0)
    shuffle: bool = True
    seed: int = 0
    window: int = Field(default=100, ge=1, description="Labels in the rolling-F1 window.")


def replay_scenario_dir() -> Path:
    return scenario_dir() / "replay"


def _path(text: str, base: Path) -> Path:
    path = Path(os.path.expandvars(text)).expanduser()
    return path if path.is_absolute() else base / path


def _policy(value: dict[str, Any] | str, base: Path, where: str) -> TenantPolicy:
    if isinstance(value, str):
        return load_policy_file(_path(value, base))
    return policy_from_mapping(value, where)


def load_replay_scenario(name_or_path: str | os.PathLike[str]) -> tuple[ReplayScenario, Path]:
    """A replay scenario by name (a file in ``simulators/replay/``) or by path, and the folder its paths are in."""
    path = Path(name_or_path)
    if not path.is_file():
        path = replay_scenario_dir() / f"{name_or_path}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in replay_scenario_dir().glob("*.yaml"))
            raise TenantInputError(f"{name_or_path}: no such replay scenario; known: {', '.join(known) or '(none)'}")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise TenantInputError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise TenantInputError(f"{path}: expected a mapping of fields, got {type(document).__name__}")
    document.setdefault("name", path.stem)
    try:
        scenario = ReplayScenario.model_validate(document)
    except ValidationError as error:
        lines = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors())
        raise TenantInputError(f"{path}: {lines}") from None
    return scenario, path.parent


def scenario_inputs(
    scenario: ReplayScenario, base: Path
) -> tuple[list[DataSpec], list[TenantPolicy], list[PolicyChange]]:
    """The scenario's data specs, policies and policy changes, with relative paths resolved against ``base``."""
    specs = []
    for entry in scenario.data:
        options: dict[str, Any] = {}
        if entry.text_column or entry.labels or entry.overall_column:
            options = {"text_column": entry.text_column or "text", "label_columns": dict(entry.labels)}
            if entry.overall_column:
                options["overall_column"] = entry.overall_column
        specs.append(DataSpec(_path(entry.path, base), entry.format, options, entry.limit, entry.name))
    policies = [_policy(p, base, f"{scenario.name}: policies.{i}") for i, p in enumerate(scenario.policies)]
    changes = [
        PolicyChange(c.row, _policy(c.policy, base, f"{scenario.name}: policy_changes.{i}"), f"policy_changes.{i}")
        for i, c in enumerate(scenario.policy_changes)
    ]
    return specs, policies, changes
