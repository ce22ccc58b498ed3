"""Backfill is a choice, against `scanstream serve`: a model added later runs on history only when asked."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pydicom

from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing import engine_process, storescu
from engine.testing.ports import free_port

PLUGIN_DIR = Path(__file__).parent / "plugins"


def test_a_model_added_later_runs_on_history_only_when_backfilled(tmp_path: Path, require_storescu: str) -> None:
    files = write_ct_series(generate_ct_phantom(174, slices=8, size=64), tmp_path / "study")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    pacs = {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": free_port(), "max_attempts": 1}
    engine = engine_process(tmp_path / "data", plugin_modules=["flaky_model"], plugin_paths=[PLUGIN_DIR],
                            models=["nodule-seg"], config={"destinations": [pacs]}, idle_timeout_s=2.0)
    with engine:
        sent = storescu(files, engine.port, executable="/usr/bin/storescu")
        assert sent.returncode == 0, sent.stderr
        (first,) = engine.wait_for_jobs(study_uid, 1)
        assert first.model == "nodule-seg" and first.state == "done", first.reason
    engine.extra["routing"]["models"] = ["nodule-seg", "flaky-test"]  # a model added to routing
    with engine:
        ledger = engine.ledger()
        try:  # start-up has routed what it routes before /readyz answers 200: history is left alone
            assert [job.model for job in ledger.study_jobs(study_uid)] == ["nodule-seg"]
        finally:
            ledger.close()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SCANSTREAM_")}, **engine.env}
        since = (date.today() - timedelta(days=1)).isoformat()
        backfill = subprocess.run([sys.executable, "-m", "engine.cli", "backfill", "flaky-test", "--since", since,
                                   "--config", str(engine.data_dir / "scanstream.toml")],
                                  env=env, capture_output=True, text=True, timeout=120)
        assert backfill.returncode == 0, backfill.stderr
        assert f"queued 1 job(s) of flaky-test on series completed since {since}" in backfill.stdout
        jobs = {job.model: job for job in engine.wait_for_jobs(study_uid, 2)}
        assert jobs["flaky-test"].state == "done", jobs["flaky-test"].reason
        ledger = engine.ledger()
        try:
            assert ledger.deliveries([jobs["flaky-test"].job_id]) == []  # not asked to deliver
            assert [row.destination for row in ledger.deliveries([first.job_id])] == ["pacs"]
        finally:
            ledger.close()
    verify = subprocess.run([sys.executable, "-m", "engine.cli", "verify", "--data-dir", str(engine.data_dir)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr  # ledger and files agree after a real run
    assert "ledger and files agree (8 instance(s), 2 results folder(s))" in verify.stdout
