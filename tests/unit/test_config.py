"""Config: TOML + SCANSTREAM_* overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import ConfigError, EngineConfig, config_as_env, load_config


def test_defaults_match_the_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.receiver.port == 11112
    assert config.receiver.ae_title == "SCANSTREAM"
    assert config.http.port == 8080
    assert config.storage.data_dir == Path("scanstream-data")


def test_file_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "scanstream.toml"
    path.write_text('[receiver]\nport = 4242\nae_title = "FROMFILE"\n[worker]\ncount = 3\n')
    config = load_config(path, environ={"SCANSTREAM_RECEIVER__PORT": "5151",
                                        "SCANSTREAM_RECEIVER__ALLOWED_CALLING_AETS": "CT1, MR2"})
    assert config.receiver.port == 5151
    assert config.receiver.ae_title == "FROMFILE"
    assert config.receiver.allowed_calling_aets == ["CT1", "MR2"]
    assert config.worker.count == 3


def test_bad_value_names_key_source_and_expectation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(environ={"SCANSTREAM_RECEIVER__PORT": "eleven"})
    text = str(error.value)
    assert "receiver.port" in text and "SCANSTREAM_RECEIVER__PORT" in text and "integer" in text


def test_file_errors_name_the_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[receiver]\nport = 70000\n[assembler]\nidle_timeout_s = -1\n[brokr]\nbind = "x"\n')
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    text = str(error.value)
    assert "receiver.port" in text and "less than or equal to 65535" in text and str(path) in text
    assert "assembler.idle_timeout_s" in text
    assert "brokr" in text and "unknown key" in text


@pytest.mark.parametrize("toml", ['[receiver]\nae_title = "WAY_TOO_LONG_AE_TITLE"\n',
                                  '[broker]\nbind = "localhost:5570"\n',
                                  '[receiver]\nduplicate_policy = "sometimes"\n'])
def test_invalid_forms_are_rejected(tmp_path: Path, toml: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError):
        load_config(path, environ={})


def test_not_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[receiver\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_environment_round_trip_for_child_processes() -> None:
    config = EngineConfig.model_validate({"receiver": {"port": 1234, "allowed_calling_aets": ["A", "B"]},
                                          "worker": {"count": 2}})
    assert load_config(environ=config_as_env(config)) == config


def test_worker_broker_defaults_to_bind_address() -> None:
    config = EngineConfig.model_validate({"broker": {"bind": "tcp://0.0.0.0:6000"}})
    assert config.worker_broker == "tcp://127.0.0.1:6000"


def test_retention_is_off_by_default_and_names_what_an_enabled_one_lacks(tmp_path: Path) -> None:
    retention = load_config(environ={}).retention
    assert not retention.enabled and retention.quota_bytes is None and retention.keep_days is None
    with pytest.raises(ConfigError, match="retention.enabled needs retention.keep_days"):
        load_config(environ={"SCANSTREAM_RETENTION__ENABLED": "true"})
    with pytest.raises(ConfigError, match="retention.quota_bytes"):
        load_config(environ={"SCANSTREAM_RETENTION__ENABLED": "true", "SCANSTREAM_RETENTION__QUOTA_BYTES": "0"})
    config = load_config(environ={"SCANSTREAM_RETENTION__ENABLED": "true", "SCANSTREAM_RETENTION__KEEP_DAYS": "30",
                                  "SCANSTREAM_RETENTION__QUOTA_BYTES": "1000000"})
    assert config.retention.keep_days == 30 and config.retention.quota_bytes == 1000000
