"""A real Orthanc with its DICOMweb plugin as a STOW-RS destination, behind HTTP basic auth.

The engine's results reach Orthanc by STOW-RS and are found there by QIDO-RS
through dicomweb-client; Orthanc is stopped before the delivery and started
again after the first attempt failed: the delivery is retried, then sent. A
second destination with a wrong password fails at the first 401 (its attempts
while Orthanc was down were connection errors, retried).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from engine.testing import EngineProcess
from engine.testing.harness import make_phantom_study, send_and_wait
from engine.testing.peers import DICOMWEB_PLUGIN, OrthancPeer, orthanc_available

pytestmark = pytest.mark.skipif(not orthanc_available() or not DICOMWEB_PLUGIN.exists(),
                                reason="Orthanc with its DICOMweb plugin is not installed; `make test` installs "
                                       "them (apt-get install orthanc orthanc-dicomweb)")

USER, PASSWORD = "scanstream", "stow-secret"


def _wait_deliveries(engine: EngineProcess, job_ids: list[str], done, timeout: float = 180.0) -> list:
    deadline = time.monotonic() + timeout
    ledger = engine.ledger()
    rows: list = []
    try:
        while time.monotonic() < deadline:
            rows = ledger.deliveries(job_ids)
            if rows and done(rows):
                return rows
            time.sleep(0.2)
    finally:
        ledger.close()
    raise AssertionError(f"deliveries not as expected after {timeout} s: {rows}\n{engine.log_tail()}")


def test_results_reach_orthanc_by_stow_after_it_comes_back(tmp_path: Path) -> None:
    orthanc = OrthancPeer(tmp_path / "orthanc", dicomweb=True, users={USER: PASSWORD}).start()
    try:
        destinations = [
            {"name": "archive", "kind": "dicomweb", "url": orthanc.dicomweb_url, "username": USER,
             "password": PASSWORD, "backoff_initial_s": 0.5, "backoff_max_s": 2.0, "max_attempts": 30},
            {"name": "wrong-key", "kind": "dicomweb", "url": orthanc.dicomweb_url, "username": USER,
             "password": "not-it", "max_attempts": 5},
        ]
        study = make_phantom_study(tmp_path / "study", slices=24)
        engine = EngineProcess(tmp_path / "data", workers=1, extra={"routing": {"models": ["nodule-seg"]}},
                               env={"SCANSTREAM_DESTINATIONS": json.dumps(destinations)})
        with engine:
            orthanc.stop()  # down when the results are first sent
            results = send_and_wait(study, engine)
            (job,) = results.jobs
            assert job.state == "done", job.reason
            failed_once = _wait_deliveries(engine, [job.job_id], lambda rows: any(
                r.destination == "archive" and r.attempts >= 1 for r in rows))
            archive = next(r for r in failed_once if r.destination == "archive")
            assert archive.state == "pending" and "ConnectError" in archive.reason, archive
            orthanc.start()
            rows = _wait_deliveries(engine, [job.job_id], lambda rows: all(r.state != "pending" for r in rows))
            ledger = engine.ledger()
            try:
                (timeline,) = ledger.timelines([job.job_id])
            finally:
                ledger.close()
        by_name = {r.destination: r for r in rows}
        assert by_name["archive"].state == "sent" and by_name["archive"].attempts >= 2, by_name["archive"]
        wrong = by_name["wrong-key"]  # connection errors while Orthanc was down, then its first 401 ends it
        assert wrong.state == "failed" and "HTTP 401" in wrong.reason and wrong.attempts < 5, wrong
        assert timeline.stage_seconds()["deliver"] > 0

        session = requests.Session()
        session.auth = (USER, PASSWORD)
        client = DICOMwebClient(url=orthanc.dicomweb_url, session=session)
        found = client.search_for_instances(study_instance_uid=study.study_uid)
        found_uids = {item["00080018"]["Value"][0] for item in found}
        result_uids = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                       for path in job.folder.glob("*.dcm")}
        assert result_uids and result_uids <= found_uids, (result_uids, found_uids)
    finally:
        orthanc.stop()
