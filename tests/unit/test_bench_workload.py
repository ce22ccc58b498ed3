"""Bench workload and result checks: new UIDs per replay, folder grouping, split and lost series."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from engine.bench.driver import StudyOutcome, check
from engine.bench.workload import Study, folder_templates, phantom_templates, prepare_studies


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> list[list[Path]]:
    return phantom_templates(tmp_path_factory.mktemp("templates"), variants=1, slices=4, size=32, seed=5)


def test_each_study_sent_gets_new_uids_and_keeps_its_pixels(templates, tmp_path: Path) -> None:
    studies = prepare_studies(templates, 3, tmp_path)
    assert len({s.study_uid for s in studies}) == 3
    series = [uid for s in studies for uid in s.series]
    assert len(set(series)) == 3 and all(s.instances == 4 and s.series == {next(iter(s.series)): 4} for s in studies)
    sops = {str(pydicom.dcmread(p).SOPInstanceUID) for s in studies for p in s.files}
    assert len(sops) == 12
    original = pydicom.dcmread(templates[0][0])
    copy = pydicom.dcmread(studies[1].files[0])
    assert copy.PixelData == original.PixelData and copy.StudyInstanceUID != original.StudyInstanceUID
    assert copy.file_meta.MediaStorageSOPInstanceUID == copy.SOPInstanceUID
    assert studies[0].nbytes == sum(p.stat().st_size for p in studies[0].files)


def test_a_folder_is_grouped_by_study_and_non_dicom_is_ignored(templates, tmp_path: Path) -> None:
    studies = prepare_studies(templates, 2, tmp_path / "two")
    (tmp_path / "two" / "notes.txt").write_text("not DICOM")
    grouped = folder_templates(tmp_path / "two")
    assert sorted(len(g) for g in grouped) == [4, 4]
    with pytest.raises(ValueError, match="no DICOM studies"):
        folder_templates(_empty(tmp_path))
    assert {str(pydicom.dcmread(g[0]).StudyInstanceUID) for g in grouped} == {s.study_uid for s in studies}


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("x")
    return folder


def outcome(report: dict) -> StudyOutcome:
    study = Study("1.2", (Path("a"), Path("b"), Path("c")), {"1.2.1": 2, "1.2.2": 1})
    result = StudyOutcome(study, first_sent=10.0, last_sent=11.0, sent_ok=True)
    result.report = report
    check(result)
    return result


def series(uid: str, instances: int, revision: int = 1) -> dict:
    return {"series_uid": uid, "instances": instances, "revision": revision}


def job(uid: str, revision: int, state: str, finished: float | None) -> dict:
    return {"series_uid": uid, "series_revision": revision, "state": state, "finished": finished, "model": "m"}


def test_clean_study_has_its_result_time_from_the_latest_jobs() -> None:
    checked = outcome({"series": [series("1.2.1", 2), series("1.2.2", 1)],
                       "jobs": [job("1.2.1", 1, "done", 12.0), job("1.2.2", 1, "done", 12.5)]})
    assert (checked.split_series, checked.lost_series, checked.failed_jobs, checked.result_written) == (0, 0, 0, 12.5)


def test_split_lost_and_failed_are_counted() -> None:
    checked = outcome({"series": [series("1.2.1", 2, revision=2)],  # completed early, then reopened; 1.2.2 missing
                       "jobs": [job("1.2.1", 1, "done", 11.5), job("1.2.1", 2, "failed", 13.0)]})
    assert (checked.split_series, checked.lost_series, checked.failed_jobs) == (1, 1, 1)
    assert checked.result_written == 13.0  # only the latest revision's jobs count
    short = outcome({"series": [series("1.2.1", 1), series("1.2.2", 1)], "jobs": []})
    assert short.lost_series == 1 and short.result_written is None
