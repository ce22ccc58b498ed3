"""Bad data that passes the receiver's checks, and load: never silent, never lost."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
from pydicom.encaps import encapsulate, generate_fragmented_frames
from pydicom.uid import JPEG2000Lossless

from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing import EngineProcess, storescu


def test_corrupt_jpeg2000_is_acknowledged_then_its_job_fails_with_the_reason(tmp_path: Path,
                                                                              require_dcmtk: None) -> None:
    files = write_ct_series(generate_ct_phantom(61, slices=12, size=128), tmp_path / "plain")
    corrupt = []
    for index, path in enumerate(files):
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless)
        if index == 5:  # keep the codestream's header, scramble its body
            (frame,) = [b"".join(f) for f in generate_fragmented_frames(ds.PixelData, number_of_frames=1)]
            body = bytearray(frame)
            body[120:] = bytes((b * 7 + 13) % 256 for b in body[120:])
            ds.PixelData = encapsulate([bytes(body)])
        target = tmp_path / "j2k" / path.name
        target.parent.mkdir(exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
        corrupt.append(target)
    with EngineProcess(tmp_path / "data", workers=1, extra={"routing": {"models": ["nodule-seg"]}}) as engine:
        sent = storescu(corrupt, engine.port, extra_args=("-xv",))  # propose JPEG 2000 lossless
        assert sent.returncode == 0, sent.stderr  # the header is valid: every instance is acknowledged
        study_uid = str(pydicom.dcmread(corrupt[0], stop_before_pixels=True).StudyInstanceUID)
        (job,) = engine.wait_for_jobs(study_uid, 1)
        assert job.state == "failed" and job.reason.startswith("decode: instance")  # not retried, not silent
        assert "pixel data cannot be decoded" in job.reason
        assert job.attempts == 1
        ledger = engine.ledger()
        try:
            assert ledger.status_counts()["instances"] == len(corrupt)
        finally:
            ledger.close()


def test_eight_concurrent_associations_lose_nothing(tmp_path: Path, require_dcmtk: None) -> None:
    studies = [write_ct_series(generate_ct_phantom(70 + i, slices=16, size=96), tmp_path / f"s{i}")
               for i in range(16)]
    with EngineProcess(tmp_path / "data", workers=2, extra={"routing": {"models": ["nodule-seg"]}}) as engine:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda files: storescu(files, engine.port), studies))
        assert all(r.returncode == 0 for r in results), [r.stderr[-300:] for r in results if r.returncode]
        for files in studies:
            study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
            (job,) = engine.wait_for_jobs(study_uid, 1, timeout=300)
            assert job.state == "done", job.reason
            assert json.loads((Path(job.result_dir) / "result.json").read_text())["model"] == "nodule-seg"
        ledger = engine.ledger()
        try:
            counts = ledger.status_counts()
            names = {row.spool_name for files in studies
                     for row in ledger.series_instances(ledger.study_series(
                         str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))[0].series_uid)}
        finally:
            ledger.close()
        assert counts["instances"] == sum(len(files) for files in studies) == len(names)
        assert counts["series complete"] == len(studies) and counts["done"] == len(studies)
        spool = {p.name for p in (tmp_path / "data" / "spool").rglob("*") if p.is_file()}
        assert names <= spool
