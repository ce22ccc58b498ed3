"""From a real storescu C-STORE to a DICOM SEG, through `scanstream serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing import EngineProcess, storescu
from engine.testing.waiting import wait_until

from .conftest import PLUGIN_DIR


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def seg_mask(seg_path: Path, source_files: list[Path]) -> np.ndarray:
    """The SEG's segment 1 as a volume ordered like ``source_files``."""
    seg = hd.seg.segread(seg_path)
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in source_files]
    referenced = {str(item.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
                  for item in s.ReferencedInstanceSequence}
    assert referenced <= set(uids)
    mask = np.zeros((len(uids), seg.Rows, seg.Columns), dtype=bool)
    present = [u for u in uids if u in referenced]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=present, segment_numbers=[1])
    for uid, frame in zip(present, pixels[..., 0]):
        mask[uids.index(uid)] = frame > 0
    return mask


def test_storescu_to_seg(tmp_path: Path, require_storescu: str) -> None:
    phantom = generate_ct_phantom(7001, nodules=3)
    files = write_ct_series(phantom, tmp_path / "study")
    with EngineProcess(tmp_path / "data", workers=1, extra={"routing": {"models": ["nodule-seg"]}}) as engine:
        sent = storescu(files, engine.port)
        assert sent.returncode == 0, sent.stderr
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        (job,) = engine.wait_for_jobs(study_uid, 1)
        assert job.state == "done", job.reason
        folder = Path(job.result_dir)
        assert folder.is_relative_to(tmp_path / "data" / "results")
        result = json.loads((folder / "result.json").read_text())
        assert result["model"] == "nodule-seg" and result["series_instance_uid"] == series_uid
        assert len(result["findings"]) == 3
        seg = pydicom.dcmread(folder / "seg.dcm")
        assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
        assert seg.StudyInstanceUID == study_uid
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
        assert dice(seg_mask(folder / "seg.dcm", files), phantom.nodule_mask) >= 0.8
        with urllib.request.urlopen(f"http://127.0.0.1:{engine.http_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert "scanstream_instances_received_total 48.0" in metrics
        report = engine.api_json(f"/api/studies/{study_uid}")
        assert report["final"] and [s["instances"] for s in report["series"]] == [48]
        assert [(j["model"], j["state"]) for j in report["jobs"]] == [("nodule-seg", "done")]
        assert {"decode", "infer", "end_to_end"} <= set(report["jobs"][0]["stages_s"])
        assert report["jobs"][0]["artifacts"] == sorted(path.name for path in folder.iterdir())
        assert {"result.json", "seg.dcm", "preview.dcm"} <= set(report["jobs"][0]["artifacts"])
        assert 'scanstream_stage_seconds_count{model="nodule-seg",stage="infer"} 1.0' in metrics
        assert 'scanstream_stage_seconds_count{model="nodule-seg",stage="end_to_end"} 1.0' in metrics
        status = subprocess.run([sys.executable, "-m", "engine.cli", "status", "--json", "--config",
                                 str(engine.data_dir / "scanstream.toml")], capture_output=True, text=True)
        report = json.loads(status.stdout)
        counts = report["counts"]
        assert (counts["studies"], counts["instances"], counts["done"], counts["queue depth"]) == (1, 48, 1, 0)
        latency = report["latency_s"]
        assert latency["infer"]["count"] == latency["assemble"]["count"] == latency["queue"]["count"] == 1
        assert latency["end_to_end"]["p50"] >= latency["infer"]["p50"]
    assert engine.process.returncode == 0


def test_study_split_over_two_associations_out_of_order(tmp_path: Path, require_storescu: str) -> None:
    study_uid = pydicom.uid.generate_uid()
    series = []
    for index, seed in enumerate((7002, 7003)):
        phantom = generate_ct_phantom(seed, nodules=1)
        series.append(write_ct_series(phantom, tmp_path / f"series{index}", study_uid=study_uid))
    everything = [f for files in series for f in files]
    first = everything[::2][::-1]   # every other instance of both series, last slice first
    second = everything[1::2][::-1]
    with EngineProcess(tmp_path / "data", workers=1, idle_timeout_s=30.0, extra={"routing": {"models": ["nodule-seg"]}}) as engine:
        assert storescu(first, engine.port).returncode == 0
        assert storescu(second, engine.port).returncode == 0
        engine.wait_for_jobs(study_uid, 2)
        ledger = engine.ledger()
        try:  # jobs are made per completed revision: both series closed at revision 1 means no late duplicate
            studied = [(row.state, row.revision) for row in ledger.study_series(study_uid)]
            jobs = ledger.study_jobs(study_uid)
        finally:
            ledger.close()
    assert studied == [("complete", 1), ("complete", 1)]
    assert len(jobs) == 2
    assert {job.state for job in jobs} == {"done"}
    assert {job.series_revision for job in jobs} == {1}
    assert len({job.series_uid for job in jobs}) == 2
    assert len({job.result_dir for job in jobs}) == 2


def test_worker_killed_holding_a_job_is_released_and_result_appears_once(tmp_path: Path,
                                                                          require_storescu: str) -> None:
    phantom = generate_ct_phantom(7004, slices=12, nodules=0)
    files = write_ct_series(phantom, tmp_path / "study")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    engine = EngineProcess(
        tmp_path / "data", workers=2, heartbeat_interval_s=0.3,
        extra={"plugins": {"modules": ["slow_model"], "disabled": ["plugins.nodule_seg"]},
               "routing": {"models": ["slow-test"]}},
        env={"PYTHONPATH": os.pathsep.join([str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]),
             "SLOW_MODEL_HOLD_S": "4"},
    )
    with engine:
        assert storescu(files, engine.port).returncode == 0
        ledger = engine.ledger()
        try:
            holder = wait_until(lambda: next((j for j in ledger.study_jobs(study_uid) if j.state == "leased"), None),
                                "a job leased to a worker", detail=engine.log_tail)
            pid = int(holder.worker.split(":")[1])
            os.kill(pid, signal.SIGKILL)
        finally:
            ledger.close()
        (job,) = engine.wait_for_jobs(study_uid, 1, timeout=90)
    assert job.state == "done", job.reason
    assert job.attempts == 2
    assert job.worker != holder.worker
    result = json.loads((Path(job.result_dir) / "result.json").read_text())
    assert result["attempt"] == 2 and result["extra"]["pid"] != pid
    folders = [p for p in (tmp_path / "data" / "results").rglob("result.json")]
    assert len(folders) == 1
