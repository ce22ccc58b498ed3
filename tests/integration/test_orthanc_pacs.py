"""A real Orthanc as modality and PACS: it pushes a study to ScanStream, ScanStream sends the results back.

Checks that every DICOM result arrived in Orthanc, in the source study, that the
results reference the source series, and that processing the same study again
(a fresh engine: new jobs, same derived UIDs) adds nothing to the PACS, while a
late instance (a new revision of the series) sends new objects in a new series
that Orthanc keeps beside the first revision's.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pydicom
import pytest

from engine.testing.peers import OrthancPeer, orthanc_available
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing.ports import free_port
from engine.testing import EngineProcess, send_and_wait

pytestmark = pytest.mark.skipif(not orthanc_available(),
                                reason="Orthanc is not installed; `make test` installs it (apt-get install orthanc)")


def _engine(data_dir: Path, port: int, pacs: OrthancPeer) -> EngineProcess:
    destinations = [{"name": "orthanc", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port,
                     "backoff_initial_s": 0.5, "max_attempts": 5}]
    engine = EngineProcess(data_dir, workers=1, env={"SCANSTREAM_DESTINATIONS": json.dumps(destinations)})
    engine.port = port  # Orthanc's modality entry points here, so both engines use the same port
    return engine


def _wait_delivered(engine: EngineProcess, job_ids: list[str], timeout: float = 120.0) -> list:
    deadline = time.monotonic() + timeout
    ledger = engine.ledger()
    try:
        while time.monotonic() < deadline:
            rows = ledger.deliveries(job_ids)
            if rows and all(row.state != "pending" for row in rows):
                return rows
            time.sleep(0.2)
    finally:
        ledger.close()
    raise AssertionError(f"deliveries still pending after {timeout} s:\n{engine.log_tail()}")


def _run_once(data_dir: Path, port: int, pacs: OrthancPeer, study_uid: str) -> tuple[list, set[str]]:
    """Push the study from Orthanc to a fresh engine; wait for jobs and deliveries; returns them and result UIDs."""
    with _engine(data_dir, port, pacs) as engine:
        pacs.push_study("scanstream", study_uid)
        jobs = engine.wait_for_jobs(study_uid, 1)
        assert all(job.state == "done" for job in jobs), [(j.model, j.reason) for j in jobs]
        deliveries = _wait_delivered(engine, [job.job_id for job in jobs])
        assert all(row.state == "sent" for row in deliveries), [(d.destination, d.reason) for d in deliveries]
        result_uids = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
                       for job in jobs for path in Path(job.result_dir).glob("*.dcm")}
    return jobs, result_uids


def test_orthanc_pushes_a_study_and_receives_the_results(tmp_path: Path) -> None:
    phantom = generate_ct_phantom(7003, nodules=2, slices=24)
    files = write_ct_series(phantom, tmp_path / "study")
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid, series_uid = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
    port = free_port()
    with OrthancPeer(tmp_path / "orthanc", modalities={"scanstream": ("SCANSTREAM", "127.0.0.1", port)}) as pacs:
        pacs.upload(files)
        assert pacs.instance_count() == len(files)

        jobs, result_uids = _run_once(tmp_path / "first", port, pacs, study_uid)
        assert result_uids, "the models produced no DICOM results"
        held = pacs.study_instances(study_uid)
        by_uid = {item["SOPInstanceUID"]: item for item in held}
        assert result_uids <= set(by_uid), "a result did not reach Orthanc (or not in the source study)"
        assert pacs.instance_count() == len(files) + len(result_uids)
        seg_uids = [uid for uid in result_uids if by_uid[uid]["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.66.4"]
        assert seg_uids, "no SEG among the results"
        seg = pacs.get(f"/instances/{by_uid[seg_uids[0]]['id']}/simplified-tags")
        referenced = {item["SeriesInstanceUID"] for item in seg["ReferencedSeriesSequence"]}
        assert referenced == {series_uid}

        second_jobs, second_uids = _run_once(tmp_path / "second", port, pacs, study_uid)
        assert {job.job_id for job in second_jobs}.isdisjoint(job.job_id for job in jobs)
        assert second_uids == result_uids, "a re-run derived different result UIDs"
        assert pacs.instance_count() == len(files) + len(result_uids), "a re-run added duplicates to the PACS"


def test_a_late_instance_sends_a_new_revision_beside_the_first(tmp_path: Path) -> None:
    """Revision 2 of a series gets its own result UIDs and series: Orthanc keeps both, nothing is stale."""
    phantom = generate_ct_phantom(7011, nodules=2, slices=24)
    files = write_ct_series(phantom, tmp_path / "study")
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    study_uid = str(header.StudyInstanceUID)
    with OrthancPeer(tmp_path / "orthanc") as pacs:
        engine = _engine(tmp_path / "engine", free_port(), pacs)
        engine.extra = {"routing": {"models": ["nodule-seg"]}}
        engine.idle_timeout_s = 2.0  # the first revision (one slice short) completes on the idle timeout
        with engine:
            first = send_and_wait(files[:-1], engine, min_jobs=1)
            (first_job,) = first.jobs
            assert first_job.state == "done", first_job.reason
            first_files = {name: pydicom.dcmread(path, stop_before_pixels=True)
                           for name, path in first_job.files.items() if name.endswith(".dcm")}
            assert "seg.dcm" in first_files
            deliveries = _wait_delivered(engine, [first_job.job_id])
            assert all(row.state == "sent" for row in deliveries), [(d.destination, d.reason) for d in deliveries]

            second = send_and_wait(files[-1:], engine, min_jobs=2)
            (second_job,) = [job for job in second.jobs if job.job_id != first_job.job_id]
            assert second_job.state == "done", second_job.reason
            second_files = {name: pydicom.dcmread(path, stop_before_pixels=True)
                            for name, path in second_job.files.items() if name.endswith(".dcm")}
            deliveries = _wait_delivered(engine, [second_job.job_id])
            assert all(row.state == "sent" for row in deliveries), [(d.destination, d.reason) for d in deliveries]

        first_uids = {str(ds.SOPInstanceUID) for ds in first_files.values()}
        second_uids = {str(ds.SOPInstanceUID) for ds in second_files.values()}
        assert first_uids.isdisjoint(second_uids), "revision 2 reused revision 1's result UIDs"
        assert {str(ds.SeriesInstanceUID) for ds in first_files.values()}.isdisjoint(
            str(ds.SeriesInstanceUID) for ds in second_files.values()), "revision 2's results are not in new series"
        assert int(second_files["seg.dcm"].NumberOfFrames) > 0
        held = {item["SOPInstanceUID"] for item in pacs.study_instances(study_uid)}
        assert first_uids | second_uids <= held, "a revision's results did not reach Orthanc"
        assert len(held) == len(first_uids) + len(second_uids), "Orthanc holds objects besides the two revisions' results"
