"""A plugin selector that raises, against `scanstream serve`: the other models run and start-up succeeds."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing import engine_process, storescu

PLUGIN_DIR = Path(__file__).parents[1] / "integration" / "plugins"


def test_a_raising_selector_blocks_no_other_model_and_not_start_up(tmp_path: Path, require_dcmtk: None) -> None:
    files = write_ct_series(generate_ct_phantom(173, slices=12, size=96), tmp_path / "study")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    engine = engine_process(tmp_path / "data", plugin_modules=["raising_selector"], plugin_paths=[PLUGIN_DIR],
                            models=["nodule-seg", "raising-selector"])
    with engine:
        sent = storescu(files, engine.port, executable="/usr/bin/storescu")
        assert sent.returncode == 0, sent.stderr
        (job,) = engine.wait_for_jobs(study_uid, 1)
        assert (job.model, job.state) == ("nodule-seg", "done"), job.reason
        events = [json.loads(line) for line in engine.log_path.read_text().splitlines() if line.startswith("{")]
        (failed,) = [e for e in events if e.get("event") == "router.selector_failed"]
        assert failed["model"] == "raising-selector" and "AttributeError" in failed["error"]
    with engine:  # start-up routes the complete series again, through the raising selector
        assert engine.http_status("/readyz") == 200
        ledger = engine.ledger()
        try:
            assert [j.model for j in ledger.study_jobs(study_uid)] == ["nodule-seg"]
        finally:
            ledger.close()
