"""Purge and verify against `scanstream serve`: a finished study removed while the engine runs, then sent again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom

from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing import EngineProcess, storescu


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_a_finished_study_is_purged_while_serving_and_can_be_received_again(tmp_path: Path,
                                                                            require_storescu: str) -> None:
    files = write_ct_series(generate_ct_phantom(175, slices=8, size=64), tmp_path / "study")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    data = tmp_path / "data"
    with EngineProcess(data, workers=1, idle_timeout_s=2.0, extra={"routing": {"models": ["nodule-seg"]}}) as engine:
        assert storescu(files, engine.port, executable="/usr/bin/storescu").returncode == 0
        (job,) = engine.wait_for_jobs(study_uid, 1)
        assert job.state == "done", job.reason
        purged = _cli("purge", study_uid, "--data-dir", str(data))
        assert purged.returncode == 0, purged.stderr
        assert "removed 1 finished study (9 file(s) and folder(s))" in purged.stdout
        verified = _cli("verify", "--data-dir", str(data))
        assert verified.returncode == 0, verified.stdout
        assert "ledger and files agree (0 instance(s), 0 results folder(s))" in verified.stdout
        assert storescu(files, engine.port, executable="/usr/bin/storescu").returncode == 0  # received afresh
        (again,) = engine.wait_for_jobs(study_uid, 1)
        assert again.state == "done" and again.job_id != job.job_id, again.reason
    verified = _cli("verify", "--data-dir", str(data))
    assert verified.returncode == 0, verified.stdout
