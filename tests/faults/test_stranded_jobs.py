"""No job left leased to nobody, against `scanstream serve`: source files removed by hand, results unwritable."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pydicom

from engine.receiver.dispatch import SOURCE_GONE
from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing import EngineProcess, storescu

DCMTK_STORESCU = "/usr/bin/storescu"
ROUTING = {"routing": {"models": ["nodule-seg"]}}


def _study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _queued_job(engine: EngineProcess, timeout: float = 120.0):
    """The first job the engine queued (waits for the series to complete and be routed)."""
    deadline = time.monotonic() + timeout
    ledger = engine.ledger()
    try:
        while time.monotonic() < deadline:
            jobs = ledger.list_jobs("queued")
            if jobs:
                return jobs[0], ledger.series_instances(jobs[0].series_uid)
            time.sleep(0.2)
    finally:
        ledger.close()
    raise AssertionError(f"no job queued in {timeout} s:\n{engine.log_tail()}")


def test_a_spool_file_removed_while_its_job_waits_fails_the_job_and_the_study_is_final(
        tmp_path: Path, require_dcmtk: None) -> None:
    files = write_ct_series(generate_ct_phantom(171, slices=12, size=96), tmp_path / "study")
    with EngineProcess(tmp_path / "data", workers=0, extra=ROUTING) as engine:  # no worker yet: the job waits
        sent = storescu(files, engine.port, executable=DCMTK_STORESCU)
        assert sent.returncode == 0, sent.stderr
        job, instances = _queued_job(engine)
        (engine.data_dir / "spool" / instances[3].spool_name[:2] / instances[3].spool_name).unlink()  # by hand
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")}
        worker = subprocess.Popen([sys.executable, "-m", "engine.cli", "worker", "--config",
                                   str(engine.data_dir / "scanstream.toml")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            (failed,) = engine.wait_for_jobs(_study_uid(files), 1)
        finally:
            worker.terminate()
            worker.wait(60)
        assert failed.job_id == job.job_id and failed.state == "failed" and failed.attempts == 1
        assert failed.reason == f"{SOURCE_GONE}: 1 of 12 spool file(s) of the series are missing"
        report = engine.api_json(f"/api/studies/{_study_uid(files)}?wait_s=30")
        assert report["final"], report
        requeue = subprocess.run([sys.executable, "-m", "engine.cli", "requeue", job.job_id, "--data-dir",
                                  str(engine.data_dir)], env=env, capture_output=True, text=True, timeout=120)
        assert requeue.returncode == 1
        assert f"job {job.job_id} cannot run again: 1 of 12 spool file(s) of its series are gone" in requeue.stderr


def test_a_filing_error_is_retried_then_dead_lettered_with_the_reason(tmp_path: Path, require_dcmtk: None) -> None:
    files = write_ct_series(generate_ct_phantom(172, slices=12, size=96), tmp_path / "study")
    extra = {**ROUTING, "broker": {"max_attempts": 2}}
    with EngineProcess(tmp_path / "data", workers=1, extra=extra) as engine:
        results = engine.data_dir / "results"
        shutil.rmtree(results)
        results.write_text("the results folder cannot be written\n")
        sent = storescu(files, engine.port, executable=DCMTK_STORESCU)
        assert sent.returncode == 0, sent.stderr
        (job,) = engine.wait_for_jobs(_study_uid(files), 1, timeout=300)
        assert (job.state, job.attempts) == ("dead", 2), job  # retried once, never left leased
        assert job.reason.startswith("filing: "), job.reason
        assert engine.http_status("/healthz") == 200  # the server is up
