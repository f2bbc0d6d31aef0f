"""The service config: YAML under environment overrides, validated at once with errors naming file and field; keys
from a secrets file or the environment, never shown; open development mode on loopback only."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aegis_online.config import ConfigError, ServiceConfig, is_loopback, load_config
from aegis_online.serve.auth import KeyTable, key_digest, load_key_table, require_safe_exposure

SECRET = "super-secret-key-value-123456"


def write(path: Path, document: object) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


def test_defaults_serve_the_catalogs_cpu_experts_on_embedded_backends() -> None:
    config = load_config(environ=False)
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    assert (config.store.kind, config.bus.kind) == ("memory", "inprocess")
    plan = config.expert_plan()
    assert [spec.name for spec, _ in plan] == ["lexical-heads", "minilm-embedding", "minilm-heads", "profanity-check"]
    assert all(spec.hardware.gpus == 0 for spec, _ in plan)


def test_yaml_is_overridden_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path / "service.yaml",
        {
            "server": {"port": 9000},
            "store": {"prefix": "p:"},
            "experts": {"use": ["profanity-check", {"name": "minilm-embedding", "replicas": 2, "max_batch_size": 8}]},
            "policies": [{"tenant": "kids", "strictness": "strict"}],
        },
    )
    monkeypatch.setenv("AEGIS_SERVE_SERVER__PORT", "9100")
    monkeypatch.setenv("AEGIS_SERVE_STORE__KIND", "redis")
    monkeypatch.setenv("AEGIS_SERVE_STORE__REDIS_URL", "redis://127.0.0.1:6379/0")
    config = load_config(path)
    assert config.server.port == 9100
    assert (config.store.kind, config.store.prefix) == ("redis", "p:")
    assert [(e.name, e.replicas) for e in config.experts.use or []] == [("profanity-check", 1), ("minilm-embedding", 2)]
    assert config.policies[0].tenant == "kids"


@pytest.mark.parametrize(
    ("document", "needle"),
    [
        ({"sever": {}}, "unknown sections ['sever']"),
        ({"server": {"port": 0}}, "server.port: Input should be greater than or equal to 1"),
        ({"store": {"kind": "redis"}}, "store.redis_url: the redis store needs a URL"),
        ({"bus": {"kind": "kafka"}}, "bus.bootstrap_servers: the kafka bus needs brokers"),
        ({"experts": {"use": [{"name": "x", "max_batch_size": 100, "max_ongoing_requests": 10}]}}, "can never fill"),
        ({"experts": {"use": ["a", "a"]}}, "experts listed twice"),
        ({"ingress": {"replicas": 2}}, "ingress.replicas: the memory store"),
        ({"learner": {"name": "magic"}}, "unknown learner 'magic'"),
        ({"policies": [{"tenant": "a"}, {"tenant": "a"}]}, "more than one policy"),
        ({"policies": [{"categories": {"nope": {}}}]}, "policies.0.categories.nope: unknown category"),
        ({"auth": {"keys": [{"key": "short", "tenant": "a"}]}}, "at least 16 characters"),
        ({"auth": {"keys": [{"key": SECRET}]}}, "a client key acts for one tenant"),
        ({"limits": {"deadline_ms": "soon"}}, "limits.deadline_ms"),
    ],
)
def test_invalid_configs_fail_naming_the_file_and_field(tmp_path: Path, document: dict, needle: str) -> None:
    path = write(tmp_path / "bad.yaml", document)
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ=False)
    assert needle in str(raised.value) and str(path) in str(raised.value)


def test_unreadable_and_non_mapping_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("server: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_unknown_experts_are_refused_at_start() -> None:
    config = ServiceConfig.model_validate({"experts": {"use": ["no-such-expert"]}})
    with pytest.raises(ConfigError, match=r"experts\.use\.0: unknown expert 'no-such-expert'"):
        config.expert_plan()


def test_keys_come_from_a_file_relative_to_the_config_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        tmp_path / "keys.yaml",
        {
            "keys": [
                {"name": "acme", "key": SECRET, "tenant": "acme"},
                {"name": "ops", "key_sha256": key_digest("another-secret-key-000000"), "role": "admin"},
            ]
        },
    )
    config = load_config(write(tmp_path / "service.yaml", {"auth": {"keys_file": "keys.yaml"}}))
    monkeypatch.setenv("AEGIS_SERVE_AUTH__KEYS", f'[{{"key": "{SECRET}-env", "tenant": "globex"}}]')
    config = load_config(write(tmp_path / "service.yaml", {"auth": {"keys_file": "keys.yaml"}}))
    table = load_key_table(config.auth)
    assert len(table) == 3
    assert table.authenticate(SECRET).tenant == "acme"
    assert table.authenticate(SECRET + "-env").tenant == "globex"
    ops = table.authenticate("another-secret-key-000000")
    assert ops.role == "admin" and ops.tenant is None
    assert table.authenticate("wrong-key-0000000000000") is None


def test_keys_never_appear_in_reprs_dumps_errors_or_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AEGIS_SERVE_AUTH__KEYS", f'[{{"key": "{SECRET}", "tenant": "acme"}}]')
    caplog.set_level(logging.DEBUG)
    config = load_config()
    table = load_key_table(config.auth)
    for text in (repr(config), str(config), config.model_dump_json(), repr(table), str(table.to_wire())):
        assert SECRET not in text
    duplicate = write(
        tmp_path / "keys.yaml", {"keys": [{"key": SECRET, "tenant": "a"}, {"key": SECRET, "tenant": "b"}]}
    )
    with pytest.raises(ConfigError) as raised:
        load_key_table(ServiceConfig.model_validate({"auth": {"keys_file": str(duplicate)}}).auth)
    assert "configured twice" in str(raised.value) and SECRET not in str(raised.value)
    bad = write(tmp_path / "bad.yaml", {"keys": [{"key": SECRET, "role": "client"}]})
    with pytest.raises(ConfigError) as raised:
        load_key_table(ServiceConfig.model_validate({"auth": {"keys_file": str(bad)}}).auth)
    assert SECRET not in str(raised.value)
    assert SECRET not in caplog.text


def test_open_mode_is_allowed_on_loopback_only() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    require_safe_exposure(load_config(environ=False), KeyTable({}))
    exposed = load_config(environ=False).with_server(host="0.0.0.0")
    with pytest.raises(ConfigError, match=r"refusing to serve 0\.0\.0\.0 without API keys"):
        require_safe_exposure(exposed, KeyTable({}))
    require_safe_exposure(
        exposed,
        KeyTable.from_keys(
            ServiceConfig.model_validate({"auth": {"keys": [{"key": SECRET, "tenant": "a"}]}}).auth.keys
        ),
    )


def test_serve_refuses_a_public_address_without_keys_before_starting_anything(tmp_path: Path) -> None:
    import typer

    from aegis_online.rayserve.cli import (
        main,  # noqa: F401 - the module imports without Ray
        serve_command,
    )

    app = typer.Typer()
    app.command()(serve_command)
    result = CliRunner().invoke(app, ["--host", "0.0.0.0", "--port", "8123"], env={"AEGIS_SERVE_CONFIG": ""})
    assert result.exit_code == 2
    assert "refusing to serve 0.0.0.0 without API keys" in result.output
    bad = write(tmp_path / "bad.yaml", {"server": {"port": "x"}})
    result = CliRunner().invoke(app, ["--config", str(bad)])
    assert result.exit_code == 2 and "server.port" in result.output


def test_the_example_config_and_keys_file_are_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parents[2] / "deploy"
    monkeypatch.setenv("AEGIS_SERVE_AUTH__KEYS_FILE", str(root / "keys.example.yaml"))
    config = load_config(root / "serve-config.yaml")
    assert [spec.name for spec, _ in config.expert_plan()] == [
        "profanity-check",
        "minilm-embedding",
        "minilm-heads",
        "lexical-heads",
    ]
    table = load_key_table(config.auth)
    assert len(table) == 4 and table.authenticate("replace-with-a-random-token-for-operators").role == "admin"
    assert table.authenticate("replace-with-a-random-token-for-reviewers").role == "moderator"
