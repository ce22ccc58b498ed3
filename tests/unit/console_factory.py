"""A console over a real ledger, spool, users file and audit log, with one study in several states, for web tests.

The study (patient "Doe^Jane", ID "PAT-4711", accession "ACC-81") has one CT
series with three jobs: ``done`` (result.json and an RGB preview filed, one
failed delivery), ``failed`` (not retryable) and ``dead``. A second study (MR,
accession "ACC-99", no job) stays unrouted. Users: ``olga`` (operator) and ``viktor`` (viewer), each
with an API token.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, SecondaryCaptureImageStorage

from engine.api import ModelRegistry, ModelResult, ModelSpec, SeriesInfo
from engine.broker.broker import WorkerSnapshot
from engine.config import EngineConfig
from engine.ledger.store import InstanceMeta, Ledger
from engine.ledger.study_report import study_report
from engine.receiver.audit import AuditTrail
from engine.receiver.spool import Spool, SpoolEntry
from engine.web.app import create_app
from engine.web.auth.store import AccessStore
from engine.web.console import Console
from engine.web.models_view import ModelCatalogue

PATIENT_NAME, PATIENT_ID, ACCESSION = "Doe^Jane", "PAT-4711", "ACC-81"
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.101.1"
MR_STUDY, MR_SERIES = "1.2.826.0.1.3680043.8.498.202", "1.2.826.0.1.3680043.8.498.202.1"
OPERATOR, VIEWER, PASSWORD = "olga", "viktor", "a long test password"
LOOPBACK, NETWORK = ("127.0.0.1", 50000), ("10.20.30.40", 50000)


def _instance(study: str, series: str, number: int, modality: str, sop_class: str,
              accession: str = ACCESSION) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = f"{series}.{number}"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, f"{series}.{number}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, modality
    ds.PatientName, ds.PatientID, ds.AccessionNumber = PATIENT_NAME, PATIENT_ID, accession
    ds.StudyDate, ds.StudyDescription = "20240131", "Chest CT"
    return ds


def store_instance(ledger: Ledger, spool: Spool, ds: Dataset, calling_ae: str, now: float) -> None:
    """Write ``ds`` into the spool as the receiver would and record it in the ledger."""
    name = uuid.uuid4().hex
    ds.save_as(spool.path(name), enforce_file_format=True)
    meta = InstanceMeta(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID,
                        modality=ds.Modality, instance_number=1, images_in_acquisition=1)
    ledger.add_instance(meta, SpoolEntry(name=name, size=spool.path(name).stat().st_size, sha256=name), calling_ae, now)


def write_preview(folder: Path, rows: int = 40, cols: int = 60) -> None:
    """An RGB Secondary Capture as ``preview.dcm`` (a red square on grey)."""
    pixels = np.full((rows, cols, 3), 90, np.uint8)
    pixels[10:20, 10:30] = (230, 20, 20)
    ds = _instance(STUDY, SERIES + ".9", 1, "OT", SecondaryCaptureImageStorage)
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 3, "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation, ds.PlanarConfiguration = 8, 8, 7, 0, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(folder / "preview.dcm", enforce_file_format=True)


def _declines(series: SeriesInfo) -> bool:
    """MR series of the brain (a selector that takes nothing here)."""
    return series.modality == "MR" and series.body_part == "BRAIN"


class _Handler:
    def preprocess(self, volume: Any) -> Any:
        return volume

    def postprocess(self, output: Any, volume: Any) -> ModelResult:
        return ModelResult(summary="")


def registry() -> ModelRegistry:
    models = ModelRegistry()
    models.add(ModelSpec(name="brain-mr", version="2", description="test model", selector=_declines,
                         load_network=lambda: None, handler=_Handler()))
    return models


@dataclass
class ConsoleSetup:
    """A console app over real stores, the job ids of each state, and clients for each kind of caller."""

    console: Console
    app: Any
    data_dir: Path
    jobs: dict[str, str]
    tokens: dict[str, str]
    woken: list[str]

    def client(self, address: tuple[str, int] = LOOPBACK, https: bool = True) -> TestClient:
        return TestClient(self.app, base_url="https://testserver" if https else "http://testserver", client=address)

    def signed_in(self, user: str = OPERATOR, address: tuple[str, int] = LOOPBACK) -> TestClient:
        """A client with a session of ``user`` (its CSRF token in ``client.csrf``)."""
        client = self.client(address)
        response = sign_in(client, user, PASSWORD)
        assert response.status_code == 303, response.text
        client.csrf = csrf_of(client.get("/").text)  # type: ignore[attr-defined]
        return client

    def audit(self) -> list[dict[str, Any]]:
        path = self.data_dir / "audit.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, "no CSRF token in the page"
    return match.group(1)


def sign_in(client: TestClient, user: str, password: str, next_path: str = "/") -> Any:
    token = csrf_of(client.get("/login").text)
    return client.post("/login", data={"username": user, "password": password, "csrf_token": token,
                                       "next": next_path}, follow_redirects=False)


def _jobs(ledger: Ledger, results: Path, now: float) -> dict[str, str]:
    revision = ledger.complete_series(SERIES, "test", now)
    jobs = {state: ledger.create_job(SERIES, revision, f"model-{state}", "1", now + index)
            for index, state in enumerate(("done", "failed", "dead"))}
    for state, job_id in jobs.items():
        attempt = ledger.claim_job("worker-1", now + 5, models=[f"model-{state}"]).attempts
        if state == "done":
            folder = results / "st" / "model-done" / "se"
            folder.mkdir(parents=True)
            (folder / "result.json").write_text(json.dumps({"summary": "1 nodule", "findings": [
                {"label": "nodule", "volume_ml": 0.42, "centroid_mm": [1.25, 2.5, 3.75]}]}))
            write_preview(folder)
            ledger.complete_job(job_id, attempt, str(folder), now + 6, stages={"decode_s": 0.02, "infer_s": 0.3},
                                deliveries=["pacs"])
            ledger.record_delivery(job_id, "pacs", "failed", now + 7, reason="0xA700: out of resources")
        else:
            ledger.fail_job(job_id, attempt, f"{state} on purpose", retryable=state == "dead", now=now + 6)
            if state == "dead":
                while (job := ledger.job(job_id)).state != "dead":
                    ledger.fail_job(job_id, ledger.claim_job("worker-1", now + 7).attempts, "dead on purpose",
                                    retryable=True, now=now + 7)
    return jobs


def make_console(data_dir: Path, workers: tuple[WorkerSnapshot, ...] = ()) -> ConsoleSetup:
    """The console of a receiver that has the module docstring's studies, jobs and users."""
    config = EngineConfig(storage={"data_dir": data_dir})
    data_dir.mkdir(parents=True, exist_ok=True)
    ledger = Ledger(config.storage.ledger_path)
    spool = Spool(config.storage.spool_dir)
    now = time.time() - 60
    store_instance(ledger, spool, _instance(STUDY, SERIES, 1, "CT", CTImageStorage), "CT_SCANNER", now)
    mr = _instance(MR_STUDY, MR_SERIES, 1, "MR", MRImageStorage, accession="ACC-99")
    store_instance(ledger, spool, mr, "MR_SCANNER", now + 1)
    ledger.complete_series(MR_SERIES, "test", now + 2)
    jobs = _jobs(ledger, config.storage.results_dir, now)
    access = AccessStore(config.storage.users_path)
    tokens = {}
    for name, role in ((OPERATOR, "operator"), (VIEWER, "viewer")):
        access.add_user(name, role, PASSWORD, now)
        tokens[name] = access.issue_token(name, now)
    woken: list[str] = []
    console = Console(ledger, spool, access, AuditTrail(config.storage.audit_path),
                      ModelCatalogue(registry(), (), config.worker, describe_backend=lambda spec: "torch on cpu: test"),
                      lambda uid, wait_s: study_report(ledger, uid), lambda: workers,
                      lambda: woken.append("broker"), lambda: woken.append("delivery"), config.http)
    return ConsoleSetup(console, create_app(CollectorRegistry(), lambda: [], console), data_dir, jobs, tokens, woken)
