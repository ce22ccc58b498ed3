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


@pytest.mark.parametrize(("flags", "key"), [
    (["--port", "99999"], "receiver.port (command line --port)"),
    (["--workers", "-4"], "worker.count (command line --workers)"),
    (["--http-port", "70000"], "http.port (command line --http-port)"),
])
def test_command_line_overrides_are_validated_like_the_file(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                            monkeypatch: pytest.MonkeyPatch, flags: list[str],
                                                            key: str) -> None:
    """``serve --port 99999`` stops before anything starts, naming the key and the flag (issue 16, item 3)."""
    monkeypatch.chdir(tmp_path)
    assert main(["serve", *flags, "--data-dir", str(tmp_path / "data")]) == 2
    assert key in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_plugins_lists_models_and_outputs(tmp_path: Path, capsys: pytest.CaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCANSTREAM_WORKER__MODEL_CACHE", str(tmp_path / "cache"))
    assert main(["plugins", "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "nodule-seg 1.0.0" in out and "seg" in out and "result_json" in out
    assert "backend: torch or onnxruntime: not timed on this host yet" in out
    assert "notification kinds:\n  hl7\n  webhook" in out


def test_models_build_exports_times_and_plugins_then_shows_the_choice(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.testing import TEST_MODEL_CACHE

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCANSTREAM_WORKER__MODEL_CACHE", str(TEST_MODEL_CACHE))  # shared: export once per machine
    monkeypatch.setenv("SCANSTREAM_WORKER__TORCH_THREADS", "1")
    assert main(["models", "build", "--model", "nodule-seg"]) == 0
    built = capsys.readouterr().out
    assert "model.onnx" in built and "backend: " in built and "items/s" in built
    assert main(["plugins", "--no-measure"]) == 0
    listed = capsys.readouterr().out
    chosen = next(line for line in built.splitlines() if line.strip().startswith("backend:")).split(":")[1].strip()
    assert f"backend: {chosen.split()[0]} on cpu: fastest on this CPU" in listed


def test_a_configured_backend_this_machine_lacks_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SCANSTREAM_WORKER__MODEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SCANSTREAM_WORKER__BACKEND", "tensorrt")
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert "backend: tensorrt on cuda (named by worker.backend in the configuration) cannot run here:" in out


def test_status_without_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["status", "--data-dir", str(tmp_path / "none")]) == 1
    assert "no ledger" in capsys.readouterr().err


def test_send_to_nothing_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["send", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_requeue_a_dead_job(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.ledger.store import InstanceMeta, Ledger
    from engine.receiver.spool import Spool, file_meta_bytes

    entry = Spool(tmp_path / "spool").store(file_meta_bytes("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4",
                                                            "1.2.840.10008.1.2.1"), b"")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_instance(InstanceMeta("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2"), entry, "CT1", 1.0)
    job = ledger.create_job("1.2.3", 1, "m", "1", now=1.0, max_attempts=1)
    ledger.claim_job("w", 2.0)
    ledger.release_job(job, 1, "heartbeat timeout", 3.0)
    ledger.close()
    assert main(["requeue", job, "nope", "--data-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "requeued 1 job(s)" in captured.out and "job nope is not failed" in captured.err
    assert main(["status", "--data-dir", str(tmp_path)]) == 0
    assert "queue depth: 1" in capsys.readouterr().out


def test_status_lists_failed_notifications(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.ledger.store import InstanceMeta, Ledger
    from engine.receiver.spool import SpoolEntry

    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_instance(InstanceMeta("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2"),
                        SpoolEntry("n", 1, "h"), "CT1", 1.0)
    ledger.add_notifications("study:1.2:final:1", "study_final", "1.2", None, "{}", ["ris", "hook"], 2.0)
    ledger.record_notification("study:1.2:final:1", "ris", "failed", 3.0, reason="rejected (ACK AR)")
    ledger.close()
    assert main(["status", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "notifications pending: 1" in out and "notifications failed: 1" in out
    assert "notification failed: study_final of study 1.2 to ris after 1 attempt(s): rejected (ACK AR)" in out
    assert main(["status", "--json", "--data-dir", str(tmp_path)]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["failed_notifications"] == [{"target": "ris", "trigger": "study_final", "job": None,
                                               "attempts": 1, "reason": "rejected (ACK AR)"}]


def test_requeue_refuses_a_job_whose_source_files_are_gone(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.ledger.store import InstanceMeta, Ledger
    from engine.receiver.spool import Spool, file_meta_bytes

    spool = Spool(tmp_path / "spool")
    entry = spool.store(file_meta_bytes("1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.840.10008.1.2.1"), b"")
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.add_instance(InstanceMeta("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2"), entry, "CT1", 1.0)
    job = ledger.create_job("1.2.3", 1, "m", "1", now=1.0)
    ledger.claim_job("w", 2.0)
    ledger.fail_job(job, 1, "source files gone", False, 3.0)
    ledger.close()
    spool.path(entry.name).unlink()
    assert main(["requeue", job, "--data-dir", str(tmp_path)]) == 1
    assert f"job {job} cannot run again: 1 of 1 spool file(s) of its series are gone" in capsys.readouterr().err
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        assert ledger.job(job).state == "failed"  # left as it was
    finally:
        ledger.close()


def test_backfill_names_an_unknown_model_and_a_bad_date(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from engine.ledger.store import Ledger

    Ledger(tmp_path / "ledger.sqlite").close()
    assert main(["backfill", "nope", "--since", "2026-01-01", "--data-dir", str(tmp_path)]) == 2
    assert "no model 'nope' to backfill (routing may use: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["backfill", "nodule-seg", "--since", "last week", "--data-dir", str(tmp_path)])
    assert exited.value.code == 2
    assert "--since takes a date as YYYY-MM-DD, got 'last week'" in capsys.readouterr().err
