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


def _state(data: Path, after: float):
    from engine.receiver.retention import read_state

    state = read_state(data)
    return state if state is not None and state.checked > after else None


def _metric(engine: EngineProcess, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"{engine.http_url}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


def test_a_small_quota_recycles_the_oldest_finished_studies_and_never_refuses(tmp_path: Path,
                                                                             require_storescu: str) -> None:
    import time

    from engine.retention.policy import folder_bytes
    from engine.testing.waiting import wait_until

    studies = []
    for seed in range(4):
        files = write_ct_series(generate_ct_phantom(300 + seed, slices=8, size=256), tmp_path / f"study{seed}")
        studies.append((str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID), files))
    data = tmp_path / "data"
    retention = {"enabled": True, "quota_bytes": 10**12, "grace_hours": 0.0, "interval_s": 0.3}
    extra = {"routing": {"models": ["nodule-seg"]}, "retention": retention}
    with EngineProcess(data, workers=1, idle_timeout_s=1.0, extra=extra) as engine:  # measure one study
        assert storescu(studies[0][1], engine.port, executable=require_storescu).returncode == 0
        (job,) = engine.wait_for_jobs(studies[0][0], 1)
        assert job.state == "done", job.reason
        finished = time.time()
        one = wait_until(lambda: _state(data, finished), "a retention pass after the first study")
        ledger = engine.ledger()
        study_bytes = ledger.received_totals()[1] + folder_bytes(data / "results")  # spool + results
        ledger.close()
    quota = one.used_bytes + study_bytes // 2  # room for one study and the ledger, not for two
    retention["quota_bytes"] = quota
    with EngineProcess(data, workers=1, idle_timeout_s=1.0, extra=extra) as engine:
        for uid, files in studies[1:]:
            sent = storescu(files, engine.port, executable=require_storescu)
            assert sent.returncode == 0, sent.stderr  # never refused: a finished study was always recyclable
            (job,) = engine.wait_for_jobs(uid, 1)
            assert job.state == "done", job.reason
            finished = time.time()
            state = wait_until(lambda: _state(data, finished), "a retention pass after the study finished")
            assert state.used_bytes <= quota and not state.quota_full, (state, quota)
        ledger = engine.ledger()
        try:
            assert ledger.finished_studies() == [studies[-1][0]]  # the older ones were recycled, oldest first
        finally:
            ledger.close()
        assert _metric(engine, "scanstream_studies_recycled_total") == 3
        assert _metric(engine, "scanstream_quota_refusing") == 0 and _metric(engine, "scanstream_quota_bytes") == quota
    verified = _cli("verify", "--data-dir", str(data))
    assert verified.returncode == 0, verified.stdout
