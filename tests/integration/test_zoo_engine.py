"""The benchmark zoo through the whole engine: every architecture runs one tiny study end to end.

The zoo loads only when configured (``plugins.modules``) and routes only to the
models ``routing.models`` names; every output says it comes from an untrained
benchmark model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom

from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing import EngineProcess, storescu

ZOO = ["zoo-resnet18", "zoo-resnet50", "zoo-inception-v3", "zoo-vgg16", "zoo-ssd", "zoo-unet3d", "zoo-dcgan"]
TINY = {"zoo.input_size": 75, "zoo.ssd.input_size": 268, "zoo.unet3d.patch": "32x64x64", "zoo.dcgan.input_size": 256,
        "zoo.num_classes": 10}


def test_every_zoo_architecture_runs_a_study(tmp_path: Path, require_storescu: str) -> None:
    files = write_ct_series(generate_ct_phantom(7021, nodules=0, slices=4, size=64), tmp_path / "study")
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    extra = {"plugins": {"modules": ["plugins.zoo"], "options": TINY}, "routing": {"models": ZOO},
             "worker": {"backend": "torch"}}
    with EngineProcess(tmp_path / "data", workers=1, extra=extra) as engine:
        assert storescu(files, engine.port).returncode == 0
        jobs = engine.wait_for_jobs(study_uid, len(ZOO), timeout=300)
    assert sorted(job.model for job in jobs) == sorted(ZOO)
    for job in jobs:
        assert job.state == "done", (job.model, job.reason)
        result = json.loads((Path(job.result_dir) / "result.json").read_text())
        assert result["summary"].startswith("UNTRAINED BENCHMARK MODEL"), job.model
        assert result["extra"]["untrained_benchmark_model"] is True
        dicom = list(Path(job.result_dir).glob("*.dcm"))
        assert dicom, f"{job.model} wrote no DICOM result"
        assert all(str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) == study_uid for p in dicom)
