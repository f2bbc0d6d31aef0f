"""Scenario files: every file in simulators/ loads, the required stories exist, and bad files name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from aegis_online.simulate.scenario import ScenarioError, available_scenarios, load_scenario, scenario_dir

#: The stories the issue asks for, by file name.
REQUIRED = {
    "stationary",
    "abrupt",
    "gradual",
    "recurring",
    "jailbreak",
    "new-category",
    "label-noise",
    "delayed-feedback",
    "tenants",
}


def test_the_required_scenarios_exist() -> None:
    assert set(available_scenarios()) >= REQUIRED


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_scenario_loads_and_has_five_experts(name: str) -> None:
    scenario = load_scenario(name)
    assert scenario.name == name
    assert len(scenario.experts) == 5
    assert scenario.description


def test_each_story_has_the_feature_it_is_named_for() -> None:
    assert load_scenario("stationary").drift_points() == ()
    assert load_scenario("abrupt").drift_points() == (0.5,)
    assert len(load_scenario("recurring").drift_points()) == 2
    gradual = load_scenario("gradual").experts[0]
    assert gradual.quality["*"].kind == "linear" and gradual.bias.kind == "linear"  # quality and calibration drift
    assert load_scenario("jailbreak").jailbreak is not None
    assert any(c.appears_at > 0 for c in load_scenario("new-category").categories)
    assert load_scenario("label-noise").feedback.label_noise > 0
    assert load_scenario("delayed-feedback").feedback.delay.distribution != "none"
    strictness = {t.strictness for t in load_scenario("tenants").tenants}
    assert len(strictness) == 2


def test_a_scenario_loads_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text((scenario_dir() / "abrupt.yaml").read_text().replace("name: abrupt", "name: mine"))
    assert load_scenario(path).name == "mine"


def test_an_unknown_scenario_lists_the_known_ones() -> None:
    with pytest.raises(ScenarioError, match="abrupt"):
        load_scenario("no-such-scenario")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("categories: [{id: S99, base_rate: 0.1}]\nexperts: [{name: a, quality: 0.9}]", "categories.0.id"),
        ("categories: [{id: S1, base_rate: 0.1}]\nexperts: [{name: a, quality: 1.5}]", "experts.0"),
        ("categories: [{id: S1, base_rate: 0.1}]\nexperts: [{name: a, quality: {S8: 0.9}}]", "experts.0.quality"),
        ("categories: [{id: S1, base_rate: 0.1}]\nexperts: [{name: a, quality: 0.9, confidence: 0.4}]", "confidence"),
        (
            "categories: [{id: S1, base_rate: 0.1}]\nexperts: [{name: a, quality: 0.9}]\n"
            "feedback: {delay: {distribution: geometric}}",
            "mean",
        ),
        ("categories: [{id: S1, base_rate: 0.1}]\nexperts: [{name: a, quality: 0.9}]\nbandit: {k: 3}", "bandit"),
        ("categories: [{id: S1, base_rate: 0.1}]\nexperts: [{name: a, quality: 0.9}]\ntypo: 1", "typo"),
    ],
)
def test_a_bad_file_names_the_file_and_the_field(tmp_path: Path, body: str, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ScenarioError) as error:
        load_scenario(path)
    assert str(path) in str(error.value) and field in str(error.value)
