"""A 3D TorchScript network registered by a ``[[models]]`` table alone (a file, or a MONAI Bundle) segments a
CT sent by DCMTK.

The network (made here) gives the logit 40 x (x - 0.5) per voxel of its
windowed input; with a window symmetric about 0 HU its mask is "HU above 0", so the
truth comes from the phantom's own voxels. The series is reoriented to RAS,
resampled to 2 mm, cut into overlapping windows blended with a Gaussian and
mapped back: the SEG's frames must land on the source slices they belong to.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from engine.synthetic.ct_phantom import generate_ct_phantom, write_ct_series
from engine.testing import EngineProcess, storescu
from tests.unit.test_bundle_models import make_bundle

DCMTK_STORESCU = "/usr/bin/storescu"


class Threshold3D(torch.nn.Module):
    """(N, 1, D, H, W) -> (N, 1, D, H, W) logits 40 x (input - 0.5) through a 3x3x3 convolution's centre tap."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1, 1] = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 40.0 * (self.conv(x) - 0.5)


def _file_entry(folder: Path) -> dict:
    network = folder / "body3d.ts"
    torch.jit.script(Threshold3D().eval()).save(str(network))
    return {"name": "body-3d", "version": "1.0.0", "file": str(network), "output": "segmentation",
            "labels": ["body"], "selector": {"modality": ["CT"]}, "max_batch": 4,
            "preprocessing": {"window": [-500, 500]},
            "volumetric": {"orientation": "RAS", "spacing": [2.0, 2.0, 2.0], "roi_size": [32, 32, 16],
                           "overlap": 0.25, "blend": "gaussian"}}


def _bundle_entry(folder: Path) -> dict:
    """A MONAI Bundle (made by tests.unit.test_bundle_models: window [-200, 200], 1.5 mm, 16^3 windows)."""
    bundle = make_bundle(folder / "bundle")
    return {"name": "body-3d", "version": "1.0.0", "bundle": str(bundle), "labels": ["spleen"],
            "selector": {"modality": ["CT"]}}


@pytest.mark.parametrize("make_entry", [_file_entry, _bundle_entry], ids=["file", "bundle"])
def test_volumetric_entry_segments_the_series(tmp_path: Path, make_entry) -> None:
    entry = make_entry(tmp_path)
    phantom = generate_ct_phantom(2024, slices=24, size=128, noise_hu=5.0)
    files = write_ct_series(phantom, tmp_path / "ct")
    with EngineProcess(tmp_path / "data", extra={"models": [entry], "routing": {"models": ["body-3d"]}}) as engine:
        sent = storescu(files, engine.port, executable=DCMTK_STORESCU)
        assert sent.returncode == 0, sent.stderr
        study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        (job,) = engine.wait_for_jobs(study_uid, 1, timeout=300)
    assert job.state == "done", job.reason
    (seg_path,) = Path(job.result_dir).glob("seg.dcm")
    check = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, text=True)
    assert "Error" not in check.stderr, check.stderr

    sources = [pydicom.dcmread(path) for path in files]
    sources.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    truth = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) > 0 for ds in sources])
    seg = hd.seg.segread(seg_path)
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    segmented = {sop_uid for _, _, sop_uid in seg.get_source_image_uids()}
    mask = np.zeros_like(truth)
    present = [i for i, uid in enumerate(uids) if uid in segmented]
    pixels = seg.get_pixels_by_source_instance([uids[i] for i in present], segment_numbers=[1],
                                               ignore_spatial_locations=True)
    mask[present] = pixels[..., 0] > 0
    dice = 2.0 * float((mask & truth).sum()) / float(mask.sum() + truth.sum())
    assert dice >= 0.95, dice
    result = json.loads((Path(job.result_dir) / "result.json").read_text())
    assert [finding["label"] for finding in result["findings"]] == entry["labels"]
