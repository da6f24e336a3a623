from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import ConfigError, GatewaySettings, load_settings

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_default_yaml_is_exactly_the_built_in_default() -> None:
    assert load_settings(CONFIGS / "default.yaml") == GatewaySettings()


@pytest.mark.parametrize("name", ["vllm.yaml", "sglang.yaml", "compose.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    settings = load_settings(CONFIGS / name)
    assert all(pool.workers for pool in settings.pools)
    roles = {role for pool in settings.pools for role in pool.roles}
    assert roles == {"small", "large", "judge"}


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("server: {port: 9000, log_level: warning}\n")
    monkeypatch.setenv("TTC_SERVER__PORT", "9100")
    settings = load_settings(path)
    assert settings.server.port == 9100
    assert settings.server.log_level == "warning"


def test_bad_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(
        "pools:\n  - name: a\n    engine: tgi\n    model: m\n    workers: [{url: 'http://x'}]\n"
    )
    with pytest.raises(ConfigError, match=r"pools\.0\.engine"):
        load_settings(path)


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("limits: {max_k: 3}\n")
    with pytest.raises(ConfigError, match=r"limits\.max_k: Extra inputs are not permitted"):
        load_settings(path)


def test_pool_without_workers_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("pools:\n  - {name: a, engine: vllm, model: m}\n")
    with pytest.raises(ConfigError, match="a pool needs `workers`, `discovery` or `embedded`"):
        load_settings(path)


def test_worker_url_needs_a_scheme(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("pools:\n  - {name: a, engine: vllm, model: m, workers: [{url: 'host:1'}]}\n")
    with pytest.raises(ConfigError, match=r"pools\.0\.workers\.0"):
        load_settings(path)


def test_not_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "g.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_settings(path)


def test_a_keys_file_is_refused_with_several_processes_and_no_redis() -> None:
    """Each process would keep its own limits and spending, and overwrite the others' file."""
    with pytest.raises(ValidationError, match=r"auth\.keys_file keeps each key's limits"):
        GatewaySettings(server={"workers": 2}, auth={"keys_file": "/tmp/keys.json"})
    GatewaySettings(
        server={"workers": 2},
        auth={"keys_file": "/tmp/keys.json"},
        state={"redis_url": "redis://127.0.0.1:6379/0"},
    )
