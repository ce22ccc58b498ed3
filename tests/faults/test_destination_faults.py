"""Destination faults against a real engine: a PACS that is down, then comes back; one that never does.

The engine retries with backoff while the PACS (a real Orthanc) is down and
delivers once it is up; a destination that stays down ends failed with the
reason after its attempts, visible in ``scanstream status`` and ``/metrics``.
Nothing is lost either way: the results stay in the engine's result folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pydicom
import pytest

from engine.testing.peers import OrthancPeer, orthanc_available
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing.ports import free_port
from engine.testing import EngineProcess, storescu

pytestmark = pytest.mark.skipif(not orthanc_available(),
                                reason="Orthanc is not installed; `make test` installs it (apt-get install orthanc)")


def _deliveries(engine: EngineProcess) -> dict[str, object]:
    ledger = engine.ledger()
    try:
        return {row.destination: row for row in ledger.deliveries()}
    finally:
        ledger.close()


def _wait(predicate, what: str, engine: EngineProcess, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen in {timeout} s:\n{engine.log_tail()}")


def test_pacs_down_then_back_and_one_that_stays_down(tmp_path: Path, require_dcmtk: None) -> None:
    files = write_ct_series(generate_ct_phantom(7005, nodules=1, slices=16), tmp_path / "study")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pacs_port, dead_port = free_port(), free_port()
    destinations = [
        {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": pacs_port,
         "backoff_initial_s": 0.5, "backoff_max_s": 1.0, "max_attempts": 1000},
        {"name": "gone", "ae_title": "GONE", "host": "127.0.0.1", "port": dead_port,
         "backoff_initial_s": 0.2, "backoff_max_s": 0.4, "max_attempts": 3, "timeout_s": 2},
    ]
    engine = EngineProcess(tmp_path / "data", workers=1, extra={"routing": {"models": ["nodule-seg"]}}, env={"SCANSTREAM_DESTINATIONS": json.dumps(destinations)})
    with engine:
        assert storescu(files, engine.port).returncode == 0
        (job,) = engine.wait_for_jobs(study_uid, 1)
        assert job.state == "done", job.reason
        results = sorted(Path(job.result_dir).glob("*.dcm"))
        assert results

        retried = _wait(lambda: (lambda rows: rows.get("pacs") if rows.get("pacs") and rows["pacs"].attempts >= 2
                                 else None)(_deliveries(engine)), "two attempts on the down PACS", engine)
        assert retried.state == "pending" and "association" in retried.reason

        gone = _wait(lambda: (lambda rows: rows.get("gone") if rows.get("gone") and rows["gone"].state == "failed"
                              else None)(_deliveries(engine)), "the dead destination to fail", engine)
        assert gone.attempts == 3 and gone.reason.startswith("gave up after 3 attempts")

        with OrthancPeer(tmp_path / "orthanc", dicom_port=pacs_port) as pacs:
            sent = _wait(lambda: (lambda rows: rows["pacs"] if rows["pacs"].state == "sent" else None)(
                _deliveries(engine)), "delivery once the PACS is up", engine)
            assert sent.attempts >= 3
            assert pacs.instance_count() == len(results)

        with urllib.request.urlopen(f"http://127.0.0.1:{engine.http_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert 'scanstream_deliveries{state="failed"} 1.0' in metrics
        assert 'scanstream_deliveries{state="sent"} 1.0' in metrics
        status = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--json", "--config",
                                 str(engine.data_dir / "scanstream.toml")], capture_output=True, text=True, timeout=60)
        report = json.loads(status.stdout)
        assert report["counts"]["deliveries failed"] == 1
        (failed,) = report["failed_deliveries"]
        assert failed["destination"] == "gone" and "gave up" in failed["reason"]
