"""The `scanstream` command: config errors, plugin listing, status without a ledger."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main


def test_invalid_config_exits_2_naming_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "scanstream.toml"
    config.write_text("[receiver]\nport = -3\n")
    assert main(["plugins", "--config", str(config)]) == 2
    assert "receiver.port" in capsys.readouterr().err


def test_plugins_lists_models_and_outputs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "nodule-seg 1.0.0" in out and "seg" in out and "result_json" in out


def test_status_without_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["status", "--data-dir", str(tmp_path / "none")]) == 1
    assert "no ledger" in capsys.readouterr().err


def test_send_to_nothing_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["send", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
