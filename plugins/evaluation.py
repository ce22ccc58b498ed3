"""What the built-in plugins' evaluation scripts and accuracy tests share: a phantom as a Volume, one model run."""

from __future__ import annotations

import torch
from pydicom.uid import CTImageStorage

from engine.api import ModelResult, ModelSpec, SeriesInfo, Volume
from engine.synthetic.ct_phantom import CTPhantom


def phantom_volume(phantom: CTPhantom, description: str = "") -> Volume:
    """The Volume a worker would decode from the phantom's DICOM files (stored = HU, rescale 1/0)."""
    slices = phantom.hu.shape[0]
    return Volume(
        stored=phantom.hu,
        spacing=phantom.spacing,
        origin=phantom.origin,
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        sources=[],
        frames=[(i, 1) for i in range(slices)],
        series=SeriesInfo(study_uid="1.2.3", series_uid="1.2.3.4", modality="CT", sop_class_uid=CTImageStorage,
                          body_part="CHEST", series_description=description, instance_count=slices,
                          frame_count=slices),
    )


def run_model(spec: ModelSpec, network: torch.nn.Module, volume: Volume) -> ModelResult:
    """Preprocess, run the network in ``spec.max_batch`` chunks, postprocess."""
    batch = spec.handler.preprocess(volume)
    with torch.inference_mode():
        output = torch.cat([network(chunk) for chunk in batch.split(spec.max_batch)])
    return spec.handler.postprocess(output, volume)
