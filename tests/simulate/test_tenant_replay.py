"""Multi-tenant replay: each row reaches its tenant with that tenant's label and policy, the report has the per-tenant
predictor table, and bad tenant input fails with a message that names the problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from aegis_online.policy import TenantPolicy
from aegis_online.simulate import replay_run
from aegis_online.simulate.cache import ReplayCache
from aegis_online.simulate.cli import replay_command
from aegis_online.simulate.replay import EngineBackend
from aegis_online.simulate.replay_scenario import load_replay_scenario, scenario_inputs
from aegis_online.simulate.tenancy import PolicyChange, TenantInputError
from aegis_online.simulate.tenants_replay import ENGINE_PREDICTORS, TenantReplayConfig, run_tenant_replay
from aegis_online.simulate.traffic import DataSpec

from .stubs import experts

COLUMNS = {"text_column": "text", "label_columns": {"violence": "S1", "hate": "S8"}}
METRICS = {"f1", "precision", "recall", "fpr", "auprc", "loss", "cost"}


def write_tenant_rows(path: Path, n: int = 36, *, drop_tenant_at: int | None = None) -> Path:
    """Made-up texts sent by two tenants. ``zap`` is unsafe (S1) for both; ``meh`` is unsafe (S8) for ``kids``
    and safe for ``forum``: the same kind of text, opposite labels, each copy labelled by its own tenant."""
    with path.open("w") as handle:
        for i in range(n):
            for tenant in ("kids", "forum"):
                kind = i % 3
                text = f"line {i} " + ("zap" if kind == 0 else "meh" if kind == 1 else "calm")
                hate = int(kind == 1 and tenant == "kids")
                row = {"text": text, "tenant": tenant, "violence": int(kind == 0), "hate": hate}
                if drop_tenant_at is not None and i == drop_tenant_at and tenant == "forum":
                    row.pop("tenant")
                handle.write(json.dumps(row) + "\n")
    return path


def _config(path: Path, **extra: object) -> TenantReplayConfig:
    return TenantReplayConfig(data=[DataSpec(path, "jsonl", COLUMNS)], shuffle=False, window=10, **extra)  # type: ignore[arg-type]


def test_the_report_has_every_predictor_per_tenant(tmp_path: Path) -> None:
    path = write_tenant_rows(tmp_path / "rows.jsonl")
    policies = [TenantPolicy(tenant="kids", strictness="strict"), TenantPolicy(tenant="forum", strictness="lenient")]
    result, curves = run_tenant_replay(_config(path, policies=policies), experts(), ReplayCache(None))
    tenants = result.report["tenants"]
    assert set(tenants) == {"kids", "forum"}
    for name, entry in tenants.items():
        assert set(entry) == {*ENGINE_PREDICTORS, "best_expert", "hindsight_combiner", "red", "blue"}
        for predictor, metrics in entry.items():
            assert set(metrics) >= METRICS, (name, predictor)
        assert entry["adaptive"]["labels"] == 36  # every row of this tenant, and only those
        assert entry["best_expert"]["expert"] in {"red", "blue"}
        assert "labels_to_within_1pt" in entry["adaptive"] and entry["adaptive"]["recovery"] == []
        assert set(curves.f1[name]) >= set(ENGINE_PREDICTORS)
    # the labels reach their own tenant: kids has twice the unsafe rows of forum
    assert tenants["kids"]["adaptive"]["positives"] == 24 and tenants["forum"]["adaptive"]["positives"] == 12
    # each tenant's policy reached it: the strict tenant's fixed whole-request threshold is the lower one
    assert result.report["policies"]["kids"]["strictness"] == "strict"
    # red flags "meh": right for kids, wrong for forum, at the fixed thresholds of each policy
    assert (
        tenants["kids"]["red"]["fpr"] == 0.0 and tenants["forum"]["red"]["fpr"] == 0.5
    )  # all 12 of its 24 safe rows that say "meh"
    assert result.report["learners"]["adaptive"]["feedback"]["applied"] == 72


def test_cost_is_at_the_cost_ratio_of_the_policy_in_force(tmp_path: Path) -> None:
    """By hand: ``red`` flags "zap" and "meh" (0.9), ``blue`` flags nothing (0.1 everywhere); kids calls both unsafe,
    forum only "zap". kids relaxes from strict to lenient halfway through its 36 labels (request 36 of 72)."""
    path = write_tenant_rows(tmp_path / "rows.jsonl", n=36)
    strict, lenient = (TenantPolicy(tenant="kids", strictness=s) for s in ("strict", "lenient"))
    c_strict, c_lenient = strict.cost_ratio_for(None), lenient.cost_ratio_for(None)
    assert c_strict > 1 > c_lenient
    config = _config(path, policies=[strict], changes=[PolicyChange(36, lenient)])
    config.predictors = ("fixed",)
    tenants = run_tenant_replay(config, experts(), ReplayCache(None))[0].report["tenants"]
    # blue misses the 12 unsafe of each half of kids: a miss costs 1 under strict, c_lenient under lenient
    assert tenants["kids"]["blue"]["cost"] == pytest.approx((12 * 1.0 + 12 * c_lenient) / 36)
    assert tenants["kids"]["red"]["cost"] == 0.0  # red is right on every kids row
    # forum keeps the default policy (c = 1): red's 12 false alarms on "meh" cost 1 each, blue's 12 misses too
    assert TenantPolicy(tenant="forum").cost_ratio_for(None) == pytest.approx(1.0)
    assert tenants["forum"]["red"]["cost"] == pytest.approx(12 / 36)
    assert tenants["forum"]["blue"]["cost"] == pytest.approx(12 / 36)
    combiner = tenants["kids"]["hindsight_combiner"]
    assert combiner["f1"] == 1.0 and combiner["cost"] == 0.0  # red's whole-request score separates kids' labels


def test_requests_and_feedback_carry_their_tenant_and_policy_changes_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_tenant_rows(tmp_path / "rows.jsonl", n=12)
    seen: list[tuple[str, str, str]] = []
    moderate, feedback = EngineBackend.moderate, EngineBackend.feedback

    def spy_moderate(self: EngineBackend, request):  # type: ignore[no-untyped-def]
        seen.append(("request", request.tenant, self.engine.policy(request.tenant).strictness))  # type: ignore[arg-type]
        return moderate(self, request)

    def spy_feedback(self: EngineBackend, event):  # type: ignore[no-untyped-def]
        seen.append(("feedback", event.tenant, str(event.labels)))
        return feedback(self, event)

    monkeypatch.setattr(EngineBackend, "moderate", spy_moderate)
    monkeypatch.setattr(EngineBackend, "feedback", spy_feedback)
    change = PolicyChange(row=12, policy=TenantPolicy(tenant="kids", strictness="lenient"))
    config = _config(path, policies=[TenantPolicy(tenant="kids", strictness="strict")], changes=[change])
    config.predictors = ("adaptive",)
    result, curves = run_tenant_replay(config, experts(), ReplayCache(None))
    requests = [s for s in seen if s[0] == "request"]
    assert [t for _, t, _ in requests[:4]] == ["kids", "forum", "kids", "forum"]
    assert {s for _, t, s in requests[:12] if t == "kids"} == {"strict"}
    assert {s for _, t, s in requests[12:] if t == "kids"} == {"lenient"}
    assert {s for _, t, s in requests if t == "forum"} == {"balanced"}
    kids_meh = [s for s in seen if s[0] == "feedback" and s[1] == "kids" and "'S8': 1.0" in s[2]]
    forum_meh = [s for s in seen if s[0] == "feedback" and s[1] == "forum" and "'S8': 1.0" in s[2]]
    assert len(kids_meh) == 4 and forum_meh == []
    recovery = result.report["tenants"]["kids"]["adaptive"]["recovery"]
    assert [r["row"] for r in recovery] == [12] and result.report["tenants"]["forum"]["adaptive"]["recovery"] == []
    assert curves.changes["kids"] == [6] and curves.changes["forum"] == []


def test_bad_tenant_input_names_the_problem(tmp_path: Path) -> None:
    path = write_tenant_rows(tmp_path / "rows.jsonl", n=6)
    with pytest.raises(TenantInputError, match=r"--tenant-column 'customer': no such column.*tenant"):
        run_tenant_replay(_config(path, tenant_column="customer"), experts(), ReplayCache(None))
    with pytest.raises(TenantInputError, match="tenant 'acme': no row of the data"):
        run_tenant_replay(_config(path, policies=[TenantPolicy(tenant="acme")]), experts(), ReplayCache(None))
    gap = write_tenant_rows(tmp_path / "gap.jsonl", n=6, drop_tenant_at=4)
    with pytest.raises(TenantInputError, match=r"row 9 \(request 9\): no tenant in column 'tenant'"):
        run_tenant_replay(_config(gap), experts(), ReplayCache(None))
    late = PolicyChange(row=500, policy=TenantPolicy(tenant="kids"))
    with pytest.raises(TenantInputError, match="row 500 is outside the replay"):
        run_tenant_replay(_config(path, changes=[late]), experts(), ReplayCache(None))


def test_global_only_never_personalises(tmp_path: Path) -> None:
    path = write_tenant_rows(tmp_path / "rows.jsonl", n=75)  # past personalise_after (50) per tenant
    result, _ = run_tenant_replay(_config(path), experts(), ReplayCache(None))
    adaptive = result.logs["adaptive"].overall_scores
    global_only = result.logs["global_only"].overall_scores
    assert np.allclose(adaptive[:90], global_only[:90])  # the same until a tenant has 50 labels of its own
    assert not np.allclose(adaptive, global_only)  # then the tenants' own state differs from the shared one


# -- the command line ----------------------------------------------------------------------------------------------
app = typer.Typer()
app.command("replay")(replay_command)
app.command("other")(lambda: None)  # two commands: typer keeps the subcommand name
runner = CliRunner()


@pytest.fixture
def stub_experts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay_run, "build_catalog_experts", lambda names=None, heads=None: experts())


def _policy(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_the_replay_command_runs_tenants_with_policies_and_a_change(tmp_path: Path, stub_experts: None) -> None:
    data = write_tenant_rows(tmp_path / "rows.jsonl", n=30)
    strict = _policy(tmp_path, "kids.yaml", "tenant: kids\nstrictness: strict\n")
    lenient = _policy(tmp_path, "kids-later.json", '{"tenant": "kids", "strictness": "lenient"}')
    out = tmp_path / "out"
    args = ["replay", "--data", str(data), "--text-column", "text", "--label", "violence=S1", "--label", "hate=S8"]
    args += ["--tenant-column", "tenant", "--policy", str(strict), "--policy-change", f"30:{lenient}"]
    result = runner.invoke(app, [*args, "--no-shuffle", "--window", "10", "--no-cache", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["tenants"]) == {"kids", "forum"}
    assert set(report["tenants"]["kids"]["adaptive"]) >= METRICS and "best_expert" in report["tenants"]["forum"]
    assert report["policy_changes"] == [
        {"row": 30, "tenant": "kids", "policy": {"tenant": "kids", "strictness": "lenient"}}
    ]
    assert report["policies"]["kids"]["strictness"] == "strict" and report["policies"]["forum"] == {"tenant": "forum"}
    assert (out / "tenant-kids.png").stat().st_size > 5_000 and (out / "tenant-forum.png").is_file()
    assert "Per tenant" in (out / "summary.md").read_text() and "kids: the whole-request decision" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tenant-column", "customer"], "--tenant-column 'customer': no such column"),
        (["--tenant-column", "tenant", "--policy", "{other}"], "tenant 'acme': no row of the data"),
        (["--tenant-column", "tenant", "--policy", "{nameless}"], "must name its tenant"),
        (["--tenant-column", "tenant", "--policy-change", "x:{other}"], "--policy-change takes ROW:FILE"),
        (["--tenant-column", "tenant", "--policy", "{kids}", "--policy", "{kids}"], "two policies for tenant 'kids'"),
    ],
)
def test_the_replay_command_names_bad_tenant_input(
    tmp_path: Path, stub_experts: None, extra: list[str], message: str
) -> None:
    data = write_tenant_rows(tmp_path / "rows.jsonl", n=6)
    files = {
        "other": str(_policy(tmp_path, "acme.yaml", "tenant: acme\n")),
        "nameless": str(_policy(tmp_path, "nameless.yaml", "strictness: strict\n")),
        "kids": str(_policy(tmp_path, "kids.yaml", "tenant: kids\n")),
    }
    args = ["replay", "--data", str(data), "--text-column", "text", "--label", "violence=S1", "--no-cache"]
    result = runner.invoke(app, [*args, *(e.format(**files) for e in extra), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_the_shipped_replay_scenario_runs(tmp_path: Path, stub_experts: None) -> None:
    scenario, base = load_replay_scenario("two-tenants")
    specs, policies, changes = scenario_inputs(scenario, base)
    assert specs[0].path.is_file() and [p.tenant for p in policies] == ["kids-app", "gaming-forum"]
    assert [(c.row, c.policy.tenant, c.policy.strictness) for c in changes] == [(60, "kids-app", "lenient")]
    out = tmp_path / "out"
    result = runner.invoke(app, ["replay", "--scenario", "two-tenants", "--no-cache", "--no-plots", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["tenants"]) == {"kids-app", "gaming-forum"}
    assert [r["row"] for r in report["tenants"]["kids-app"]["adaptive"]["recovery"]] == [60]
