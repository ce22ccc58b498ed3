"""``scanstream verify`` on a real ledger, spool and results folder: orphans both ways, exit 1 when any."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from engine.cli import main
from engine.ledger.store import InstanceMeta, Ledger
from engine.outputs.store import ResultStore
from engine.receiver.spool import Spool, file_meta_bytes

SERIES = "1.2.826.0.1.3680043.8.498.9.1"


def build(data: Path) -> tuple[list[str], Path]:
    """A data folder with one series of two instances and one done job's results."""
    spool, results = Spool(data / "spool"), ResultStore(data / "results")
    ledger = Ledger(data / "ledger.sqlite")
    names = []
    for n in (1, 2):
        entry = spool.store(file_meta_bytes(CTImageStorage, f"{SERIES}.{n}", ExplicitVRLittleEndian), b"")
        ledger.add_instance(InstanceMeta("1.2", SERIES, f"{SERIES}.{n}", CTImageStorage), entry, "CT1", 1.0)
        names.append(entry.name)
    ledger.complete_series(SERIES, "test", 2.0)
    job = ledger.create_job(SERIES, 1, "m", "1", now=2.0)
    ledger.mark_routed(SERIES, 1)  # as the router does
    ledger.claim_job("w", 3.0)
    folder = results.file(ledger.study_key("1.2"), "m", ledger.series_key(SERIES), [("result.json", b"{}")])
    ledger.complete_job(job, 1, str(folder), 4.0)
    ledger.close()
    return names, folder


def test_verify_is_clean_then_reports_orphans_both_ways(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names, folder = build(tmp_path)
    assert main(["verify", "--data-dir", str(tmp_path)]) == 0
    assert "ledger and files agree (2 instance(s), 1 results folder(s))" in capsys.readouterr().out
    spool = Spool(tmp_path / "spool")
    spool.path(names[0]).unlink()
    stray = spool.path("ab" * 16)
    stray.write_bytes(b"x")
    (folder.parent / "se_000000000000").mkdir()
    assert main(["verify", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"missing: instance of series " in out and f"spool file {names[0]} is missing" in out
    assert f"orphan: spool: ab/{'ab' * 16} is named by no instance" in out
    assert "is named by no done job" in out and "se_000000000000" in out
    assert "ledger and files disagree: 1 missing, 2 orphan(s)" in out
    assert SERIES not in out  # opaque keys, never UIDs


def test_verify_names_a_missing_results_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, folder = build(tmp_path)
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    assert main(["verify", "--data-dir", str(tmp_path)]) == 1
    assert "results folder" in capsys.readouterr().out
