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


def test_requeue_a_dead_job(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.receiver.ledger import InstanceMeta, Ledger
    from engine.receiver.spool import SpoolEntry

    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_instance(InstanceMeta("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2"),
                        SpoolEntry("n", 1, "h"), "CT1", 1.0)
    job = ledger.create_job("1.2.3", 1, "m", "1", now=1.0, max_attempts=1)
    ledger.claim_job("w", 2.0)
    ledger.release_job(job, 1, "heartbeat timeout", 3.0)
    ledger.close()
    assert main(["requeue", job, "nope", "--data-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "requeued 1 job(s)" in captured.out and "job nope is not failed" in captured.err
    assert main(["status", "--data-dir", str(tmp_path)]) == 0
    assert "queue depth: 1" in capsys.readouterr().out
