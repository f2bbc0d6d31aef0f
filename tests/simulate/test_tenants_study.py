"""The two-tenant study of the results page: each tenant's copy of a text carries its own label, kids-app relaxes
at the midpoint, and the page section renders the per-tenant table from a real (tiny) multi-tenant replay."""

from __future__ import annotations

from pathlib import Path

from aegis_online.datasets import LabelledText
from aegis_online.policy import TenantPolicy
from aegis_online.simulate.cache import ReplayCache
from aegis_online.simulate.tenancy import PolicyChange
from aegis_online.simulate.tenants_replay import TenantReplayConfig, run_tenant_replay
from aegis_online.simulate.tenants_study import (
    GAMING,
    KIDS,
    LATER_KIDS_POLICY,
    POLICIES,
    default_objective,
    study_section,
    tenant_copy,
)
from aegis_online.simulate.traffic import DataSpec

from .stubs import experts
from .test_tenant_replay import COLUMNS, write_tenant_rows


def _davidson(klass: str, labels: dict[str, int]) -> LabelledText:
    return LabelledText("made-up tweet", labels, klass != "neither", "davidson", {"class": klass})


def test_each_tenant_labels_its_own_copy() -> None:
    offensive = _davidson("offensive_language", {"S8": 0, "S12": 1})
    assert tenant_copy(offensive, KIDS, lenient_kids=False).unsafe is True
    assert tenant_copy(offensive, KIDS, lenient_kids=False).labels == {"S8": 0, "S12": 1}
    assert tenant_copy(offensive, KIDS, lenient_kids=True).unsafe is False  # after kids-app relaxes
    assert tenant_copy(offensive, GAMING, lenient_kids=False).labels == {"S8": 0, "S12": 0}
    hate = _davidson("hate_speech", {"S8": 1})
    assert {tenant_copy(hate, t, lenient_kids=False).unsafe for t in (KIDS, GAMING)} == {True}
    neither = _davidson("neither", {"S8": 0, "S12": 0})
    assert {tenant_copy(neither, t, lenient_kids=True).unsafe for t in (KIDS, GAMING)} == {False}
    xstest = LabelledText("made-up prompt", {}, False, "xstest", {})
    assert tenant_copy(xstest, GAMING, lenient_kids=True).meta["tenant"] == GAMING


def test_the_tenants_state_f1_and_strictness_sets_the_rest() -> None:
    policies = {(p.tenant, p.strictness, p.f_beta) for p in (*POLICIES, LATER_KIDS_POLICY)}
    assert policies == {(KIDS, "strict", 1.0), (GAMING, "lenient", 1.0), (KIDS, "lenient", 1.0)}
    assert LATER_KIDS_POLICY.cost_ratio_for(None) < 1 < POLICIES[0].cost_ratio_for(None)  # cost still from strictness
    plain = default_objective(POLICIES[0])
    assert plain.f_beta is None and plain.strictness == "strict" and plain.cost_ratio is None


def test_the_section_reports_every_tenant_and_the_targets(tmp_path: Path) -> None:
    path = write_tenant_rows(tmp_path / "rows.jsonl", n=60)
    change = PolicyChange(60, TenantPolicy(tenant="kids", strictness="lenient"))
    config = TenantReplayConfig(data=[DataSpec(path, "jsonl", COLUMNS)], shuffle=False, window=10, changes=[change])
    result, _ = run_tenant_replay(config, experts(), ReplayCache(None))
    study = {"report": result.report, "figures": {"kids": "k.png", "forum": "f.png"}, "texts": 60, "change": 60}
    assert "The default objective" not in "\n".join(study_section(study))  # no second run, no table
    study["default_objective"] = {
        t: {"adaptive": {"f1": 0.5, "cost": 0.125}, "fixed": {"f1": 0.75, "cost": 0.25}} for t in ("kids", "forum")
    }
    page = "\n".join(study_section(study))
    for needle in ("### kids", "### forum", "| adaptive |", "| fixed |", "| global_only |", "best_expert (", "(k.png)"):
        assert needle in page
    assert "| cost |" in page and "hindsight_combiner (>= " in page and "Ceiling for `forum`" in page
    assert "| forum | adaptive | cost ratio | 0.500 | 0.1250 |" in page
    assert "| forum | fixed | - | 0.750 | 0.2500 |" in page
    assert "adaptive's cost is 0.1250 against fixed's 0.2500 (lower), its F1 0.500 against 0.750 (not higher)" in page
    assert "a reference here, not a bound" in page.split("Ceiling for `kids`")[1].split("\n")[0]
    assert "after the policy change" in page.split("### forum")[0]  # kids changed policy, forum did not
    assert "after the policy change" not in page.split("### forum")[1]
    assert "Skipped: no data." in "\n".join(study_section("no data"))
