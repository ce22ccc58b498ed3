"""STOW-RS into ScanStream (``POST /dicomweb/studies``) through ``scanstream serve``: a study sent over
HTTP is stored, routed and processed like one sent by C-STORE; bad bodies get a clear 4xx and store nothing."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx2
import pytest

from engine.testing import EngineProcess
from engine.testing.harness import make_phantom_study
from engine.testing.peers import DICOMWEB_PLUGIN, OrthancPeer, orthanc_available

MAX_INSTANCE = 400_000
MAX_BODY = 8_000_000


def _multipart(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = secrets.token_hex(12)
    body = b"".join(f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n" for kind, data in parts)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _count(engine: EngineProcess) -> int:
    ledger = engine.ledger()
    try:
        return ledger.received_totals()[0]
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    data = tmp_path_factory.mktemp("stow")
    process = EngineProcess(data / "data", workers=1, extra={"routing": {"models": ["nodule-seg"]},
                                                            "receiver": {"max_instance_bytes": MAX_INSTANCE},
                                                            "http": {"stow_max_body_bytes": MAX_BODY}})
    with process:
        yield process


def _post(engine: EngineProcess, body: bytes, content_type: str, path: str = "/dicomweb/studies",
          token: str | None = None) -> httpx2.Response:
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json",
               "Authorization": f"Bearer {token if token is not None else engine.api_token}"}
    return httpx2.post(engine.http_url + path, content=body, headers=headers, timeout=120)


def test_a_study_sent_by_stow_is_stored_and_processed(engine: EngineProcess, tmp_path: Path) -> None:
    study = make_phantom_study(tmp_path / "study", slices=24)
    body, content_type = _multipart([("application/dicom", path.read_bytes()) for path in study.files])
    answer = _post(engine, body, content_type, f"/dicomweb/studies/{study.study_uid}")
    assert answer.status_code == 200, answer.text
    stored = answer.json()["00081199"]["Value"]
    assert len(stored) == len(study.files) and "00081198" not in answer.json()
    (job,) = engine.wait_for_jobs(study.study_uid, 1)
    assert job.state == "done", job.reason
    assert any(Path(job.result_dir).glob("*.dcm"))


def test_bad_bodies_get_a_clear_4xx_and_store_nothing(engine: EngineProcess, tmp_path: Path) -> None:
    study = make_phantom_study(tmp_path / "bad", slices=4, nodules=0)
    good = study.files[0].read_bytes()
    before = _count(engine)
    refused = _post(engine, b"{}", "application/json")
    assert refused.status_code == 415 and "multipart/related" in refused.json()["error"]
    assert _post(engine, b"no parts here", "multipart/related; type=\"application/dicom\"").status_code == 400
    body, content_type = _multipart([("application/dicom", good)])
    assert _post(engine, body, content_type, token="not-a-token").status_code == 401

    cases = {
        "text/plain": b"hello, not DICOM",  # a part that is not DICOM
        "application/dicom": good[: len(good) // 2],  # a truncated part
    }
    for kind, data in cases.items():
        body, content_type = _multipart([(kind, data)])
        answer = _post(engine, body, content_type)
        assert answer.status_code == 409, (kind, answer.text)
        (failed,) = answer.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"][0] & 0xF000 == 0xC000, failed

    too_big = make_phantom_study(tmp_path / "big", slices=2, size=512, nodules=0).files[0].read_bytes()
    assert len(too_big) > MAX_INSTANCE
    body, content_type = _multipart([("application/dicom", too_big)])
    answer = _post(engine, body, content_type)
    assert answer.status_code == 409 and answer.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]

    other = make_phantom_study(tmp_path / "other", slices=2, nodules=0).files[0].read_bytes()
    body, content_type = _multipart([("application/dicom", other)])
    answer = _post(engine, body, content_type, f"/dicomweb/studies/{study.study_uid}")
    assert answer.status_code == 409 and answer.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]

    body, content_type = _multipart([("application/dicom", good)] * (MAX_BODY // len(good) + 1))
    assert _post(engine, body, content_type).status_code == 413

    assert _count(engine) == before, "nothing was stored"
    assert engine.http_status("/readyz") == 200


@pytest.mark.skipif(not orthanc_available() or not DICOMWEB_PLUGIN.exists(),
                    reason="Orthanc with its DICOMweb plugin is not installed; `make test` installs them")
def test_orthanc_pushes_a_study_by_stow_and_the_results_come_out(engine: EngineProcess, tmp_path: Path) -> None:
    study = make_phantom_study(tmp_path / "orthanc-study", slices=24)
    servers = {"scanstream": {"Url": f"{engine.http_url}/dicomweb/",
                              "HttpHeaders": {"Authorization": f"Bearer {engine.api_token}"}}}
    with OrthancPeer(tmp_path / "orthanc", dicomweb=True, dicomweb_servers=servers) as orthanc:
        orthanc.upload(study.files)
        orthanc.stow_study("scanstream", study.study_uid)
        (job,) = engine.wait_for_jobs(study.study_uid, 1)
    assert job.state == "done", job.reason
    assert any(Path(job.result_dir).glob("*.dcm"))
    ledger = engine.ledger()
    try:
        assert len(ledger.series_instances(study.series_uid)) == len(study.files)
    finally:
        ledger.close()


def test_a_spool_below_its_free_space_mark_answers_503(tmp_path: Path) -> None:
    """As C-STORE associations are refused then, STOW requests get 503 and Retry-After, nothing stored."""
    study = make_phantom_study(tmp_path / "study", slices=2, nodules=0)
    process = EngineProcess(tmp_path / "data", workers=0, extra={"storage": {"min_free_bytes": 2**62}})
    with process:
        body, content_type = _multipart([("application/dicom", study.files[0].read_bytes())])
        answer = _post(process, body, content_type)
        assert answer.status_code == 503, (answer.status_code, answer.text)
        assert answer.headers["Retry-After"] == "60"
        assert _count(process) == 0 and process.http_status("/readyz") == 200
